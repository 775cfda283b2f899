"""The repository itself: the library is what the notebooks export, notebooks are clean, docs and README agree."""
import json, shutil, subprocess, sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_library_in_sync_with_notebooks(tmp_path):
    "Running nbdev_export on a copy of the notebooks reproduces vtd/ exactly."
    for name in ('nbs', 'vtd'): shutil.copytree(REPO / name, tmp_path / name, symlinks=True)
    for name in ('settings.ini', 'setup.py', '_quarto.yml'): shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(['nbdev_export'], cwd=tmp_path, check=True, capture_output=True)
    stale = [p.name for p in sorted((REPO / 'vtd').glob('*.py'))
             if (tmp_path / 'vtd' / p.name).read_text() != p.read_text()]
    new = [p.name for p in (tmp_path / 'vtd').glob('*.py') if not (REPO / 'vtd' / p.name).exists()]
    assert not stale and not new, f"vtd/ differs from the notebooks' export: changed {stale}, missing {new}; run nbdev_export"


def test_notebooks_are_clean_and_keep_parameters_tag():
    "Outputs may stay (each lesson carries its full run's); volatile metadata may not: each notebook is what nbdev_clean leaves."
    from vtd.tour import OUTPUTS_KEY, clean_notebook
    for nb_path in sorted(REPO.glob('nbs/*.ipynb')):
        text = nb_path.read_text(); nb = json.loads(text)
        assert set(nb['metadata']) <= {'kernelspec', 'jupytext', OUTPUTS_KEY}, f"{nb_path.name}: notebook metadata {sorted(nb['metadata'])} (run nbdev_clean)"
        for c in nb['cells']:
            assert set(c.get('metadata', {})) <= {'tags'}, f"{nb_path.name}: cell metadata {c['metadata']} (run nbdev_clean)"
            if c['cell_type'] == 'code':
                assert c.get('execution_count') is None, f"{nb_path.name}: execution counts left in"
                assert all(o.get('execution_count') is None for o in c.get('outputs', [])), f"{nb_path.name}: execution counts left in outputs"
                assert 'injected-parameters' not in c['metadata'].get('tags', []), f"{nb_path.name}: papermill's injected cell committed"
        assert text == clean_notebook(nb, REPO), f"{nb_path.name} is not as nbdev_clean leaves it (run nbdev_clean)"


def test_readme_is_generated_from_index():
    from vtd.tour import readme_from_index
    assert (REPO / 'README.md').read_text() == readme_from_index(REPO / 'nbs' / 'index.ipynb'), \
        "README.md is stale: run python -c 'from vtd.tour import write_readme; write_readme()'"


def test_results_section_and_page_are_what_the_record_says():
    "README's results table, the docs' home (index.ipynb) and nbs/results.md all come from the committed results/full.json."
    from vtd.tour import RECORD, RESULTS_MARK, results_markdown, results_page_markdown
    record = json.loads((REPO / RECORD).read_text())
    table = results_markdown(record)
    cells = [''.join(c['source']) for c in json.loads((REPO / 'nbs' / 'index.ipynb').read_text())['cells'] if c['cell_type'] == 'markdown']
    assert table in cells, "nbs/index.ipynb's results cell is stale: run python -c 'from vtd.tour import write_results; write_results()'"
    assert table in (REPO / 'README.md').read_text(), "README.md's results section is stale (write_results)"
    assert (REPO / 'nbs' / 'results.md').read_text() == results_page_markdown(table), "nbs/results.md is stale (write_results)"
    for lesson, e in record['lessons'].items():
        assert {'commit', 'date', 'machine', 'seconds', 'headline', 'results'} <= set(e), f"{lesson}: incomplete entry"
        assert {'cores', 'device'} <= set(e['machine']) and (REPO / 'nbs' / f'{lesson}.ipynb').exists(), lesson
    assert table.startswith(RESULTS_MARK)


def test_start_here_and_lesson_times_are_what_the_record_says():
    "README's lesson order and every lesson's first-screen **Time:** line come from COURSE and results/full.json."
    from vtd.tour import COURSE, RECORD, START_MARK, TIME_PREFIX, course_markdown, time_line
    record = json.loads((REPO / RECORD).read_text())
    assert [l for l, *_ in COURSE] == [p.stem for p in sorted(REPO.glob('nbs/[0-9]*.ipynb')) if p.stem != '90_tour']
    table = course_markdown(record, REPO / 'nbs')
    assert table.startswith(START_MARK) and table in (REPO / 'README.md').read_text(), "README's start-here table is stale (write_results)"
    for lesson, *_ in COURSE:
        nb = json.loads((REPO / 'nbs' / f'{lesson}.ipynb').read_text())
        lines = [l.rstrip('\n') for c in nb['cells'] if c['cell_type'] == 'markdown' for l in c['source'] if l.startswith(TIME_PREFIX)]
        assert lines == [time_line(lesson, record)], f"{lesson}: its first screen's time line is missing or stale (write_results): {lines}"
        first = next(''.join(c['source']) for c in nb['cells'][1:] if c['cell_type'] == 'markdown')
        assert 'What you will learn' in first and 'glossary' in first, f"{lesson}: the cell after the title is not the first screen"


