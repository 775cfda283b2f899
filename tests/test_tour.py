"""The tour (`vtd-tour`), as README gives it: from the repository root, default arguments.

`vtd-tour` is run as README gives it, in a copy of the repository (so this test never touches the working
tree's `tour_output/`), from its root, with its default arguments and no data but what vtd carries: every
lesson must run, the summary must show every headline figure, and nothing may be left under `nbs/`. The
rest checks the parts on a two-cell stand-in lesson: `--device` reaches the notebook's parameters, a full
run updates only its own lessons' entries in the record, and the table holds headline figures only.
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
@pytest.mark.slow
def test_main_job_from_the_root_on_a_newcomers_machine(tmp_path):
    """README's main job, exactly: `vtd-tour` from the repository root with its default arguments, in a copy of the
    repository, on a machine without our data (VTD_DATA unset, an empty cache, offline). Every lesson must run
    cleanly, the summary must show every headline figure, every lesson that records its data must have used the
    data vtd carries, and nothing may be left under `nbs/`."""
    readme = (REPO / 'README.md').read_text()
    assert 'vtd-tour --only 03' in readme and '&& vtd-tour\n' in readme
    clone = tmp_path / 'vtd'
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns('.git', 'tour_output', '_docs', '_proc', 'test-results', '__pycache__', '*.egg-info'))
    before = files_under(clone / 'nbs')
    env = {k: v for k, v in os.environ.items() if k not in ('VTD_DATA', 'VTD_RESULTS_DIR')}
    env.update(PYTHONPATH=str(clone), VTD_CACHE=str(tmp_path / 'empty-cache'), HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    r = subprocess.run(tour_command(), cwd=clone, env=env, capture_output=True, text=True, timeout=3 * 3600)
    runs = json.loads((clone / 'tour_output' / 'summary.json').read_text())
    failed = [(x['notebook'], x['error']) for x in runs if not x['ok']]
    assert r.returncode == 0 and not failed, f"{failed}\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
    assert [x['notebook'] for x in runs] == [p.name for p in sorted((REPO / 'nbs').glob('[0-9]*.ipynb'))]
    summary = (clone / 'tour_output' / 'summary.txt').read_text()
    assert summary in r.stdout and 'not recorded' not in summary, summary
    for x in runs:
        lesson = Path(x['notebook']).stem
        missing = [key for _, key, _ in HEADLINES.get(lesson, []) if key not in x['results']]
        assert not missing, f"{lesson} did not record {missing}"
        for label, _, _ in HEADLINES.get(lesson, []): assert label in summary, (lesson, label)
        assert 'data' not in x['results'] or 'embedded in vtd' in x['results']['data'], (lesson, x['results']['data'])
    assert sum('data' in x['results'] for x in runs) >= 8   # 01, 04, 05, 05b, 06, 08, 09, 09a say what they used
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


def test_section_times_adds_up_each_section_from_papermills_durations(tmp_path):
    "tests/benchmarks/section_times.py on an executed notebook: seconds per `##` section, cells before the first under the title."
    sys.path.insert(0, str(REPO / 'tests' / 'benchmarks'))
    from section_times import main, section_times
    md = lambda s: {'cell_type': 'markdown', 'metadata': {}, 'source': s}
    code = lambda s, d: {'cell_type': 'code', 'metadata': {'papermill': {'duration': d}}, 'outputs': [], 'source': s, 'execution_count': 1}
    nb = {'cells': [md('# The lesson\n\n> what'), code('import x', 1.0), md('## Setup\n\ntext'), code('a = 1', 2.0),
                    md('### a subsection'), code('b = 2', 3.0), md('## Training'), code('fit()\n', 14.0)]}
    rows, cells = section_times(nb)
    assert [(r['section'], r['cells'], r['seconds']) for r in rows] == [('The lesson', 1, 1.0), ('Setup', 2, 5.0), ('Training', 1, 14.0)]
    assert abs(rows[-1]['share'] - 0.7) < 1e-9 and cells[-1] == {'index': 7, 'section': 'Training', 'seconds': 14.0, 'first_line': 'fit()'}
    assert [r['section'] for r in section_times(nb, level=3)[0]] == ['The lesson', 'Setup', 'a subsection', 'Training']
    (tmp_path / 'x.ipynb').write_text(json.dumps(nb))
    assert main(['--executed', str(tmp_path / 'x.ipynb')]) == 0
    nb['cells'] = [md('## only prose')]; (tmp_path / 'y.ipynb').write_text(json.dumps(nb))
    assert main(['--executed', str(tmp_path / 'y.ipynb')]) == 1   # nothing timed: said, not an empty table


def test_a_re_record_rewrites_the_time_lines_and_a_gpu_run_stands_beside_the_cpu(tmp_path):
    "update_record keeps a GPU run apart; write_results then rewrites README's table and each lesson's **Time:** line from the record."
    from vtd.tour import COURSE, RECORD, TIME_PREFIX, course_markdown, time_line, write_results
    repo = tmp_path / 'repo'; shutil.copytree(REPO / 'nbs', repo / 'nbs', symlinks=True)
    (repo / 'results').mkdir(); shutil.copy(REPO / RECORD, repo / RECORD); shutil.copy(REPO / 'settings.ini', repo / 'settings.ini')
    run = {'notebook': '03_vq.ipynb', 'ok': True, 'smoke': False, 'seconds': 600.0, 'results': {}}
    cpu = {'cores': 2, 'device': 'cpu', 'device_name': 'AMD EPYC'}; gpu = {'cores': 16, 'device': 'cuda', 'device_name': 'NVIDIA H100'}
    update_record(repo / RECORD, [run], cpu, 'c0ffee1234'); update_record(repo / RECORD, [run | {'seconds': 12.0}], gpu, 'c0ffee1234')
    data = json.loads((repo / RECORD).read_text())
    assert data['lessons']['03_vq']['seconds'] == 600.0 and data['gpu']['03_vq']['seconds'] == 12.0
    write_results(repo)
    nb = json.loads((repo / 'nbs' / '03_vq.ipynb').read_text())
    line = next(l for c in nb['cells'] if c['cell_type'] == 'markdown' for l in c['source'] if l.startswith(TIME_PREFIX))
    assert line.rstrip('\n') == time_line('03_vq', data) and 'about 10 min' in line and '12 s on one NVIDIA H100' in line, line
    assert 'on 2 CPU cores (AMD EPYC)' in line, f"a CPU time names its processor (the same lesson takes 2x longer on another): {line}"
    readme = (repo / 'README.md').read_text()
    assert course_markdown(data, repo / 'nbs') in readme and 'on one NVIDIA H100 |' in readme
    row = next(l for l in readme.splitlines() if '[`03_vq`]' in l)
    assert '| 10 min | 12 s |' in row and 'https://vtd-project.github.io/vtd/vq.html' in row
    assert 'full setting, ' in readme and '2 CPU cores (AMD EPYC)' in readme.split('full setting, ', 1)[1].split('|', 1)[0]
