"""Seconds per lesson for the tour's full settings on a chosen device (issue 20's measurement; not a timed test).

Each lesson runs as `vtd-tour --full` runs it (papermill, `smoke=False`, the given `device`), one after
another, and the script writes a table of seconds per lesson, with the machine it ran on:

    python tests/benchmarks/tour_times.py --device cuda              # every lesson, full settings, on the GPU
    python tests/benchmarks/tour_times.py --device cpu --only 00,01   # some lessons (names containing these)
    python tests/benchmarks/tour_times.py --device cpu --only 00 --smoke   # a quick check that it runs

Writes `tour_times_<device>.json` (every run, with its status and recorded figures) and `tour_times.md` to
`--out` (default `tests/benchmarks/results/`, ignored by git). The Markdown table has one column of seconds
per device measured into that folder, so a CPU run and a GPU run end up side by side. A lesson that fails
is listed with its error; its seconds are then not a full run's.
"""
import argparse, json, sys, time
from pathlib import Path

from vtd.tour import find_notebooks, machine_info, repo_root, run_notebook

REPO = Path(__file__).resolve().parents[2]


def times_table(folder: Path) -> str:
    "Seconds per lesson, one column per device measured into `folder`."
    runs = {p.stem.removeprefix('tour_times_'): json.loads(p.read_text()) for p in sorted(folder.glob('tour_times_*.json'))}
    lessons = sorted({r['notebook'] for d in runs.values() for r in d['runs']})
    head = '| lesson | ' + ' | '.join(f"{dev} ({d['machine']['device_name']}, {d['mode']}) s" for dev, d in runs.items()) + ' |'
    lines = [head, '|---|' + '---:|' * len(runs)]
    for nb in lessons:
        cells = []
        for d in runs.values():
            r = next((r for r in d['runs'] if r['notebook'] == nb), None)
            cells.append('' if r is None else f"{r['seconds']:.1f}" + ('' if r['ok'] else ' (FAILED)'))
        lines.append(f"| `{Path(nb).stem}` | " + ' | '.join(cells) + ' |')
    totals = [f"**{sum(r['seconds'] for r in d['runs']):.1f}**" for d in runs.values()]
    lines.append('| total | ' + ' | '.join(totals) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (passed to every lesson)')
    ap.add_argument('--only', default=None, help='lessons whose file name contains one of these (comma-separated)')
    ap.add_argument('--smoke', action='store_true', help='the smoke settings instead (to check the script runs)')
    ap.add_argument('--out', type=Path, default=REPO / 'tests' / 'benchmarks' / 'results')
    ap.add_argument('--nbs', type=Path, default=None, help="folder of lessons (default: the repository's nbs/)")
    ap.add_argument('--timeout', type=int, default=None, help='per-cell timeout in seconds')
    a = ap.parse_args(argv)
    nbs = [p for p in find_notebooks(a.nbs or repo_root(REPO) / 'nbs') if not a.only or any(s and s in p.name for s in a.only.split(','))]
    if not nbs: print('no lesson matched', file=sys.stderr); return 2
    machine, mode = machine_info(a.device), 'smoke' if a.smoke else 'full'
    print(f"tour_times: {len(nbs)} lessons, {mode} settings, device {machine['device']} ({machine['device_name']}, {machine['cores']} cores)", flush=True)
    runs, work = [], a.out / f"executed_{machine['device'].replace(':', '_')}"
    for nb in nbs:
        r = run_notebook(nb, work, smoke=a.smoke, device=a.device, timeout=a.timeout)
        print(f"  {nb.stem:<20} {r['seconds']:8.1f} s  {'ok' if r['ok'] else 'FAILED: ' + str(r['error'])}", flush=True)
        runs.append(r)
    a.out.mkdir(parents=True, exist_ok=True)
    dev = machine['device'].replace(':', '_')
    (a.out / f'tour_times_{dev}.json').write_text(json.dumps({'machine': machine, 'mode': mode, 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                                                             'runs': runs}, indent=1))
    table = times_table(a.out)
    (a.out / 'tour_times.md').write_text(table + '\n')
    print('\n' + table)
    return 0 if all(r['ok'] for r in runs) else 1


if __name__ == '__main__':
    sys.exit(main())
