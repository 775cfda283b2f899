"""The static site of executed notebooks (`vtd-tour --site`, `vtd.tour.build_site`), read in a real browser.

The site is built the way the main job builds it, from two small stand-in lessons (tests/browser/site/:
a figure, a live widget, a progress bar, an exported function, links between pages): executed, prepared,
processed by nbdev, rendered. It is served from 127.0.0.1 and opened in Chromium. Every page must load with
no console error and no failed request, every image must load, every internal link and anchor must lead
somewhere, every widget area must show its saved state (offline: the widget manager is the site's own
copy), every page's sidebar must reach every other page, and a search for a word on one page only must
return that page. A page built with faults proves the checks bite.
"""
import functools, http.server, json, re, sys, threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from vtd.tour import build_site, read_executed_notebook, tour_main, _link_pages

REPO = Path(__file__).resolve().parent.parent
SITE_NBS = Path(__file__).resolve().parent / 'browser' / 'site'


# --- Without a browser -------------------------------------------------------------------------------------

def test_float_execution_total_is_stripped(tmp_path):
    nb = {'cells': [{'cell_type': 'code', 'execution_count': 1, 'outputs': [], 'source': 'x = 1',
                     'metadata': {'execution': {'iopub.status.idle': '2026-01-01T00:00:00Z', 'total': 0.25}}},
                    {'cell_type': 'markdown', 'metadata': {'execution': {'total': 1.5}}, 'source': '# T'}],
          'metadata': {'execution': {'total': 2.0}}, 'nbformat': 4, 'nbformat_minor': 4}
    (tmp_path / 'a.ipynb').write_text(json.dumps(nb))
    got = read_executed_notebook(tmp_path / 'a.ipynb')
    assert got.cells[0].metadata.execution == {'iopub.status.idle': '2026-01-01T00:00:00Z'}
    assert 'execution' not in got.cells[1].metadata and 'execution' not in got.metadata


def test_links_between_notebooks_point_at_pages():
    html = '<a href="02_b.ipynb#x">b</a> <a href="./02_b.ipynb">b</a> <a href="09_gone.ipynb">?</a> <a href="https://x.org/a.ipynb">e</a>'
    out = _link_pages(html, {'02_b': 'b.html'})
    assert out == '<a href="b.html#x">b</a> <a href="b.html">b</a> <a href="09_gone.ipynb">?</a> <a href="https://x.org/a.ipynb">e</a>'


def test_the_site_shows_committed_outputs_and_says_when_a_lesson_has_none(tmp_path):
    "site_sources: a lesson carrying outputs is shown from nbs/ (its page says which run made them, current or stale);"
    " one without is shown from this tour's smoke run, and its page says so."
    from vtd.tour import OUTPUTS_KEY, _page_top, clean_notebook, code_fingerprint, library_fingerprint, site_sources
    nbs, out = tmp_path / 'nbs', tmp_path / 'out'; nbs.mkdir(); out.mkdir()
    cell = {'cell_type': 'code', 'id': 'c', 'metadata': {}, 'execution_count': None, 'source': 'print(1)',
            'outputs': [{'output_type': 'stream', 'name': 'stdout', 'text': '1\n'}]}
    nb = {'cells': [{'cell_type': 'markdown', 'id': 't', 'metadata': {}, 'source': '# Shown'}, cell],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}
    nb['metadata'][OUTPUTS_KEY] = {'code': code_fingerprint(nb), 'library': library_fingerprint(nb, REPO / 'vtd'), 'commit': 'abc1234',
                                   'mode': 'full', 'device': 'cpu', 'machine': '2 cores, cpu', 'seconds': 42.0, 'date': '2026-12-05 23:00 UTC'}
    (nbs / '01_shown.ipynb').write_text(clean_notebook(nb, REPO))
    bare = json.loads(json.dumps(nb)); bare['cells'][1]['outputs'] = []; del bare['metadata'][OUTPUTS_KEY]
    (nbs / '02_bare.ipynb').write_text(clean_notebook(bare, REPO)); (out / '02_bare.ipynb').write_text(json.dumps(bare))
    runs = [{'notebook': n, 'ok': True, 'error': None, 'seconds': 3.0, 'smoke': True, 'device': 'cpu', 'results': {}} for n in ('01_shown.ipynb', '02_bare.ipynb')]
    src = site_sources(nbs, out, runs)
    summary = {r['notebook']: r for r in json.loads((src / 'summary.json').read_text())}
    assert (src / '01_shown.ipynb').read_text() == (nbs / '01_shown.ipynb').read_text(), "the committed notebook, not the run's copy"
    assert summary['01_shown.ipynb']['committed']['stale'] == [] and summary['02_bare.ipynb']['no_outputs']
    page = {'stem': '01_shown', 'title': 'Shown', 'desc': '', 'error': None}
    top = _page_top(page, summary['01_shown.ipynb'])
    assert 'Outputs committed with the lesson: its full run' in top and 'abc1234' in top and 'They are current' in top
    assert 'carries no committed outputs yet' in _page_top(page | {'stem': '02_bare'}, summary['02_bare.ipynb'])
    stale = summary['01_shown.ipynb'] | {'committed': summary['01_shown.ipynb']['committed'] | {'stale': ['its code cells changed since the run']}}
    assert '<b>Stale</b>: its code cells changed' in _page_top(page, stale)


