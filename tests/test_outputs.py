"""The lessons' committed outputs (issue 32): small, static, and proven to come from the code beside them.

A lesson's outputs are written by `vtd-tour --full --write-outputs`, which stores in the notebook's metadata
(`vtd.tour.OUTPUTS_KEY`) a fingerprint of its code cells and of the library code it reaches, with the commit,
mode, device and seconds of the run. Here:
- every lesson that carries outputs must match its fingerprint (the test names the stale lessons and why);
- whether every lesson must carry outputs is settings.ini's `lesson_outputs` (`required` or `optional`, or the
  environment's VTD_LESSON_OUTPUTS): while it is `optional` the check is reported as SKIPPED with the list of
  lessons without outputs (never as a pass); README's lesson table shows which lessons carry them;
- the check bites: a planted code edit (on a temporary copy) and a planted library edit are named, a markdown
  or comment edit is not;
- nbs/ stays under 25 MB, figures are PNG and small, no widget state or SVG is stored;
- the whole mechanism, end to end, on a stand-in lesson with a figure, a printed table and a live widget.
"""
import base64, configparser, copy, json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

from vtd.tour import (OUTPUTS_KEY, OUTPUTS_LIMIT_MB, WIDGET_STATE, WIDGET_VIEW, clean_notebook, code_fingerprint, find_notebooks,
                      library_fingerprint, library_index, outputs_report, outputs_staleness, stored_outputs, tour_main)

REPO = Path(__file__).resolve().parent.parent
NBS = REPO / 'nbs'
PNG_LIMIT_KB = 400  # one figure; at OUTPUT_DPI the lessons' figures are a few tens of KB


def outputs_required() -> bool:
    "settings.ini's `lesson_outputs` (overridden by $VTD_LESSON_OUTPUTS): must every lesson carry outputs?"
    cfg = configparser.ConfigParser(); cfg.read(REPO / 'settings.ini')
    value = os.environ.get('VTD_LESSON_OUTPUTS') or cfg['DEFAULT'].get('lesson_outputs', 'optional')
    assert value in ('required', 'optional'), f"lesson_outputs must be 'required' or 'optional', got {value!r}"
    return value == 'required'


def stale_message(report: dict) -> str:
    stale = {k: v['stale'] for k, v in report.items() if v['stale']}
    return ('stale committed outputs (re-run them: vtd-tour --full --write-outputs --stale):\n'
            + '\n'.join(f"  {k}: {'; '.join(why)}" for k, why in stale.items())) if stale else ''


def test_committed_outputs_are_those_of_the_code_beside_them():
    report = outputs_report(NBS, REPO / 'vtd')
    checked = [k for k, v in report.items() if v['outputs'] is not None]
    msg = stale_message(report)
    assert not msg, msg
    print(f"{len(checked)} lessons carry outputs, all current: {', '.join(checked) or 'none'}")


def test_every_lesson_carries_outputs():
    missing = [k for k, v in outputs_report(NBS, REPO / 'vtd').items() if v['outputs'] is None]
    if not outputs_required():
        pytest.skip(f"settings.ini lesson_outputs = optional; lessons without committed outputs: {', '.join(missing) or 'none'}")
    assert not missing, f"lessons without committed outputs (write them: vtd-tour --full --write-outputs --only {','.join(missing)}): {missing}"


# --- the check bites ---------------------------------------------------------------------------------------------

def _lesson_with_outputs(lib_dir: Path) -> dict:
    "A stand-in lesson that uses vtd.core.show_images, carrying outputs and the fingerprint of a run."
    cell = lambda i, kind, src, **kw: {'cell_type': kind, 'id': i, 'metadata': kw.pop('metadata', {}), 'source': src, **kw}
    nb = {'cells': [cell('t', 'markdown', '# A lesson'),
                    cell('p', 'code', 'smoke = False\ndevice = "auto"', metadata={'tags': ['parameters']}, outputs=[], execution_count=None),
                    cell('c', 'code', 'from vtd.core import show_images\nfig = show_images([[[0.0]]])  # one pixel',
                         outputs=[{'output_type': 'display_data', 'data': {'text/plain': '<Figure>'}, 'metadata': {}}], execution_count=None)],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}
    nb['metadata'][OUTPUTS_KEY] = {'code': code_fingerprint(nb), 'library': library_fingerprint(nb, lib_dir), 'commit': 'abc', 'mode': 'full'}
    return nb


