"""The shape every lesson must have (issue #30), one test per lesson and check, from `tests/tools/lesson_audit.py`.

Source checks (fast, no run): the first screen (the cells before the first `## ` heading) says what you will
learn, what you need and how long it takes, and has a cell that draws; every term of `lesson_audit.TERMS` is
defined (or linked to the glossary by name) where the prose first uses it.

Output checks (marked `notebook`): on the lesson run in smoke mode with matplotlib's inline backend, so its
figures are saved as images. The copy is reused from `lesson_audit.EXECUTED_DIR` while it is current (the lesson's
cell sources, run on the library as it is now), else the lesson is run here (papermill) and kept there
(`test_notebooks.py` runs each lesson with the Agg backend, whose figures are never saved, so its copies cannot
serve here). Checked: the first figure is on the first screen; no object reprs (`<... at 0x...>`), no local paths
and no warnings in the outputs; at most one progress bar left in any cell (one per training run, and a cell that
trains several models in a loop shows one bar for them all, or none).

`python tests/tools/lesson_audit.py --details` prints the same findings as a table, with the prose checks that
need a person (numbers in the prose that no output shows)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / 'tools'))
import lesson_audit  # noqa: E402

LESSONS = lesson_audit.lessons()
IDS = [p.stem for p in LESSONS]
_runs: dict = {}


def source_audit(path):
    import json
    return lesson_audit.audit(json.loads(path.read_text()), path.stem, executed=False)


def executed_audit(path):
    "The audit of the lesson's smoke run: a current copy in EXECUTED_DIR, or a run made now (once per session)."
    if path not in _runs:
        nb = lesson_audit.executed_copy(path) or lesson_audit.execute(path)
        _runs[path] = lesson_audit.audit(nb, path.stem, executed=True)
    return _runs[path]


def test_the_audit_finds_what_it_looks_for():
    "The audit's detectors on a planted notebook: a lesson whose every check fails, and one that passes them all."
    md = lambda s: {'cell_type': 'markdown', 'metadata': {}, 'source': s}
    code = lambda s, outputs=(): {'cell_type': 'code', 'metadata': {}, 'source': s, 'outputs': list(outputs)}
    out = lambda text, name='stdout': {'output_type': 'stream', 'name': name, 'text': text}
    png = {'output_type': 'display_data', 'data': {'image/png': 'iVBOR', 'text/plain': '<Figure>'}, 'metadata': {}}
    bar = {'output_type': 'display_data', 'data': {'application/vnd.jupyter.widget-view+json': {}, 'text/plain': 'fit:  50%|#    | 5/10 [00:01<00:01, 4.2it/s]'}, 'metadata': {}}
    bad = {'cells': [md('# A lesson\n\nIt scores PSNR.'), code('x = 1'), md('## First\n\nThe codebook is small, as issue 17 said. Read the numbers above: 0.731.'),
                     code('plt.plot(x)', [png, bar, bar, out('<torch._C.Generator at 0x7f00aa>\ncached at /tmp/abc/x.pt\n'),
                                          out('/x.py:3: UserWarning: careful\n', 'stderr')])]}
    a = lesson_audit.audit(bad, 'bad', executed=True)
    assert a.header_missing == ['what you will learn', 'what you need', 'time'] and a.first_figure == 3 and not a.figure_on_first_screen
    assert {t for t, _ in a.undefined} == {'PSNR', 'codebook'} and a.bars == {3: 2} and len(a.reprs) == 1 and len(a.paths) == 1
    assert len(a.warnings) == 1 and a.non_concluding and [t for _, t in a.unopenable] == ['issue 17'] and a.numbers == [(2, '0.731')]
    good = {'cells': [md('# A lesson\n\n**What you will learn**\n\n- PSNR (peak signal-to-noise ratio)\n\n**What you need:** 00.\n\n**Time:** 1 s'),
                      code('plt.plot(x)', [png, bar]),
                      md('## First\n\nA [codebook](glossary.md#codebook) is small: 0.731.'), code('print(0.731)', [out('0.731\n')])]}
    a = lesson_audit.audit(good, 'good', executed=True)
    assert not (a.header_missing or a.undefined or a.reprs or a.paths or a.warnings or a.numbers or a.non_concluding)
    assert a.first_figure == 1 and a.figure_on_first_screen and a.max_bars == 1


@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_first_screen_says_what_why_and_how_long(path):
    a = source_audit(path)
    assert not a.header_missing, f"{path.name}: the first screen (cells 0-{a.first_screen_end - 1}, before the first '## ') lacks {a.header_missing}"


@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_first_screen_draws_a_picture(path):
    a = source_audit(path)
    assert a.figure_on_first_screen, (f"{path.name}: no cell of the first screen (cells 0-{a.first_screen_end - 1}) draws; "
                                      f"the first that does is cell {a.figure_cell_in_source}")


@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_terms_are_defined_where_first_used(path):
    a = source_audit(path)
    assert not a.undefined, (f"{path.name}: terms used before they are defined (term, markdown cell; 0 is the first screen): "
                             f"{a.undefined}. Define each where it is first used, or link it: [term](glossary.md)")


@pytest.mark.notebook
@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_first_figure_is_on_the_first_screen(path):
    a = executed_audit(path)
    assert a.figure_on_first_screen, f"{path.name}: the first image is in cell {a.first_figure}; the first screen is cells 0-{a.first_screen_end - 1}"


@pytest.mark.notebook
@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_outputs_hold_no_object_reprs_or_local_paths(path):
    a = executed_audit(path)
    assert not a.reprs, f"{path.name} prints object reprs (cell, text): {a.reprs}"
    assert not a.paths, f"{path.name} prints local paths (cell, line): {a.paths}"


@pytest.mark.notebook
@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_outputs_hold_no_warnings(path):
    a = executed_audit(path)
    assert not a.warnings, f"{path.name} shows warnings (cell, line): {a.warnings}"


@pytest.mark.notebook
@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_at_most_one_progress_bar_per_cell(path):
    a = executed_audit(path)
    many = {i: n for i, n in a.bars.items() if n > 1}
    assert not many, f"{path.name} leaves several progress bars in a cell (cell: bars): {many}; one per training run, one for a loop of runs"


@pytest.mark.parametrize('path', LESSONS, ids=IDS)
def test_prose_concludes_and_cites_only_what_a_reader_can_open(path):
    a = source_audit(path)
    assert not a.non_concluding, f"{path.name}: prose that asks the reader to read the numbers instead of stating them (cell, text): {a.non_concluding}"
    assert not a.unopenable, (f"{path.name}: references a reader cannot open (cell, text): {a.unopenable}; "
                              "quote what the seed or the issue says instead")
