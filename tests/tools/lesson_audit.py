"""Audit the shape of every lesson (issue #30): what a reader meets on the first screen and in the outputs.

    python tests/tools/lesson_audit.py [--execute] [--dir DIR] [--details] [LESSON ...]

LESSON is a stem or a prefix (`00`, `05a`, `08_diffusion`); none means every lesson `nbs/NN*_*.ipynb` but the tour.
The audit reads smoke-executed copies of the lessons from DIR (default `$VTD_EXECUTED_DIR`, else
`.pytest_cache/d/vtd-smoke-executed` in the repository, where `tests/test_notebooks.py` leaves them);
`--execute` runs the stale or missing ones first with papermill (`smoke=True`, matplotlib's inline backend,
so figures are saved as images). A copy is current when its cells' sources are the lesson's and it was run on
the library as it is now (a hash of `vtd/*.py`, stored in the copy's metadata by `execute`). Without a current
copy only the source checks are made.

It prints one row per lesson, then (with `--details`, or always for findings that need a person) the list:

- **first figure**: the source cell index (papermill's injected cell not counted) of the first cell whose
  output holds an image (`image/png`, `image/svg+xml`), and whether it is on the *first screen*: the cells
  before the first `## ` heading (the title, the "What you will learn / What you need / Time" header, the
  set-up and one picture; a lesson's first section starts its teaching).
- **header**: the first screen states *What you will learn*, *What you need* and *Time:*.
- **undefined terms**: terms of `TERMS` whose first use in the prose (markdown cells) comes without a
  definition: one of the term's definition patterns, or a link to the glossary whose text names the term,
  in the same cell. The first screen counts as one cell (the title may name a term the header defines).
- **progress bars per cell**: tqdm bars left in a cell's outputs (widgets, or text bars on stderr); the
  most in any one cell, and the cells with more than one.
- **object reprs** (`<... at 0x...>`), **local paths** (`/tmp/`, `/home/`, `/work/`, `/root/`, `/Users/`),
  **warnings** (a `...Warning:` in any output): each with its cells.
- **printed twice**: a cell whose value (`execute_result`) repeats numbers its printed text already showed,
  or a line of numbers printed by two cells.
- **prose numbers** (manual review, a heuristic): numbers in a markdown cell (outside code spans, maths,
  links and lesson numbers) that appear in no output and no code of the lesson: a sentence that states a
  measured figure should be printed by the code that measures it.
- **non-concluding prose and unopenable references**: "read the numbers"-style sentences, and references
  the reader cannot open (an issue number, a seed's issue or file).
"""
from __future__ import annotations

import argparse, json, os, re, sys, time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NBS = REPO / 'nbs'
EXECUTED_DIR = Path(os.environ.get('VTD_EXECUTED_DIR') or REPO / '.pytest_cache' / 'd' / 'vtd-smoke-executed')
GLOSSARY_LINK = r'\]\((?:\./)?glossary(?:\.md|\.html)?(?:#[^)]*)?\)'

