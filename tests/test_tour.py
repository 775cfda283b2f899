"""The tour (`vtd-tour`), as README gives it: from the repository root, default arguments.

`vtd-tour --only 03` is run in a copy of the repository (so this test never touches the working tree's
`tour_output/`), from its root, with the default `--out`: the summary must show lesson 03's headline
figures and nothing may be left under `nbs/`. The rest checks the parts on a two-cell stand-in lesson:
`--device` reaches the notebook's parameters, a full run updates only its own lessons' entries in the
record, and the table holds headline figures only.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from vtd.tour import HEADLINES, format_results_table, headline, results_markdown, tour_main, update_record

REPO = Path(__file__).resolve().parent.parent
KERNEL = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}, 'language_info': {'name': 'python'}}


def tour_command() -> list[str]:
    "The `vtd-tour` console script when it runs this checkout's vtd.tour, else the same call through python."
    from importlib.metadata import entry_points
    eps = [e for e in entry_points(group='console_scripts') if e.name == 'vtd-tour']
    if shutil.which('vtd-tour') and eps and eps[0].value == 'vtd.tour:tour_main': return ['vtd-tour']
    return [sys.executable, '-c', 'import sys; from vtd.tour import tour_main; sys.exit(tour_main())']


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob('*') if '__pycache__' not in p.parts and '.ipynb_checkpoints' not in p.parts}


@pytest.mark.notebook
def test_readme_tour_command_from_the_root_shows_the_lessons_figures(tmp_path):
    readme = (REPO / 'README.md').read_text()
    assert 'vtd-tour --only 03' in readme and '&& vtd-tour\n' in readme
    clone = tmp_path / 'vtd'
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns('.git', 'tour_output', '_docs', '_proc', 'test-results', '__pycache__', '*.egg-info'))
    before = files_under(clone / 'nbs')
    env = {**os.environ, 'PYTHONPATH': str(clone)}
    r = subprocess.run(tour_command() + ['--only', '03'], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (clone / 'tour_output' / 'summary.txt').read_text()
    assert summary in r.stdout
    for label, key, _ in HEADLINES['03_vq']:
        assert label in summary and 'not recorded' not in summary, summary
    runs = json.loads((clone / 'tour_output' / 'summary.json').read_text())
    assert [x['notebook'] for x in runs] == ['03_vq.ipynb'] and len(runs[0]['results']) > len(HEADLINES['03_vq'])
    assert files_under(clone / 'nbs') == before, f"left under nbs/: {sorted(files_under(clone / 'nbs') - before)}"


def tiny_lesson(folder: Path, name='01_tiny.ipynb', fail=False) -> Path:
    cells = [nbformat.v4.new_code_cell("smoke = False\ndevice = 'auto'", metadata={'tags': ['parameters']}),
             nbformat.v4.new_code_cell('from vtd.core import record_results'),
             nbformat.v4.new_code_cell(("raise ValueError('planted')\n" if fail else '') +
                                       f"record_results('{Path(name).stem}', {{'device asked': device, 'smoke': smoke, 'answer': 42.0}})")]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=KERNEL), folder / name)
    return folder / name


@pytest.mark.notebook
def test_device_reaches_every_lesson_and_full_runs_update_only_their_entries(tmp_path, capsys):
    nbs = tmp_path / 'nbs'; tiny_lesson(nbs, '01_tiny.ipynb'); tiny_lesson(nbs, '02_bad.ipynb', fail=True)
    record = tmp_path / 'full.json'
    record.write_text(json.dumps({'lessons': {'00_old': {'commit': 'c0', 'date': 'd0', 'machine': {'cores': 1, 'device': 'cpu'},
                                                          'seconds': 1.0, 'headline': [['x', '1']], 'results': {}}}}))
    rc = tour_main(['--nbs', str(nbs), '--out', str(tmp_path / 'out'), '--device', 'cpu', '--full', '--record', str(record)])
    assert rc == 1  # 02_bad failed
    runs = {r['notebook']: r for r in json.loads((tmp_path / 'out' / 'summary.json').read_text())}
    assert runs['01_tiny.ipynb']['results'] == {'device asked': 'cpu', 'smoke': False, 'answer': 42.0}
    assert "ValueError: planted" in runs['02_bad.ipynb']['error']
    data = json.loads(record.read_text())['lessons']
    assert sorted(data) == ['00_old', '01_tiny'] and data['00_old']['commit'] == 'c0'  # the failed lesson is not recorded
    e = data['01_tiny']
    assert e['machine']['device'] == 'cpu' and e['machine']['cores'] >= 1 and e['seconds'] > 0 and e['date'] and e['commit']
    assert 'updated 01_tiny' in capsys.readouterr().out
    assert '| `01_tiny` | device asked: **cpu**' in results_markdown(record)


def test_smoke_runs_never_enter_the_record(tmp_path):
    rec = tmp_path / 'r.json'
    assert update_record(rec, [{'notebook': '03_vq.ipynb', 'ok': True, 'smoke': True, 'seconds': 1, 'results': {}}], {}, 'c') == []
    assert json.loads(rec.read_text()) == {'lessons': {}}


def test_table_shows_headline_figures_only():
    results = {f'extra_{i}': float(i) for i in range(40)} | {'ar_bits': 7.123456, 'mdm_bits': 7.5, 'unigram_bits': 9.0, 'mdm_gap_share': 0.25}
    table = format_results_table([{'notebook': '08_diffusion.ipynb', 'ok': True, 'error': None, 'seconds': 3.0, 'results': results}])
    assert 'held-out bits/word, autoregressive' in table and '7.123' in table and '25%' in table and 'extra_' not in table
    assert len(table.splitlines()) == 2 + len(HEADLINES['08_diffusion']) + 2
    assert headline('08_diffusion', {})[0][1].startswith('not recorded')


@pytest.mark.notebook
def test_benchmark_of_lesson_times_writes_its_table(tmp_path):
    "tests/benchmarks/tour_times.py, run once on a stand-in lesson (its real use: every lesson, full settings, a device)."
    nbs = tmp_path / 'nbs'; tiny_lesson(nbs, '01_tiny.ipynb')
    r = subprocess.run([sys.executable, str(REPO / 'tests' / 'benchmarks' / 'tour_times.py'), '--nbs', str(nbs), '--device', 'cpu',
                        '--out', str(tmp_path / 'out')], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / 'out' / 'tour_times_cpu.json').read_text())
    assert data['mode'] == 'full' and data['runs'][0]['results']['smoke'] is False and data['runs'][0]['results']['device asked'] == 'cpu'
    table = (tmp_path / 'out' / 'tour_times.md').read_text()
    assert '| `01_tiny` |' in table and 'cpu (' in table
