"""Every notebook runs, top to bottom, in smoke mode: its assertions are the lesson's checks.

A new `nbs/NN_*.ipynb` is picked up without editing this file."""
import json, os, sys, time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / 'tools'))
import lesson_audit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# ar_baseline builds vtd.autoregressive: a library notebook, not a lesson (no number, no record), tested as the lessons are
LIBRARY_NOTEBOOKS = [REPO / 'nbs' / 'ar_baseline.ipynb']
NOTEBOOKS = sorted(REPO.glob('nbs/[0-9]*.ipynb')) + LIBRARY_NOTEBOOKS + [REPO / 'nbs' / 'index.ipynb']
LESSONS = lesson_audit.lessons()
# Generous per-cell limit: a hung cell fails the test instead of the whole CI run.
CELL_TIMEOUT = int(os.environ.get('VTD_CELL_TIMEOUT', '300'))


def has_parameters_cell(nb_path):
    nb = json.loads(nb_path.read_text())
    return any('parameters' in c.get('metadata', {}).get('tags', []) for c in nb['cells'])


@pytest.mark.notebook
@pytest.mark.parametrize('nb_path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(nb_path, tmp_path):
    import papermill as pm
    params = {}
    if nb_path.name != 'index.ipynb':
        assert has_parameters_cell(nb_path), f"{nb_path.name} has no papermill 'parameters' cell"
        params = {'smoke': True}
    os.environ['VTD_RESULTS_DIR'] = str(tmp_path / 'results')
    t0 = time.perf_counter()
    if nb_path in LESSONS:
        # a lesson runs once: with figures saved as images, into the folder test_notebooks_shape.py audits
        lesson_audit.execute(nb_path, timeout=CELL_TIMEOUT)
    else:
        pm.execute_notebook(str(nb_path), str(tmp_path / nb_path.name), parameters=params, kernel_name='python3',
                            cwd=str(nb_path.parent), progress_bar=False, execution_timeout=CELL_TIMEOUT)
    print(f"{nb_path.name}: {time.perf_counter() - t0:.1f}s in smoke mode")
    if nb_path.name != 'index.ipynb' and nb_path not in LIBRARY_NOTEBOOKS:
        res = tmp_path / 'results' / f'{nb_path.stem}.json'
        assert res.exists(), f"{nb_path.name} recorded no results (call vtd.core.record_results)"
        from vtd.tour import HEADLINES
        recorded = json.loads(res.read_text())
        gone = [key for _, key, _ in HEADLINES.get(nb_path.stem, []) if key not in recorded]
        assert not gone, f"{nb_path.name} no longer records {gone}, which vtd.tour.HEADLINES shows in the tour's table: update one of them"


def test_every_numbered_notebook_exports_one_module():
    for nb_path in sorted(REPO.glob('nbs/[0-9]*.ipynb')):
        nb = json.loads(nb_path.read_text())
        exps = [l for c in nb['cells'] if c['cell_type'] == 'code'
                for l in ''.join(c['source']).splitlines() if l.strip().startswith('#| default_exp')]
        assert len(exps) == 1, f"{nb_path.name}: expected one '#| default_exp', found {exps}"
        mod = exps[0].split()[-1]
        assert (REPO / 'vtd' / f'{mod}.py').exists(), f"{nb_path.name} exports vtd/{mod}.py, which is missing"


def test_every_lesson_takes_smoke_and_device():
    "The tour passes `smoke` and `device` to every lesson (issue 20): each parameters cell must define both."
    import ast
    for nb_path in sorted(REPO.glob('nbs/[0-9]*.ipynb')):
        cells = [c for c in json.loads(nb_path.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
        assert len(cells) == 1, f"{nb_path.name}: {len(cells)} parameters cells"
        names = {t.id for node in ast.parse(''.join(cells[0]['source'])).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
        assert {'smoke', 'device'} <= names, f"{nb_path.name}: its parameters cell defines {sorted(names)}, not smoke and device"