def test_build_site_refuses_an_empty_folder_and_a_bad_option(tmp_path):
    with pytest.raises(FileNotFoundError, match='vtd-tour'): build_site(tmp_path, tmp_path / 'site')
    with pytest.raises(ValueError, match='widgets must be'): build_site(tmp_path, tmp_path / 'site', widgets='maybe')


def test_without_npm_or_network_the_site_says_its_widgets_cannot_render(tmp_path, monkeypatch, capsys):
    import vtd.tour
    nb = {'cells': [{'cell_type': 'markdown', 'metadata': {}, 'source': '# T\n\n> d'}], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 4}
    (tmp_path / 'run').mkdir(); (tmp_path / 'run' / '01_t.ipynb').write_text(json.dumps(nb))
    monkeypatch.setenv('PATH', str(tmp_path) + ':' + str(Path(sys.executable).parent))  # python, but no npm
    monkeypatch.setenv('VTD_CACHE', str(tmp_path / 'empty-cache'))
    monkeypatch.setattr(vtd.tour, '_online', lambda *a, **k: False)
    info = build_site(tmp_path / 'run', tmp_path / 'site', cache_dir=tmp_path / 'cache')
    assert info['widgets'] == 'none' and 'NOT available' in info['widgets_note']
    err = capsys.readouterr().err
    assert 'npm is not installed' in err and 'lunr' in err and info['search_note'].startswith('plain word matching')
    assert 'NOT available' in (tmp_path / 'site' / 'index.html').read_text()
    with pytest.raises(RuntimeError, match='npm'): build_site(tmp_path / 'run', tmp_path / 'site', widgets='local', cache_dir=tmp_path / 'cache')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The stand-in lessons run by `vtd-tour --site` (with MPLBACKEND=Agg from conftest: the tour must still get figures)."
    out = tmp_path_factory.mktemp('tour')
    rc = tour_main(['--nbs', str(SITE_NBS), '--out', str(out), '--site'])
    assert rc == 0, (out / 'summary.txt').read_text()
    return out / 'site'


PAGES = ['glossary.html', 'index.html', 'links.html', 'widgets.html']


def test_site_has_a_page_per_notebook_and_an_index(site):
    assert sorted(p.name for p in site.glob('*.html')) == PAGES
    assert 'href="glossary.html"' in (site / 'links.html').read_text(), "the lessons' link to glossary.md must point at its page"
    index = (site / 'index.html').read_text()
    assert 'widgets.html' in index and 'links.html' in index and 'largest: <b>9</b>' in index
    links = (site / 'links.html').read_text()
    assert 'src="data:image/png' in links, "the plot is missing: figures not shown inline"
    page = (site / 'widgets.html').read_text()
    assert 'application/vnd.jupyter.widget-state+json' in page, "the widgets' saved state is missing from the page"
    if (site / '_static' / 'html-manager' / 'embed.js').exists():  # bundled: no page loads a script from the network
        assert "var widgetRendererSrc = '_static/html-manager/embed.js'" in page
        assert re.findall(r'src="(https?:[^"]*)"', page) == [], "a page loads a script or image from the network"


