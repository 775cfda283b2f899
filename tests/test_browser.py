"""The lessons' widgets, used the way a reader uses them: in JupyterLab, in a real browser (Chromium).

Executing a notebook proves little about its widgets: a callback that raises still executes cleanly.
For every lesson notebook that builds a widget with `vtd.core.live_widget`, this opens a copy (set to
smoke mode) in JupyterLab, runs all cells, moves each control (slider, dropdown, text box, button) and
checks that the output it drives is redrawn and changes, with no traceback anywhere in the page.
Screenshots before and after go to test-results/. The helper notebooks in tests/browser/ prove the
checks bite: a raising callback and a stale display must both be reported, and so must lesson 00_core
with its demo callback broken.

`pytest -m browser tests` runs these; `-k 03_vq` picks one lesson. VTD_BROWSER_DEBUG=1 prints progress,
VTD_BROWSER_RUN_TIMEOUT / VTD_BROWSER_REDRAW_TIMEOUT (seconds) bound a notebook's run and one redraw.
"""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / 'browser'
pytestmark = pytest.mark.browser

# A call of live_widget that is not its definition: how a lesson with a widget is recognised.
WIDGET_CALL = re.compile(r'(?<!def )\blive_widget\(')
LAB_START_TIMEOUT = 120          # seconds for JupyterLab to answer /api/status
RUN_ALL_TIMEOUT = int(os.environ.get('VTD_BROWSER_RUN_TIMEOUT', '600'))  # one notebook, smoke mode
REDRAW_TIMEOUT = int(os.environ.get('VTD_BROWSER_REDRAW_TIMEOUT', '90'))   # one control move -> new output
STDERR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
TRACEBACK = re.compile(r'Traceback|\b[A-Z]\w*(Error|Exception)\b')


def widget_notebooks(nbs_dir=REPO / 'nbs') -> list[Path]:
    "Lesson notebooks whose code calls live_widget (found afresh each run: new lessons join by themselves)."
    found = []
    for p in sorted(Path(nbs_dir).glob('[0-9]*.ipynb')):
        cells = json.loads(p.read_text())['cells']
        if any(WIDGET_CALL.search(''.join(c['source'])) for c in cells if c['cell_type'] == 'code'): found.append(p)
    return found


def test_widget_notebooks_are_discovered():
    found = [p.name for p in widget_notebooks()]
    assert '00_core.ipynb' in found, f"00_core's demo widget was not discovered (found {found})"
    assert widget_notebooks(HELPERS) == [] and WIDGET_CALL.search('x = live_widget(f, {})') \
        and not WIDGET_CALL.search('def live_widget(render, controls):')


# --- JupyterLab, started for these tests only ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class Lab:
    "A JupyterLab server on 127.0.0.1 with its own config, runtime, settings and workspaces folders."
    def __init__(self, base: Path):
        self.base, self.root, self.token, self.port = base, base / 'notebooks', secrets.token_hex(16), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        dirs = {k: base / k for k in ('config', 'runtime', 'settings', 'workspaces', 'notebooks')}
        for d in dirs.values(): d.mkdir(parents=True, exist_ok=True)
        settings = {  # no news, no update check, no autosave; every cell in the DOM (no windowing)
            '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'fetchNews': 'false', 'checkForUpdates': False},
            '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': {'autosave': False},
            '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'},
        }
        for rel, value in settings.items():
            f = dirs['settings'] / rel; f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(value))
        env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}  # kernels use the inline backend, as a reader's do
        env.update(JUPYTER_CONFIG_DIR=str(dirs['config']), JUPYTER_RUNTIME_DIR=str(dirs['runtime']),
                   JUPYTERLAB_SETTINGS_DIR=str(dirs['settings']), JUPYTERLAB_WORKSPACES_DIR=str(dirs['workspaces']),
                   PYTHONUNBUFFERED='1')
        cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1',
               f'--ServerApp.port={self.port}', '--ServerApp.port_retries=0', f'--IdentityProvider.token={self.token}',
               f'--ServerApp.root_dir={self.root}', f'--LabApp.user_settings_dir={dirs["settings"]}',
               f'--LabApp.workspaces_dir={dirs["workspaces"]}', '--LabApp.news_url=None',
               '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
        if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
        self.log_path = base / 'jupyterlab.log'
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT)

    def api(self, path, method='GET', timeout=5):
        req = urllib.request.Request(self.url + path, method=method, headers={'Authorization': f'token {self.token}'})
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, r.read()

    def wait_ready(self, timeout=LAB_START_TIMEOUT):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.api('/api/status')[0] == 200: return
            except OSError: pass
            time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer /api/status in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n=40) -> str:
        self._log.flush()
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-n:])

    def shutdown_kernels(self):
        try:
            for k in json.loads(self.api('/api/kernels')[1]): self.api(f"/api/kernels/{k['id']}", 'DELETE', timeout=20)
        except OSError: pass

    def stop(self):
        "Stop the server by its PID (SIGTERM shuts its kernels down too), SIGKILL if it hangs."
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(10)
        self._log.close()

    def add_notebook(self, src: Path, smoke: bool = True) -> str:
        "Copy `src` into the server's folder with its parameters cell set to smoke mode; return its name."
        import papermill as pm
        dst = self.root / src.name
        pm.execute_notebook(str(src), str(dst), parameters={'smoke': smoke}, prepare_only=True,
                            kernel_name='python3', progress_bar=False, log_output=False)
        return dst.name