def test_glossary_page_defines_the_terms_and_is_in_the_docs():
    import yaml
    text = (REPO / 'nbs' / 'glossary.md').read_text()
    for term in ('PSNR', 'SSIM', 'ELBO', 'Bits per word', 'k-medoids', 'STE', 'Rotary positions', 'Fréchet distance',
                 'Classifier-free guidance', 'Codebook', 'perplexity', 'absorbing', 'uniform diffusion', 'KV cache'):
        assert f'**{term}' in text or term in text, term
    cfg = yaml.safe_load((REPO / '_quarto.yml').read_text())
    assert 'glossary.md' in cfg['website']['sidebar']['contents'], "the glossary is missing from the docs' sidebar"


def test_readme_gives_the_two_commands():
    text = (REPO / 'README.md').read_text()
    assert 'vtd-tour' in text and 'python -m pytest tests' in text
    ci = (REPO / '.ci' / 'run').read_text()
    assert 'test-command' in ci, ".ci/run must take its test command from README.md"


def test_quarto_config_is_the_one_nbdev_reads():
    import yaml
    cfg = yaml.safe_load((REPO / '_quarto.yml').read_text())
    assert cfg['project']['type'] == 'website'
    link = REPO / 'nbs' / '_quarto.yml'
    assert link.is_symlink() and link.resolve() == (REPO / '_quarto.yml').resolve()
    listed = [m for section in cfg['website']['navbar']['left'] for m in section.get('menu', [])]
    assert set(listed) >= {p.name for p in REPO.glob('nbs/[0-9]*.ipynb')}, "a lesson is missing from the docs menu"
    assert 'results.md' in str(cfg['website']['navbar']), "the results page is missing from the docs' navigation"


def test_docs_command_fails_loudly_without_quarto(tmp_path, monkeypatch):
    if shutil.which('quarto'): pytest.skip('Quarto is installed here: the docs build itself is what runs')
    r = subprocess.run([sys.executable, '-c', 'import sys, vtd.tour as c; sys.exit(c.docs_main([]))'],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and 'Quarto is not installed' in r.stderr


def test_vtd_imports_without_optional_packages():
    code = ("import sys, importlib.util; import vtd, vtd.core, vtd.data; "
            "assert 'torchvision' not in sys.modules and 'lpips' not in sys.modules")
    subprocess.run([sys.executable, '-c', code], check=True)


def _vtd_imports(path: Path) -> set:
    "The vtd modules a module imports anywhere in it (top level or inside a function), by its syntax tree."
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1 and mod: out.add(mod.split('.')[0])
            elif node.level == 1 or mod == 'vtd': out.update(a.name for a in node.names)
            elif mod.startswith('vtd.'): out.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('vtd.'))
    return out - {path.stem}


def test_readme_module_map_is_what_the_modules_import():
    "The README's path (core -> ... -> cli): each module imports only modules before it and vtd.metrics; no leaf is imported."
    import re
    text = (REPO / 'README.md').read_text()
    section = text.split('## Module map', 1)[1].split('\n## ', 1)[0]
    path = re.findall(r'`(\w+)`', re.search(r'\*\*(`core`.*?)\*\*', section).group(1))
    assert path == ['core', 'data', 'transformer', 'diffusion', 'autoregressive', 'visual_tokens', 'lm', 'cli']
    leaves = {'vq', 'fractal', 'geodesic', 'prior', 'spatial_vae', 'exercises', 'tour'}
    assert all(f'`vtd.{m}`' in section for m in leaves | {'metrics'} | set(path))
    listed = set(path) | leaves | {'metrics'}
    modules = {p.stem for p in (REPO / 'vtd').glob('*.py') if not p.stem.startswith('_')}
    assert modules == listed, f"the map must name every module: missing {modules - listed}, extra {listed - modules}"
    for i, m in enumerate(path):
        imported = _vtd_imports(REPO / 'vtd' / f'{m}.py')
        assert imported <= set(path[:i]) | {'metrics'}, f"vtd.{m} imports {sorted(imported - set(path[:i]))}, not before it on the path"
    assert _vtd_imports(REPO / 'vtd' / 'metrics.py') <= {'core'}


def test_the_site_is_built_from_the_committed_notebooks():
    "The deploy workflow runs no lesson: it checks the committed outputs are current, then builds with nbdev_docs."
    text = (REPO / '.github' / 'workflows' / 'deploy.yaml').read_text()
    steps = [l.strip() for l in text.splitlines() if l.strip().startswith('run:')]
    assert not any('vtd-tour' in s or 'papermill' in s for s in steps), f"the deploy workflow executes lessons: {steps}"
    assert any('tests/test_outputs.py' in s for s in steps) and any(s.endswith(('vtd-docs', 'nbdev_docs')) for s in steps), steps