# term: (pattern of a use, patterns that count as its definition where it is first used). Case matters for
# acronyms (the code's `psnr(` is not prose); a link `[... TERM ...](glossary.md#...)` always counts.
TERMS: dict[str, tuple[str, list[str]]] = {
    'MSE': (r'\bMSE\b', [r'mean squared error', r'mean of (the )?squared']),
    'PSNR': (r'\bPSNR\b', [r'peak signal-to-noise', r'PSNR\s*=']),
    'SSIM': (r'\bSSIM\b', [r'structural similarity']),
    'ELBO': (r'\bELBO\b', [r'evidence lower bound']),
    'KL divergence': (r'\bKL\b', [r'Kullback', r'KL\s*\(', r'divergence']),
    'VAE': (r'\bVAE\b', [r'variational auto-?encoder']),
    'VQ': (r'\bVQ\b', [r'vector[- ]quanti[sz]']),
    'PCA': (r'\bPCA\b', [r'principal component']),
    'IFS': (r'\bIFS\b', [r'iterated function system']),
    'bits per word': (r'(?i)\bbits (per|a|/) ?word', [r'(?i)cross-entropy', r'(?i)log.?2', r'(?i)bits the model']),
    'bits per pixel': (r'(?i)\bbits (per|a|/) ?pixel', [r'(?i)log.?2', r'(?i)divided by', r'(?i)bits? (for|per) (each|every)']),
    'perplexity': (r'(?i)\bperplexit(y|ies)\b', [r'2\s*\^|2\*\*|\$2\^', r'(?i)2 to the power', r'(?i)equally used', r'(?i)\b(exp|power)\b.{0,20}entropy']),
    'codebook': (r'(?i)\bcodebooks?\b', [r'(?i)table of', r'(?i)nearest code', r'(?i)codebook (is|of) \S+ (vectors|codes|entries)',
                                         r'(?i)(set|list) of (\S+ )?(vectors|codes)']),
    'k-means': (r'(?i)\bk-means\b', [r'(?i)nearest cent', r'(?i)mean of (its|the) (points|members)', r'(?i)alternat']),
    'k-medoids': (r'(?i)\bk-medoids?\b|\bmedoids?\b', [r'(?i)one of the (data )?points', r'(?i)an actual (data )?point',
                                                      r'(?i)must be a (data )?point', r'(?i)a data point']),
    'STE': (r'\bSTE\b|(?i:straight-through estimator)', [r'(?i)straight-through estimator.{0,200}gradient|gradient.{0,200}straight-through',
                                              r'\.detach\(\)']),
    'rotary positions': (r'(?i)\brotary\b|\bRoPE\b', [r'(?i)rotat\w* .{0,80}angle', r'(?i)angle proportional']),
    'Fréchet distance': (r'(?i)fr[ée]chet|\bFID\b', [r'(?i)means? and (their )?covariances?', r'(?i)gaussian']),
    'classifier-free guidance': (r'(?i)classifier-free|\bCFG\b', [r'(?i)unconditional', r'(?i)(condition|label) \w* ?dropped']),
    'KV cache': (r'(?i)\bKV cache|key/value cache', [r'(?i)keys and values', r'(?i)key/value']),
    'distinct-n': (r'(?i)\bdistinct-(n|\d)\b', [r'(?i)n-grams', r'(?i)share of .{0,40}different']),
    'Gumbel-softmax': (r'(?i)gumbel', [r'(?i)gumbel noise', r'(?i)differentiable']),
    'AR model': (r'\bAR\b', [r'(?i)auto-?regressive']),
    'DDP': (r'\bDDP\b', [r'(?i)distributed data parallel', r'(?i)several processes']),
    'absorbing diffusion': (r'(?i)\babsorbing\b', [r'\[MASK\]', r'(?i)mask token']),
    'distortion-rate D(R)': (r'\bD\(R\)|(?i:distortion-rate|rate-distortion|water-filling)', [r'(?i)smallest (mean squared )?error',
                                                                                           r'(?i)lower bound', r'(?i)no quantizer']),
    'war story': (r'(?i)\bwar[- ]stor(y|ies)\b', [r'(?i)earlier attempt', r'(?i)write-?ups?\b']),
    'geodesic distance': (r'(?i)\bgeodesic', [r'(?i)shortest path', r'(?i)along (the|a) (graph|manifold|path)']),
}

NON_CONCLUDING = r'(?i)\b(read|see|look at|compare) (the|these) (numbers|figures|results)( above| below)?\b(?! (show|say|give))'
UNOPENABLE = r'(?i)\bissue\s*#?\d+|\bseed \d{3}\'s (issue|file|notebook)|(?<![\w/])#\d{1,3}\b'
OBJECT_REPR = r'<[\w.]+(?: object)? at 0x[0-9a-fA-F]+>'
LOCAL_PATH = r'(?<![\w.])(/tmp/|/home/|/work/|/root/|/Users/|[A-Z]:\\\\Users)'
WARNING = r'\b\w*Warning\b:|^\s*warnings\.warn'
TQDM_TEXT = r'\d+%\|[^|\n]*\||\d+it \[|it/s\]|s/it\]'