def test_a_planted_code_edit_is_named_and_prose_or_comment_edits_are_not(tmp_path):
    nb = _lesson_with_outputs(REPO / 'vtd')
    assert 'core.show_images' in nb['metadata'][OUTPUTS_KEY]['library'], "the library fingerprint must follow the lesson's imports"
    assert outputs_staleness(nb, REPO / 'vtd') == []
    prose = copy.deepcopy(nb); prose['cells'][0]['source'] = '# A lesson, retitled'
    prose['cells'][2]['source'] = 'from vtd.core import show_images\n\nfig = show_images([[[0.0]]])   # a single pixel'
    prose['cells'][1]['source'] = 'smoke = True\ndevice = "cpu"'  # the defaults every run replaces
    assert outputs_staleness(prose, REPO / 'vtd') == []
    code = copy.deepcopy(nb); code['cells'][2]['source'] = 'from vtd.core import show_images\nfig = show_images([[[1.0]]])'
    assert outputs_staleness(code, REPO / 'vtd') == ['its code cells changed since the run']
    # the same on nbs/ as the test above reads it: a temporary copy of the lessons with one planted edit
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    (nbs / '01_lesson.ipynb').write_text(json.dumps(nb)); (nbs / '02_other.ipynb').write_text(json.dumps(code))
    report = outputs_report(nbs, REPO / 'vtd')
    assert report['01_lesson']['stale'] == [] and report['02_other']['stale']
    assert '02_other: its code cells changed' in stale_message(report) and '01_lesson' not in stale_message(report)
    nocode = copy.deepcopy(nb); del nocode['metadata'][OUTPUTS_KEY]
    assert outputs_staleness(nocode, REPO / 'vtd') == ['it carries outputs but no fingerprint of the run that made them']


def test_a_planted_library_edit_is_named_only_where_the_lesson_reaches_it(tmp_path):
    lib = tmp_path / 'vtd'; shutil.copytree(REPO / 'vtd', lib, ignore=shutil.ignore_patterns('__pycache__'))
    nb = _lesson_with_outputs(lib)
    core = lib / 'core.py'; text = core.read_text()
    # a comment or a blank line in the library changes nothing
    core.write_text(text.replace('def show_images(', '# a comment\n\ndef show_images(', 1))
    assert outputs_staleness(nb, lib) == []
    # an edit to a function the lesson does not reach changes nothing either
    core.write_text(text.replace('def record_results(', 'def record_results_unused(): pass\n\ndef record_results(', 1))
    assert outputs_staleness(nb, lib) == []
    # an edit to what show_images draws with is named
    assert 'cmap: str = \'gray\'' in text
    core.write_text(text.replace("cmap: str = 'gray'", "cmap: str = 'viridis'", 1))
    why = outputs_staleness(nb, lib)
    assert len(why) == 1 and 'core.show_images' in why[0], why


def test_library_index_follows_imports_between_modules():
    index = library_index(REPO / 'vtd')
    lesson = json.loads((NBS / '02_fractal.ipynb').read_text())
    reached = library_fingerprint(lesson, REPO / 'vtd', index)
    assert any(k.startswith('vq.') for k in reached), "02 uses 03's quantizer: vtd.vq must be reached"
    assert not any(k.startswith(('tour.', 'cli.')) for k in reached)


# --- what is stored ----------------------------------------------------------------------------------------------

def test_nbs_stays_under_its_size_limit():
    total = sum(p.stat().st_size for p in NBS.rglob('*') if p.is_file())
    assert total < OUTPUTS_LIMIT_MB * 2**20, f"nbs/ holds {total / 2**20:.1f} MB, over {OUTPUTS_LIMIT_MB} MB: lower OUTPUT_DPI or shrink figures"


def test_stored_outputs_are_static_small_png():
    for p in find_notebooks(NBS) + [NBS / 'index.ipynb']:
        nb = json.loads(p.read_text())
        assert 'widgets' not in nb['metadata'], f"{p.name}: widget state stored (GitHub cannot render it; keep the static figure)"
        for i, c in enumerate(nb['cells']):
            for o in c.get('outputs', []):
                data = o.get('data', {})
                assert WIDGET_VIEW not in data, f"{p.name} cell {i}: a widget view instead of its static figure"
                assert 'image/svg+xml' not in data, f"{p.name} cell {i}: an SVG figure (write PNG)"
                if 'image/png' in data:
                    kb = len(base64.b64decode(''.join(data['image/png']))) / 1024
                    assert kb < PNG_LIMIT_KB, f"{p.name} cell {i}: a {kb:.0f} KB figure (over {PNG_LIMIT_KB} KB)"


# --- the mechanism, end to end -----------------------------------------------------------------------------------