def test_pages_show_what_quarto_shows(site):
    "nbdev's processing ran: API entries present, directives and papermill's parameters cell gone, bars as text."
    links, widgets = (site / 'links.html').read_text(), (site / 'widgets.html').read_text()
    assert 'id="largest"' in links and 'The largest of' in links, "the exported function has no API entry"
    for name, page in (('links', links), ('widgets', widgets)):
        assert '# Parameters' not in page and 'injected-parameters' not in page, f"{name}: papermill's cell is shown"
        assert not re.search(r'#\|\s*(export|default_exp|hide|echo)', page), f"{name}: a directive is shown"
        assert 'vtd-sidebar' in page and '_static/search-docs.js' in page
    assert 'counting: 100%|██████████| 5/5' in widgets, "the finished progress bar is not shown as its final text"
    assert 'smoke mode' in widgets
    if (site / '_static' / 'katex' / 'katex.min.js').exists():  # bundled: the pages typeset their TeX offline
        assert '_static/katex/contrib/auto-render.min.js' in links and list((site / '_static' / 'katex' / 'fonts').glob('*.woff2'))


# --- In the browser ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def serve():
    "Serve folders from 127.0.0.1 on a free port: serve(folder) -> base URL."
    servers = []
    def start(folder):
        handler = functools.partial(QuietHandler, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start(); servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"
    yield start
    for s in servers: s.shutdown(); s.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def check_site(page, base: str, start: str = 'index.html', shots: Path | None = None) -> tuple[list[str], list[str]]:
    """Open every page reachable from `start` under `base`; return (pages visited, problems found)."""
    problems, events = [], []
    page.on('console', lambda m: events.append(f"console {m.type}: {m.text[:300]}") if m.type == 'error' else None)
    page.on('pageerror', lambda e: events.append(f"page error: {e}"))
    page.on('requestfailed', lambda r: events.append(f"request failed: {r.url[:200]} ({r.failure})"))
    page.on('response', lambda r: events.append(f"HTTP {r.status}: {r.url[:200]}") if r.status >= 400 else None)
    todo, seen, anchors = [urljoin(base, start)], set(), []
    while todo:
        url = todo.pop(0)
        if url in seen: continue
        seen.add(url); events.clear()
        resp = page.goto(url, wait_until='networkidle')
        name = url[len(base):] or 'index.html'
        if resp is None or resp.status != 200:
            problems.append(f"{name}: HTTP {resp.status if resp else 'no response'}"); continue
        areas = page.locator('.jupyter-widgets.jp-OutputArea-output')
        if areas.count():  # the manager renders each saved widget next to its script tag
            try: page.wait_for_function("""() => Array.from(document.querySelectorAll('.jupyter-widgets.jp-OutputArea-output'))
                     .every(a => a.querySelector('.jupyter-widgets.lm-Widget, .widget-output'))""", timeout=20_000)
            except Exception: pass  # reported below, area by area
        empty = page.evaluate("""() => Array.from(document.querySelectorAll('.jupyter-widgets.jp-OutputArea-output'))
            .map((a, i) => [i, a.getBoundingClientRect().height, !!a.querySelector('.jupyter-widgets.lm-Widget, .widget-output')])
            .filter(([i, h, rendered]) => !rendered || h < 5).map(([i]) => i)""")
        problems += [f"{name}: widget area {i} is empty (the widget manager did not render it)" for i in empty]
        blank = page.evaluate("""() => Array.from(document.querySelectorAll('.widget-output'))
            .filter(o => !o.querySelector('img, pre, .jp-RenderedText, table')).length""")
        if blank: problems.append(f"{name}: {blank} widget output area(s) show nothing (no saved figure or text)")
        page.wait_for_timeout(300)
        broken_imgs = page.evaluate("""() => Array.from(document.images)
            .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 120))""")
        problems += [f"{name}: image did not load: {s}" for s in broken_imgs]
        problems += [f"{name}: {e}" for e in events]
        if shots: page.screenshot(path=str(shots / (name.replace('/', '_') + '.png')), full_page=False)
        for href in page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))"):
            target = urljoin(url, href); parsed = urlparse(target)
            if not target.startswith(base) or parsed.scheme not in ('http', 'https'): continue  # external: not ours to check
            page_url = target.split('#')[0]
            if parsed.fragment: anchors.append((name, href, page_url, parsed.fragment))
            if page_url not in seen: todo.append(page_url)
    for name, href, page_url, frag in anchors:  # every #anchor must name an element of its page
        if page_url in seen:
            page.goto(page_url, wait_until='domcontentloaded')
            if not page.evaluate('f => !!document.getElementById(f) || !!document.getElementsByName(f).length', frag):
                problems.append(f"{name}: link {href!r} points at a missing anchor")
    return sorted(u[len(base):] or 'index.html' for u in seen), problems