def lessons(selected=()) -> list[Path]:
    "The lessons (`nbs/NN*_*.ipynb`, not the tour), or those whose stem starts with one of `selected`."
    paths = [p for p in sorted(NBS.glob('[0-9][0-9]*_*.ipynb')) if not p.stem.startswith('90')]
    return [p for p in paths if not selected or any(p.stem.startswith(s) for s in selected)]


def _text(x) -> str: return x if isinstance(x, str) else ''.join(x)


def source_cells(nb: dict) -> list[dict]:
    "The cells of the lesson's source: papermill's injected parameters cell (and error banner) removed, so indices match `nbs/`."
    added = {'injected-parameters', 'papermill-error-cell-tag'}
    return [c for c in nb['cells'] if not added & set(c.get('metadata', {}).get('tags', []))]


def first_screen_end(cells: list[dict]) -> int:
    "Index of the first markdown cell with a `## ` heading: the first screen is the cells before it."
    for i, c in enumerate(cells):
        if c['cell_type'] == 'markdown' and re.search(r'(?m)^##\s', _text(c['source'])): return i
    return len(cells)


def outputs_text(cell: dict) -> str:
    "Everything a reader sees as text in a code cell's outputs."
    parts = []
    for o in cell.get('outputs', []):
        if o['output_type'] == 'stream': parts.append(_text(o.get('text', '')))
        elif o['output_type'] in ('display_data', 'execute_result'): parts.append(_text(o['data'].get('text/plain', '')))
        elif o['output_type'] == 'error': parts.append(f"{o.get('ename')}: {o.get('evalue')}")
    return '\n'.join(parts)


def has_image(cell: dict) -> bool:
    return any(o['output_type'] in ('display_data', 'execute_result') and
               any(k in o.get('data', {}) for k in ('image/png', 'image/svg+xml', 'image/jpeg')) for o in cell.get('outputs', []))


def progress_bars(cell: dict) -> int:
    "tqdm bars left in a cell's outputs: widget outputs whose text is a bar, and text bars (one per `\\n`-ended run of `\\r` redraws) on stderr."
    n = 0
    for o in cell.get('outputs', []):
        if o['output_type'] in ('display_data', 'execute_result'):
            d = o.get('data', {})
            if 'application/vnd.jupyter.widget-view+json' in d and re.search(TQDM_TEXT, _text(d.get('text/plain', ''))): n += 1
        elif o['output_type'] == 'stream' and o.get('name') == 'stderr':
            n += sum(1 for line in re.split(r'\n', _text(o.get('text', ''))) if re.search(TQDM_TEXT, line))
    return n


def _prose(md: str) -> str:
    "Markdown without code spans, maths, link targets and HTML tags: the words a reader reads."
    md = re.sub(r'```.*?```', ' ', md, flags=re.S)
    md = re.sub(r'`[^`]*`', ' ', md)
    md = re.sub(r'\$\$.*?\$\$|\$[^$\n]*\$', ' ', md, flags=re.S)
    md = re.sub(r'\]\([^)]*\)', ']', md)
    return re.sub(r'<[^>]+>', ' ', md)


def defines(text: str, term: str) -> bool:
    use, defs = TERMS[term]
    if any(re.search(d, text) for d in defs): return True
    # a glossary link whose text names the term
    return any(re.search(use, m.group(1)) for m in re.finditer(r'\[([^\]]*)' + GLOSSARY_LINK, text))


def undefined_terms(cells: list[dict]) -> list[tuple[str, int]]:
    "(term, cell) for each term whose first use in the prose comes without its definition in that cell."
    end = first_screen_end(cells)
    units = [(0, '\n'.join(_text(c['source']) for c in cells[:end] if c['cell_type'] == 'markdown'))]
    units += [(i, _text(c['source'])) for i, c in enumerate(cells) if i >= end and c['cell_type'] == 'markdown']
    found = []
    for term, (use, _) in TERMS.items():
        for i, text in units:
            if re.search(use, _prose(text)) or re.search(use, text):
                if not defines(text, term): found.append((term, i))
                break
    return found




