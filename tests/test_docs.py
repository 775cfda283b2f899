"""nbdev's docs processing of every notebook, exactly as `nbdev_docs` / `nbdev_proc_nbs` run it before Quarto.

Each notebook in nbs/ (new lessons join by themselves) is processed with nbdev's `FilterDefaults` (IN_TEST=1,
from nbs/) into a temporary folder, which is the input Quarto would get. Processing executes every cell that
holds an import (and every `#| export` / `#| exec_doc` cell) and skips the rest, so a cell with an import that
uses another cell's variable fails here. Every public function and class a lesson exports (its module's
`__all__`) must then have its API entry (nbdev's `show_doc` output) in that lesson's processed notebook.
"""
import importlib, json, re
from pathlib import Path

import pytest

from vtd.tour import api_entries, documented_names, process_notebook

REPO = Path(__file__).resolve().parent.parent
# ar_baseline builds vtd.autoregressive: a library notebook, not a lesson (no number, no record), tested as the lessons are
LIBRARY_NOTEBOOKS = [REPO / 'nbs' / 'ar_baseline.ipynb']
NOTEBOOKS = sorted(REPO.glob('nbs/[0-9]*.ipynb')) + LIBRARY_NOTEBOOKS + [REPO / 'nbs' / 'index.ipynb']


def exported_module(nb_path: Path) -> str | None:
    "The module a notebook exports (`#| default_exp name`), or None."
    for c in json.loads(nb_path.read_text())['cells']:
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), flags=re.M) if c['cell_type'] == 'code' else None
        if m: return m.group(1)
    return None


@pytest.mark.parametrize('nb_path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_nbdev_processing_passes_and_documents_every_export(nb_path, tmp_path):
    out = tmp_path / nb_path.name
    err = process_notebook(nb_path, out, cwd=REPO / 'nbs')
    assert err is None, f"nbdev's docs processing failed: {err}"
    mod = exported_module(nb_path)
    if mod is None: return
    names = documented_names(importlib.import_module(f'vtd.{mod}'))
    missing = sorted(set(names) - api_entries(json.loads(out.read_text())))
    assert not missing, f"{nb_path.name}: no API entry (show_doc output) for {missing} in the processed notebook"


def test_the_check_bites(tmp_path):
    "A notebook whose import cell uses another cell's variable fails, naming the error; a missing entry is seen."
    cell = lambda i, src: {'cell_type': 'code', 'execution_count': None, 'id': i, 'metadata': {}, 'outputs': [], 'source': src}
    nb = {'cells': [cell('e', '#| default_exp bad'), cell('f', '#| export\ndef f(): "F."'), cell('a', 'n = 3'),
                    {'cell_type': 'code', 'execution_count': None, 'id': 'b', 'metadata': {}, 'outputs': [], 'source': 'import math\nx = math.sqrt(n)'}],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path / '01_bad.ipynb').write_text(json.dumps(nb))
    err = process_notebook(tmp_path / '01_bad.ipynb', tmp_path / 'out.ipynb', cwd=REPO / 'nbs')
    assert err and "NameError: name 'n' is not defined" in err, err
    assert api_entries({'cells': [{'outputs': [{'data': {'text/markdown': '---\n\n### fit\n\n> fit (x)'}}]}]}) == {'fit'}