def stand_in_lesson(folder: Path, name: str = '01_shown.ipynb') -> Path:
    "A lesson with a parameters cell, a printed table, a figure and a live widget (vtd.core.live_widget)."
    import nbformat
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    p = nbformat.v4.new_code_cell("smoke = True\ndevice = 'auto'"); p.metadata['tags'] = ['parameters']
    nb.cells = [nbformat.v4.new_markdown_cell('# Shown\n\n> a stand-in lesson'), p,
                nbformat.v4.new_code_cell("import matplotlib.pyplot as plt, ipywidgets as W\nfrom vtd.core import live_widget, record_results\n"
                                          "print('| k | v |'); print('| a | 1 |')"),
                nbformat.v4.new_code_cell("fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1], [0, 1]); plt.show()"),
                nbformat.v4.new_code_cell("def draw(n):\n    fig, ax = plt.subplots(figsize=(3, 2)); ax.plot(range(n)); return fig\n"
                                          "live_widget(draw, {'n': W.IntSlider(value=4, min=2, max=9)})"),
                nbformat.v4.new_code_cell("record_results('01_shown', {'smoke': smoke})")]
    folder.mkdir(parents=True, exist_ok=True); path = folder / name
    nbformat.write(nb, str(path))
    path.write_text(clean_notebook(json.loads(path.read_text()), REPO))
    return path


@pytest.mark.notebook
def test_write_outputs_end_to_end(tmp_path, capsys):
    nbs = tmp_path / 'nbs'; lesson = stand_in_lesson(nbs)
    before = json.loads(lesson.read_text())
    assert stored_outputs(before) is None
    assert tour_main(['--nbs', str(nbs), '--out', str(tmp_path / 'out'), '--write-outputs']) == 2, "smoke outputs must be refused"
    rc = tour_main(['--nbs', str(nbs), '--out', str(tmp_path / 'out'), '--full', '--write-outputs', '--device', 'cpu'])
    assert rc == 0, capsys.readouterr()
    text = lesson.read_text(); nb = json.loads(text)
    meta = nb['metadata'][OUTPUTS_KEY]
    assert meta['mode'] == 'full' and meta['code'] == code_fingerprint(before) and meta['device'] == 'cpu' and meta['seconds'] > 0
    assert 'core.live_widget' in meta['library'] and meta['commit']
    assert [c['source'] for c in nb['cells']] == [c['source'] for c in before['cells']], "the lesson's cells must be unchanged"
    assert text == clean_notebook(nb, REPO), "the written notebook must be what nbdev_clean leaves"
    assert set(nb['metadata']) <= {'kernelspec', 'jupytext', OUTPUTS_KEY}, nb['metadata'].keys()
    assert all(set(c['metadata']) <= {'tags'} for c in nb['cells'])
    assert not any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    table, figure, widget = nb['cells'][2]['outputs'], nb['cells'][3]['outputs'], nb['cells'][4]['outputs']
    assert '| a | 1 |' in ''.join(table[0]['text'])
    assert any('image/png' in o.get('data', {}) for o in figure)
    assert any('image/png' in o.get('data', {}) for o in widget), f"the widget's static figure is missing: {widget}"
    assert not any(WIDGET_VIEW in o.get('data', {}) for o in widget)
    png = base64.b64decode(''.join(next(o for o in figure if 'image/png' in o.get('data', {}))['data']['image/png']))
    assert png[:4] == b'\x89PNG' and int.from_bytes(png[16:20], 'big') <= 3 * 80 + 40, "figures at OUTPUT_DPI (80): 3 in wide"
    assert outputs_report(nbs, REPO / 'vtd')['01_shown'] == {'outputs': meta, 'stale': []}
    # GitHub's renderer, stood in for by nbconvert's static HTML: the widget cell shows its figure
    html = tmp_path / 'shown.html'
    subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--to', 'html', str(lesson), '--output', str(html)], check=True, capture_output=True)
    page = html.read_text()
    assert len(re.findall(r'<img[^>]*src="data:image/png', page)) >= 2 and 'widget-view+json' not in page
    # --stale: nothing to run while current; a code edit makes the lesson run again
    capsys.readouterr()
    assert tour_main(['--nbs', str(nbs), '--out', str(tmp_path / 'out2'), '--full', '--stale', '--no-record']) == 0
    assert 'nothing to run' in capsys.readouterr().out
    nb['cells'][3]['source'] = ["fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1], [1, 0]); plt.show()"]
    lesson.write_text(clean_notebook(nb, REPO))
    assert outputs_report(nbs, REPO / 'vtd')['01_shown']['stale'] == ['its code cells changed since the run']
    assert tour_main(['--nbs', str(nbs), '--out', str(tmp_path / 'out3'), '--full', '--stale', '--write-outputs']) == 0
    assert outputs_report(nbs, REPO / 'vtd')['01_shown']['stale'] == []