def _numbers(text: str) -> set[str]:
    out = set()
    for m in re.finditer(r'\d+(?:\.\d+)?', text.replace('−', '-')):
        out.add(m.group(0))
    return out


def prose_numbers(cells: list[dict]) -> list[tuple[int, str]]:
    """(cell, number) for numbers in markdown that no output and no code of the lesson contains.
    Skipped: lesson numbers (`lesson 03`, `(06)`), numbers under 10 without a decimal point, years, and the first
    screen's time line (it comes from the record of full runs)."""
    shown = set()
    for c in cells:
        if c['cell_type'] == 'code': shown |= _numbers(outputs_text(c)) | _numbers(_text(c['source']))
    found = []
    for i, c in enumerate(cells):
        if c['cell_type'] != 'markdown': continue
        text = _prose(_text(c['source']))
        text = re.sub(r'(?m)^\*\*Time:\*\*.*$', ' ', text)
        text = re.sub(r'(?i)\b(lessons?|notebooks?|seeds?|cells?|issues?|exercises?|sections?|chapters?|steps? \d+ (and|to|-))\s+\d+\w*((,\s*|\s+(and|or|to)\s+|[–-])\d+\w*)*', ' ', text)
        text = re.sub(r'\((?:\d\d\w?(?:,\s*)?)+\)', ' ', text)          # (02, 04): the lessons an entry is about
        text = re.sub(r'\b(1[89]|20)\d\d\b', ' ', text)                 # years
        for m in re.finditer(r'(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?![\w])', text):
            num = m.group(0).replace(',', '')
            if '.' not in num and float(num) < 10: continue
            variants = {num, num.rstrip('0').rstrip('.') if '.' in num else num}
            if not variants & shown: found.append((i, m.group(0)))
    return found


@dataclass
class Audit:
    lesson: str
    executed: bool
    first_screen_end: int
    header_missing: list[str]
    figure_cell_in_source: int | None          # a code cell that draws (plt., show_images, ...), from the source alone
    first_figure: int | None = None            # the first cell whose outputs hold an image (executed copy)
    undefined: list = field(default_factory=list)
    bars: dict = field(default_factory=dict)   # cell -> progress bars left in its outputs
    reprs: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    twice: list = field(default_factory=list)
    numbers: list = field(default_factory=list)
    non_concluding: list = field(default_factory=list)
    unopenable: list = field(default_factory=list)

    @property
    def figure_on_first_screen(self) -> bool:
        cell = self.first_figure if self.executed else self.figure_cell_in_source
        return cell is not None and cell < self.first_screen_end

    @property
    def max_bars(self) -> int: return max(self.bars.values(), default=0)


DRAWS = r'\bplt\.\w+\(|\bshow_\w+\(|\.imshow\(|\bplot_\w+\(|\.plot\(|\blive_widget\('