@pytest.fixture(scope='session')
def lab(tmp_path_factory, chromium_path):  # chromium_path: no server at all where no browser can drive it
    server = Lab(tmp_path_factory.mktemp('jupyterlab'))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# --- Driving a notebook ----------------------------------------------------------------------------------

# A cheap fingerprint of what an output area shows: a hash of every image's src and the text.
FINGERPRINT_JS = """el => {
  const s = Array.from(el.querySelectorAll('img')).map(i => i.src).join('|') + '#' + el.innerText;
  let h = 0; for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return `${s.length}:${h}`;
}"""
# Mark what is shown now; clear_output(wait=True) replaces it, so "no marked node left" means redrawn.
MARK_JS = "el => el.querySelectorAll('.jp-OutputArea-child').forEach(c => c.setAttribute('data-vtd-old', '1'))"
REDRAWN_JS = """el => el.querySelector('[data-vtd-old]') === null && el.querySelector('.jp-OutputArea-child') !== null"""
KERNEL_IDLE_JS = """() => Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).some(e => /\\|\\s*Idle\\s*$/.test(e.textContent))"""
STARTED_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')).some(p => /\\[(\\*|\\d+)\\]/.test(p.innerText))"""
PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(p => p.innerText.trim())"""


def _log(msg):
    if os.environ.get('VTD_BROWSER_DEBUG'): print(f"[{time.strftime('%X')}] {msg}", flush=True)


def open_and_run_all(page, lab: Lab, name: str, timeout=RUN_ALL_TIMEOUT):
    "Open `name` in JupyterLab, wait for its kernel, run all cells and wait until every cell has run."
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}&reset")
    _log(f"{name}: opened")
    page.wait_for_selector('.jp-Notebook .jp-CodeCell', timeout=120_000)
    _log(f"{name}: cells shown")
    # The kernel is ready when the status bar says so ("Python 3 (ipykernel) | Idle"); the toolbar's
    # indicator can read idle before the kernel is connected, and a Run All sent then is lost.
    page.wait_for_function(KERNEL_IDLE_JS, timeout=180_000)
    _log(f"{name}: kernel idle")
    for attempt in range(3):
        page.locator('.lm-MenuBar-itemLabel', has_text=re.compile(r'^Run$')).click()
        page.locator('.lm-Menu-itemLabel', has_text=re.compile(r'^Run All Cells$')).click()
        try:  # started: some prompt shows [*] or a number
            page.wait_for_function(STARTED_JS, timeout=30_000); break
        except Exception:
            _log(f"{name}: run all did not start (attempt {attempt + 1}), again")
    else:
        raise TimeoutError(f"{name}: Run All Cells never started a cell (kernel not connected?)")
    t0 = time.monotonic()
    while True:
        prompts = page.evaluate(PROMPTS_JS)
        done = all(re.fullmatch(r'\[\d+\]:', p) for p in prompts)
        errored = bool(tracebacks(page))  # run-all stops at a cell that raised: the later cells stay unrun
        if done or (errored and not any('*' in p for p in prompts)): return prompts
        _log(f"{name}: prompts {prompts}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{name}: cells still not run after {timeout}s: prompts {prompts}")
        page.wait_for_timeout(1000)


def tracebacks(scope) -> list[str]:
    "Texts of stderr outputs under `scope` (a page or a locator) that show an exception."
    texts = [t for t in scope.locator(STDERR).all_inner_texts() if TRACEBACK.search(t)]
    return [t.strip()[-600:] for t in texts]


def _controls(box):
    "Each control of a live_widget box, as (kind, label, locator)."
    row = box.locator(':scope > .widget-hbox').first
    found = []
    for kind, sel in (('slider', '.widget-slider'), ('dropdown', '.widget-dropdown'), ('text', '.widget-text'),
                      ('textarea', '.widget-textarea'), ('checkbox', '.widget-checkbox'),
                      ('toggle', '.widget-toggle-buttons'), ('radio', '.widget-radio'), ('button', 'button.widget-button')):
        for i in range(row.locator(sel).count()):
            c = row.locator(sel).nth(i)
            label = (c.locator('.widget-label').first.inner_text() if c.locator('.widget-label').count() else '') or \
                    (c.inner_text() if kind == 'button' else '')
            found.append((kind, label.strip() or f'{kind} {i}', c))
    return found


def move(page, kind: str, control) -> str:
    "Change one control the way a reader would; return what was done."
    if kind == 'slider':
        handle = control.locator('.noUi-handle').first
        now, top = (float(handle.get_attribute(a) or 0) for a in ('aria-valuenow', 'aria-valuemax'))
        key = 'ArrowLeft' if now >= top else 'ArrowRight'
        handle.focus(); page.keyboard.press(key); return f"pressed {key}"
    if kind == 'dropdown':
        sel = control.locator('select')
        n, i = sel.evaluate('s => [s.options.length, s.selectedIndex]')
        if n < 2: return ''
        sel.select_option(index=(i + 1) % n); return f"chose option {(i + 1) % n}"
    if kind in ('text', 'textarea'):
        box = control.locator('input, textarea').first
        if box.get_attribute('type') == 'number':
            box.focus(); page.keyboard.press('ArrowUp'); return 'pressed ArrowUp'
        value = box.input_value(); words = value.split()
        options = box.evaluate("b => b.list ? Array.from(b.list.options).map(o => o.value) : []")
        if options:  # a Combobox (ensure_option) accepts only its options: choose another one
            new = next((o for o in options if o != value), value)
        else:
            new = f"{value} {words[-1]}" if words else 'a'  # repeat a word already there: a valid input stays valid
        box.fill(new); box.press('Enter'); return f"typed {new!r}"
    if kind == 'checkbox':
        control.locator('input').click(); return 'toggled'
    if kind in ('toggle', 'radio'):
        opts = control.locator('button, input'); n = opts.count()
        if n < 2: return ''
        sel = [i for i in range(n) if 'mod-active' in (opts.nth(i).get_attribute('class') or '') or opts.nth(i).is_checked()] \
            if kind == 'radio' else [i for i in range(n) if 'mod-active' in (opts.nth(i).get_attribute('class') or '')]
        j = ((sel[0] if sel else 0) + 1) % n; opts.nth(j).click(); return f"chose option {j}"
    if kind == 'button':
        control.click(); return 'clicked'
    return ''


def drive_widgets(page, shots: Path, tag: str, redraw_timeout=REDRAW_TIMEOUT) -> tuple[int, list[str]]:
    """Move every control of every live_widget on the page; return (controls moved, problems found).

    A problem is: a traceback in a widget's output, an output not redrawn after a move, or (for a
    control that carries a value) an output redrawn identical to what it was: stale."""
    shots.mkdir(parents=True, exist_ok=True)
    boxes = page.locator('.jp-OutputArea-output .widget-vbox:has(> .widget-output)')
    problems, moved = [], 0
    for b in range(boxes.count()):
        box = boxes.nth(b); out = box.locator(':scope > .widget-output').first
        box.scroll_into_view_if_needed(); box.screenshot(path=str(shots / f'{tag}-widget{b}-0-before.png'))
        if tracebacks(out): problems.append(f"widget {b}: traceback before any move:\n{tracebacks(out)[0]}")
        for k, (kind, label, control) in enumerate(_controls(box)):
            before = out.evaluate(FINGERPRINT_JS); out.evaluate(MARK_JS)
            did = move(page, kind, control)
            if not did: continue
            moved += 1; what = f"widget {b}, {kind} '{label}' ({did})"
            t0 = time.monotonic(); redrawn = changed = False
            while time.monotonic() - t0 < redraw_timeout:
                redrawn = out.evaluate(REDRAWN_JS); changed = out.evaluate(FINGERPRINT_JS) != before
                if tracebacks(out) or (redrawn and (changed or kind == 'button')): break
                page.wait_for_timeout(250)
            page.wait_for_timeout(300)  # let a redraw that is still arriving land before the screenshot
            box.screenshot(path=str(shots / f'{tag}-widget{b}-{k + 1}-after-{kind}.png'))
            if tracebacks(out): problems.append(f"{what}: traceback in the output:\n{tracebacks(out)[-1]}"); continue
            if not redrawn: problems.append(f"{what}: the output was not redrawn within {redraw_timeout}s (stale display)")
            elif not changed and kind != 'button': problems.append(f"{what}: the output was redrawn identical (stale display)")
    return moved, problems


def check_notebook(page, lab: Lab, src: Path, shots: Path, redraw_timeout=REDRAW_TIMEOUT) -> tuple[int, int, list[str]]:
    "Open a smoke-mode copy of `src`, run it, drive its widgets: (widgets, controls moved, problems)."
    name = lab.add_notebook(src)
    try:
        open_and_run_all(page, lab, name)
        problems = [f"cell output: traceback:\n{t}" for t in tracebacks(page)]
        page.screenshot(path=str(shots / f'{src.stem}-after-run-all.png'))
        n_widgets = page.locator('.jp-OutputArea-output .widget-vbox:has(> .widget-output)').count()
        moved, more = drive_widgets(page, shots, src.stem, redraw_timeout)
        problems += more
        problems += [f"after moving the controls: traceback:\n{t}" for t in tracebacks(page)
                     if not any(t in p for p in problems)]
        return n_widgets, moved, problems
    finally:
        lab.shutdown_kernels()


@pytest.fixture
def shots(output_path) -> Path:
    "Where a test's screenshots go (pytest-playwright's per-test folder under test-results/)."
    p = Path(output_path); p.mkdir(parents=True, exist_ok=True); return p


# --- The tests -------------------------------------------------------------------------------------------

LESSONS = widget_notebooks()


@pytest.mark.parametrize('nb_path', LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_widgets_respond_in_jupyterlab(nb_path, lab, page, shots):
    n_widgets, moved, problems = check_notebook(page, lab, nb_path, shots)
    assert n_widgets > 0, f"{nb_path.name} calls live_widget but no widget appeared in JupyterLab (see {shots})"
    assert moved > 0, f"{nb_path.name}: its widgets have no control the test could move"
    assert not problems, f"{nb_path.name}: " + '\n'.join(problems) + f"\n(screenshots in {shots})"


def test_every_kind_of_control_is_driven(lab, page, shots):
    "A healthy widget with a slider, a float slider, a dropdown, a text box and a button passes, all moved."
    n_widgets, moved, problems = check_notebook(page, lab, HELPERS / 'all_controls.ipynb', shots)
    assert not problems, '\n'.join(problems)
    assert (n_widgets, moved) == (1, 5)


def test_a_raising_callback_fails_the_suite(lab, page, shots):
    "The traceback a live_widget callback shows in the page is reported."
    n_widgets, moved, problems = check_notebook(page, lab, HELPERS / 'raising_widget.ipynb', shots, redraw_timeout=30)
    assert n_widgets == 1 and moved == 1
    assert problems and 'deliberate failure in the callback' in problems[0], problems


def test_a_stale_display_fails_the_suite(lab, page, shots):
    "A plain observe handler that raises shows nothing in the page; the unchanged picture is reported."
    n_widgets, moved, problems = check_notebook(page, lab, HELPERS / 'stale_widget.ipynb', shots, redraw_timeout=10)
    assert n_widgets == 1 and moved == 1
    assert problems and 'stale' in problems[0], problems


def test_breaking_a_lesson_callback_fails_the_suite(lab, page, shots, tmp_path):
    "The real lesson 00_core with its demo widget's callback broken: the lesson check reports it."
    nb = json.loads((REPO / 'nbs' / '00_core.ipynb').read_text())
    cell = next((c for c in nb['cells'] if c['cell_type'] == 'code' and 'def _demo(' in ''.join(c['source'])), None)
    assert cell is not None, "00_core no longer defines its demo widget's callback `_demo`: update this test"
    lines = ''.join(cell['source']).splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith('def _demo('))
    lines.insert(i + 1, "    if n != 4: raise RuntimeError('deliberately broken callback')")
    cell['source'] = '\n'.join(lines)
    broken = tmp_path / '00_core_broken.ipynb'; broken.write_text(json.dumps(nb))
    n_widgets, moved, problems = check_notebook(page, lab, broken, shots, redraw_timeout=60)
    assert n_widgets >= 1 and moved >= 1
    assert any('deliberately broken callback' in p for p in problems), problems
