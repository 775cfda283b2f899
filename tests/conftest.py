"""Shared test set-up: markers, the repository root, the browser. No data location: the tests run as a newcomer
does, on the data vtd carries (VTD_DATA is whatever the caller set; the smoke runs never read it)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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


# --- Browser tests (pytest-playwright driving the system Chromium; `playwright install` is never needed) ---
CHROMIUM_CANDIDATES = ('/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome')


@pytest.fixture(scope='session')
def chromium_path() -> str:
    "The system Chromium (Debian's `chromium`; `$VTD_CHROMIUM` overrides), or skip saying how to get one."
    import shutil
    for c in (os.environ.get('VTD_CHROMIUM'), *CHROMIUM_CANDIDATES, shutil.which('chromium')):
        if c and Path(c).exists(): return c
    pytest.skip('Chromium is not installed: the browser tests need it (Debian: apt-get install chromium; .ci/run installs it)')


@pytest.fixture(scope='session')
def browser_type_launch_args(browser_type_launch_args, chromium_path):
    "Point pytest-playwright at the system Chromium, headless, with nothing phoning home."
    return {**browser_type_launch_args, 'executable_path': chromium_path,
            'args': ['--no-sandbox', '--headless', '--disable-gpu', '--disable-dev-shm-usage',
                     '--disable-background-networking', '--disable-component-update', '--disable-sync',
                     '--no-first-run', '--disable-default-apps', '--mute-audio']}


@pytest.fixture(scope='session')
def browser_context_args(browser_context_args):
    return {**browser_context_args, 'viewport': {'width': 1280, 'height': 900}}


def digits_image_data(test_fraction: float = 0.2, seed: int = 0):
    "scikit-learn's 8x8 digits as `ImageData`: a small real image set that keeps the metrics and prior unit tests fast."
    import torch
    from sklearn.datasets import load_digits
    from vtd.data import ImageData
    d = load_digits()
    x, y = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * test_fraction)); te, tr = perm[:n_test], perm[n_test:]
    return ImageData(x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)], 'scikit-learn load_digits', 'digits')