@pytest.fixture
def shots(output_path) -> Path:
    p = Path(output_path); p.mkdir(parents=True, exist_ok=True); return p


@pytest.mark.browser
def test_every_page_of_the_site_works_offline(site, serve, page, shots):
    if not (site / '_static' / 'html-manager' / 'embed.js').exists():
        pytest.skip("the widget manager could not be bundled (no npm, or npm could not reach its registry): "
                    "the site's widgets would need the CDN, which this offline check cannot load")
    pages, problems = check_site(page, serve(site), shots=shots)
    assert pages == PAGES, pages
    assert not problems, '\n'.join(problems)
    # The live widget shows the figure saved when the notebook ran.
    page.goto(serve(site) + 'widgets.html', wait_until='networkidle')
    figure = page.locator('.widget-output img').first
    figure.wait_for(timeout=20_000)
    assert page.evaluate('i => i.naturalWidth', figure.element_handle()) > 50
    page.locator('.widget-vbox').first.screenshot(path=str(shots / 'static-widget.png'))


@pytest.mark.browser
def test_formulas_are_typeset_offline(site, serve, page):
    "The TeX in a lesson's prose renders as KaTeX (the site's own copy), not as its source."
    if not (site / '_static' / 'katex' / 'katex.min.js').exists():
        pytest.skip("KaTeX could not be bundled (no npm, or npm could not reach its registry)")
    page.goto(serve(site) + 'links.html', wait_until='networkidle')
    assert page.locator('.katex-display').count() == 1, "the displayed formula $$D(R) = ...$$ is not typeset"
    assert page.locator('.katex').count() == 2, "the inline formula $x^2 + y^2$ is not typeset"
    assert page.locator('.katex-error').count() == 0
    prose = page.locator('.jp-RenderedMarkdown').all_inner_texts()
    assert not any('$$' in t or '\\sum' in t for t in prose), "TeX source is still visible"
    assert page.evaluate("() => document.fonts.check('16px KaTeX_Main')"), "KaTeX's fonts did not load"


@pytest.mark.browser
def test_site_check_catches_each_kind_of_fault(site, serve, page, tmp_path):
    "A copy of the site with faults added, and pages built without the widget manager, must each be reported."
    import shutil
    bad = tmp_path / 'bad'; shutil.copytree(site, bad)
    (bad / 'index.html').write_text((bad / 'index.html').read_text().replace(
        '</main>', '<a href="missing.html">gone</a> <a href="links.html#no-such-anchor">anchor</a>'
                   '<img src="missing.png"><script>console.error("deliberate")</script></main>'))
    (bad / '_static' / 'html-manager' / 'embed.js').unlink(missing_ok=True)  # widgets can no longer render
    pages, problems = check_site(page, serve(bad))
    text = '\n'.join(problems)
    for expected in ('missing.html: HTTP 404', 'missing anchor', 'image did not load', 'console error: deliberate',
                     'widget area 0 is empty', 'embed.js'):
        assert expected in text, f"{expected!r} not reported; problems were:\n{text}"


@pytest.mark.browser
def test_every_page_reaches_every_other_and_search_finds_the_one_page(site, serve, page):
    base = serve(site)
    for name in PAGES:
        page.goto(base + name, wait_until='domcontentloaded')
        nav = set(page.evaluate("() => Array.from(document.querySelectorAll('nav.vtd-sidebar a')).map(a => a.getAttribute('href'))"))
        assert nav >= set(PAGES), f"{name}: the sidebar misses {sorted(set(PAGES) - nav)}"
    def search(word):
        page.fill('#vtd-search', word)
        page.wait_for_selector('#vtd-search-results li', timeout=10_000)
        return sorted(page.evaluate("() => Array.from(document.querySelectorAll('#vtd-search-results li[data-page]')).map(l => l.dataset.page)"))
    page.goto(base + 'widgets.html', wait_until='networkidle')
    assert page.evaluate('() => !!window.lunr') == (site / '_static' / 'lunr.min.js').exists()
    assert search('quokka') == ['links.html'], "a word on one page only must find that page only"
    assert search('wombat') == ['links.html', 'widgets.html']
    assert search('zzyzxq') == [] and page.locator('#vtd-search-results li.none').count() == 1
    page.fill('#vtd-search', 'quokka'); page.wait_for_selector('#vtd-search-results li[data-page] a')
    page.click('#vtd-search-results li[data-page] a')
    page.wait_for_url(re.compile(r'links\.html'))