def audit(nb: dict, lesson: str, executed: bool) -> Audit:
    cells = source_cells(nb)
    end = first_screen_end(cells)
    head = '\n'.join(_text(c['source']) for c in cells[:end] if c['cell_type'] == 'markdown')
    missing = [name for name, pat in (('what you will learn', r'(?i)what you will learn'), ('what you need', r'(?i)what you need'),
                                      ('time', r'(?i)\*\*time:?\*\*'))
               if not re.search(pat, head)]
    code = lambda c: '\n'.join(l for l in _text(c['source']).splitlines() if not re.match(r'\s*(import|from)\s', l))
    draws = next((i for i, c in enumerate(cells) if c['cell_type'] == 'code' and re.search(DRAWS, code(c))), None)
    a = Audit(lesson, executed, end, missing, draws, undefined=undefined_terms(cells))
    for i, c in enumerate(cells):
        if c['cell_type'] == 'markdown':
            text = _text(c['source'])
            a.non_concluding += [(i, m.group(0)) for m in re.finditer(NON_CONCLUDING, _prose(text))]
            a.unopenable += [(i, m.group(0)) for m in re.finditer(UNOPENABLE, _prose(text))]
    a.numbers = prose_numbers(cells) if executed else []
    if not executed: return a
    lines_seen: dict[str, int] = {}
    for i, c in enumerate(cells):
        if c['cell_type'] != 'code': continue
        if a.first_figure is None and has_image(c): a.first_figure = i
        out = outputs_text(c)
        if (n := progress_bars(c)): a.bars[i] = n
        a.reprs += [(i, m.group(0)) for m in re.finditer(OBJECT_REPR, out)]
        a.paths += [(i, line.strip()[:120]) for line in out.splitlines() if re.search(LOCAL_PATH, line)]
        a.warnings += [(i, line.strip()[:120]) for line in out.splitlines() if re.search(WARNING, line)]
        printed = '\n'.join(_text(o.get('text', '')) for o in c.get('outputs', []) if o['output_type'] == 'stream' and o.get('name') == 'stdout')
        value = '\n'.join(_text(o['data'].get('text/plain', '')) for o in c.get('outputs', []) if o['output_type'] == 'execute_result')
        decimals = lambda s: set(re.findall(r'\d+\.\d+', s))
        if value and printed and len(decimals(value) & decimals(printed)) >= 2:
            a.twice.append((i, 'its value repeats numbers it printed: ' + value.strip().splitlines()[0][:80]))
        for line in {l.strip() for l in printed.splitlines()}:
            if len(line) >= 20 and re.search(r'\d\.\d', line) and not re.search(TQDM_TEXT, line):
                if line in lines_seen and lines_seen[line] != i: a.twice.append((i, f'also printed by cell {lines_seen[line]}: {line[:80]}'))
                lines_seen.setdefault(line, i)
    return a


# --- executed copies ---

def _sources(nb: dict) -> list[str]: return [_text(c['source']) for c in source_cells(nb)]


def library_stamp(nb: dict) -> dict:
    "What lesson `nb` reaches of the library (vtd.tour's fingerprint, one hash per definition): a smoke copy is current only while this is unchanged."
    from vtd.tour import library_fingerprint
    return library_fingerprint(nb, REPO / 'vtd')


def executed_copy(path: Path, directory: Path = EXECUTED_DIR) -> dict | None:
    "The smoke-executed copy of the lesson at `path` in `directory`, or None where it is missing or stale."
    copy = directory / path.name
    if not copy.exists(): return None
    nb, source = json.loads(copy.read_text()), json.loads(path.read_text())
    if nb.get('metadata', {}).get('lesson_audit', {}).get('library') != library_stamp(source): return None
    return nb if _sources(nb) == _sources(source) else None


def stamp(copy: Path, library: dict):
    "Mark an executed copy as run on the library definitions fingerprinted by `library` (see `library_stamp`)."
    nb = json.loads(copy.read_text())
    nb.setdefault('metadata', {})['lesson_audit'] = {'library': library}
    copy.write_text(json.dumps(nb, indent=1, ensure_ascii=False))


def execute(path: Path, directory: Path = EXECUTED_DIR, timeout: int = 600) -> dict:
    "Run the lesson in smoke mode with papermill into `directory` (figures as images: matplotlib's inline backend)."
    import papermill as pm, tempfile
    directory.mkdir(parents=True, exist_ok=True)
    library = library_stamp(json.loads(path.read_text()))   # taken before the run: a library edited while it runs leaves the copy stale
    old = {k: os.environ.get(k) for k in ('MPLBACKEND', 'VTD_RESULTS_DIR')}
    os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'   # the kernel inherits it: figures become PNGs
    os.environ['VTD_RESULTS_DIR'] = old['VTD_RESULTS_DIR'] or tempfile.mkdtemp(prefix='vtd-audit-results-')
    try:
        pm.execute_notebook(str(path), str(directory / path.name), parameters={'smoke': True}, kernel_name='python3',
                            cwd=str(path.parent), progress_bar=False, execution_timeout=timeout)
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    stamp(directory / path.name, library)
    return json.loads((directory / path.name).read_text())


def audit_lesson(path: Path, directory: Path = EXECUTED_DIR, run: bool = False, timeout: int = 600) -> Audit:
    nb = executed_copy(path, directory)
    if nb is None and run: nb = execute(path, directory, timeout)
    return audit(nb if nb is not None else json.loads(path.read_text()), path.stem, nb is not None)


# --- the report ---

def _cells(pairs) -> str:
    cells = sorted({i for i, *_ in pairs})
    return f"{len(pairs)} (cells {', '.join(map(str, cells[:6]))}{', ...' if len(cells) > 6 else ''})" if pairs else '0'


def table(audits: list[Audit]) -> str:
    rows = ['| lesson | first figure (first screen: cells 0-N) | header | terms used before defined | '
            'progress bars (most in a cell; cells with >1) | object reprs | local paths | warnings | printed twice | '
            'prose numbers not printed (review) | "read the numbers" / unopenable refs |',
            '|' + '---|' * 11]
    for a in audits:
        if not a.executed:
            fig = (f"no run; draws in cell {a.figure_cell_in_source} ({'yes' if a.figure_on_first_screen else '**no**'}: 0-{a.first_screen_end - 1})"
                   if a.figure_cell_in_source is not None else 'no run; no drawing cell')
        elif a.first_figure is None: fig = '**none**'
        else: fig = f"{a.first_figure} ({'yes' if a.figure_on_first_screen else '**no**'}: 0-{a.first_screen_end - 1})"
        bars = (f"{a.max_bars}; " + (', '.join(f"{i}: {n}" for i, n in sorted(a.bars.items()) if n > 1) or '-')) if a.executed else 'n/a'
        terms = ', '.join(f"{t} ({i})" for t, i in a.undefined) or '-'
        dash = lambda pairs: _cells(pairs) if a.executed else 'n/a'
        rows.append(f"| {a.lesson} | {fig} | {'ok' if not a.header_missing else 'missing ' + ', '.join(a.header_missing)} | {terms} | {bars} | "
                    f"{dash(a.reprs)} | {dash(a.paths)} | {dash(a.warnings)} | {dash(a.twice)} | {dash(a.numbers)} | "
                    f"{len(a.non_concluding)} / {len(a.unopenable)} |")
    return '\n'.join(rows)


def details(a: Audit) -> str:
    out = [f"### {a.lesson}" + ('' if a.executed else ' (source only: no executed copy)')]
    for name, pairs in (('object reprs', a.reprs), ('local paths', a.paths), ('warnings', a.warnings), ('printed twice', a.twice),
                        ('prose numbers in no output or code (review)', a.numbers), ('"read the numbers"', a.non_concluding),
                        ('unopenable references', a.unopenable)):
        if pairs: out.append(f"- {name}: " + '; '.join(f"cell {i}: {s!r}" for i, s in pairs[:12]) + (' ...' if len(pairs) > 12 else ''))
    if a.undefined: out.append('- terms used before they are defined: ' + ', '.join(f"{t} (cell {i})" for t, i in a.undefined))
    if a.header_missing: out.append(f"- first screen lacks: {', '.join(a.header_missing)}")
    return '\n'.join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('lessons', nargs='*', help='stems or prefixes (default: every lesson)')
    ap.add_argument('--dir', type=Path, default=EXECUTED_DIR, help='where the smoke-executed copies are (and go)')
    ap.add_argument('--execute', action='store_true', help='run the missing or stale lessons first (papermill, smoke mode)')
    ap.add_argument('--details', action='store_true', help='list every finding, not only the table')
    ap.add_argument('--timeout', type=int, default=600, help='seconds a cell may run (with --execute)')
    args = ap.parse_args(argv)
    audits = []
    for path in lessons(args.lessons):
        t0 = time.perf_counter()
        audits.append(audit_lesson(path, args.dir, args.execute, args.timeout))
        print(f"{path.stem}: audited in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(table(audits))
    if args.details: print('\n' + '\n\n'.join(details(a) for a in audits))
    return audits


if __name__ == '__main__':
    main()
