"""Shared test set-up: data locations, markers, and the repository root."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'

# Tests and CI read TinyShakespeare from ../shared/data unless the caller chose another folder.
if 'VTD_DATA' not in os.environ and (SHARED_DATA / 'tinyshakespeare.txt').exists():
    os.environ['VTD_DATA'] = str(SHARED_DATA)
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


def pytest_configure(config):
    config.addinivalue_line('markers', 'notebook: executes a notebook with papermill (smoke mode)')
    config.addinivalue_line('markers', 'browser: drives a real browser (Chromium) against JupyterLab or the docs site')
    config.addinivalue_line('markers', 'slow: takes more than a few seconds')


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO
