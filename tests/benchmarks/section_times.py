"""Where a lesson's time goes: seconds and share per markdown section (issue 32's per-section timing table).

Runs one lesson with papermill exactly as `vtd-tour` runs it (parameters `smoke`, `device`), then reads each code
cell's `papermill.duration` from the executed notebook and adds them up per section. A section starts at a
markdown cell with a `##` heading (`--level 3` splits at `###` too) and runs to the next one; cells before the
first heading are counted under the lesson's title. Also lists the slowest cells (index, section, first line).

    python tests/benchmarks/section_times.py nbs/03_vq.ipynb              # smoke settings (quick)
    python tests/benchmarks/section_times.py nbs/08_diffusion.ipynb --full --device cpu
    python tests/benchmarks/section_times.py --executed tour_output/08_diffusion.ipynb   # an already executed copy, no run

Prints a Markdown table; `--json FILE` also writes the rows. The kernel's start-up and papermill's own overhead
are not in any cell: the table says how much of the wall time the cells account for. On a shared machine the
seconds are rough; the shares are steadier.
"""
import argparse, json, re, sys, tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _heading(src: str, level: int) -> str | None:
    "The first heading of level 2..`level` in a markdown cell's source (without the #s), else None."
    for line in src.splitlines():
        m = re.match(r'^(#{2,%d})\s+(.*\S)' % level, line)
        if m: return m.group(2)
    return None


def _title(cells) -> str:
    for c in cells:
        if c['cell_type'] == 'markdown':
            m = re.search(r'^#\s+(.*\S)', ''.join(c['source']), flags=re.M)
            if m: return m.group(1)
    return '(before the first section)'


def section_times(nb: dict, level: int = 2) -> tuple[list[dict], list[dict]]:
    "Per-section rows {'section', 'cells', 'seconds', 'share'} in order, and per-cell rows {'index', 'section', 'seconds', 'first_line'}."
    cells = nb['cells']
    section, order, acc, per_cell = _title(cells), [], {}, []
    for i, c in enumerate(cells):
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        if c['cell_type'] == 'markdown':
            h = _heading(src, level)
            if h: section = h
            continue
        if c['cell_type'] != 'code': continue
        secs = (c.get('metadata', {}).get('papermill', {}) or {}).get('duration')
        if secs is None: continue  # not executed (or not by papermill)
        if section not in acc: order.append(section); acc[section] = [0, 0.0]
        acc[section][0] += 1; acc[section][1] += secs
        first = next((l for l in src.splitlines() if l.strip() and not l.startswith('#|')), '')
        per_cell.append({'index': i, 'section': section, 'seconds': secs, 'first_line': first[:70]})
    total = sum(v[1] for v in acc.values()) or 1.0
    rows = [{'section': s, 'cells': acc[s][0], 'seconds': acc[s][1], 'share': acc[s][1] / total} for s in order]
    return rows, per_cell


def markdown_table(name: str, rows: list[dict], per_cell: list[dict], wall: float | None, top: int = 8) -> str:
    cell_total = sum(r['seconds'] for r in rows)
    lines = [f"### {name}: seconds per section", '', '| section | code cells | seconds | share |', '|---|---:|---:|---:|']
    lines += [f"| {r['section']} | {r['cells']} | {r['seconds']:.1f} | {r['share']:.0%} |" for r in rows]
    lines.append(f"| **all cells** | {sum(r['cells'] for r in rows)} | **{cell_total:.1f}** | 100% |")
    if wall is not None:
        lines += ['', f"Wall time of the run: {wall:.1f} s (cells: {cell_total:.1f} s; the rest is kernel start-up and papermill)."]
    slow = sorted(per_cell, key=lambda r: -r['seconds'])[:top]
    lines += ['', f"Slowest {len(slow)} cells:", '', '| cell | section | seconds | share | first line |', '|---:|---|---:|---:|---|']
    pipe = '\\|'  # a literal | inside a Markdown table cell
    lines += [f"| {r['index']} | {r['section']} | {r['seconds']:.1f} | {r['seconds'] / (cell_total or 1):.0%} | `{r['first_line'].replace('|', pipe)}` |" for r in slow]
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('notebook', nargs='?', type=Path, help='the lesson to run (e.g. nbs/08_diffusion.ipynb)')
    ap.add_argument('--full', action='store_true', help="the lesson's full settings (default: smoke)")
    ap.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (passed to the lesson)')
    ap.add_argument('--executed', type=Path, default=None, help='read this already executed notebook instead of running one')
    ap.add_argument('--out', type=Path, default=None, help='keep the executed notebook in this folder (default: a temporary one)')
    ap.add_argument('--level', type=int, default=2, choices=(2, 3, 4), help='split at headings up to this level (default 2: ##)')
    ap.add_argument('--top', type=int, default=8, help='how many of the slowest cells to list')
    ap.add_argument('--timeout', type=int, default=None, help='per-cell timeout in seconds')
    ap.add_argument('--json', type=Path, default=None, help='also write the rows to this JSON file')
    a = ap.parse_args(argv)
    if (a.notebook is None) == (a.executed is None):
        ap.error('give a lesson to run, or --executed NOTEBOOK to read one already run (not both)')
    wall, mode = None, None
    if a.executed:
        if not a.executed.exists(): ap.error(f'no such notebook: {a.executed}')
        executed = a.executed
    else:
        if not a.notebook.exists(): ap.error(f'no such notebook: {a.notebook}')
        from vtd.tour import run_notebook
        out = a.out or Path(tempfile.mkdtemp(prefix='section_times_'))
        mode = 'full' if a.full else 'smoke'
        print(f"section_times: running {a.notebook.name} ({mode} settings, device {a.device}) -> {out}/", file=sys.stderr, flush=True)
        r = run_notebook(a.notebook, out, smoke=not a.full, device=a.device, timeout=a.timeout)
        wall = r['seconds']
        if not r['ok']: print(f"section_times: the run FAILED ({r['error']}); the table covers the cells that ran", file=sys.stderr)
        executed = out / a.notebook.name
        if not executed.exists(): print('section_times: papermill wrote no notebook', file=sys.stderr); return 1
    nb = json.loads(executed.read_text(encoding='utf-8'))
    rows, per_cell = section_times(nb, a.level)
    if not per_cell: print(f"section_times: no cell of {executed} carries papermill's durations (was it run by papermill?)", file=sys.stderr); return 1
    name = executed.stem + (f' ({mode})' if mode else '')
    print(markdown_table(name, rows, per_cell, wall, a.top))
    if a.json:
        a.json.write_text(json.dumps({'notebook': executed.name, 'mode': mode, 'wall_seconds': wall, 'sections': rows, 'cells': per_cell}, indent=1))
    return 0 if a.executed or r['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
