"""Masked diffusion and block diffusion against the autoregressive baseline at equal wall-clock budgets, through `vtd train`'s model.

Issue 19's measurement: on TinyShakespeare words (V = 4,000, 64-word sequences), the default `vtd train`
settings (`LMConfig()`) for `--model diffusion` and `--model ar`, each trained for the same `--minutes` of
wall clock (validation included, as `vtd train --minutes` counts it). Then, for both: held-out bits per word (the
diffusion bound with `--n-t` times per sequence; the AR likelihood exactly) with the unigram floor and the share
of the unigram-to-AR gap the diffusion model closes (lesson 08 reached 0.42 after 3.5 minutes; the issue's goal is
2/3 at 20 minutes), training tokens/s, generation words/s at 8/32/128 steps at batch 1 and 64 against the AR
sampler with its key/value cache, prompt adherence (the share of samples whose start is the prompt exactly), and
infill quality (4 blanks per held-out sequence filled by the diffusion model, judged by the AR model's bits per
sequence against the true words and against unigram fills).

Issue 29's rows: block diffusion (`--model block`) at each `--block-sizes` (default 4 and 16), trained for the same
minutes: held-out bits per word (its bound), the share of the unigram-to-AR gap it closes (goal >= 90% at 20 minutes),
generation words/s at batch 1 and 64 for each of `--block-steps` reverse steps per block (goal at batch 64: >= half of
the AR model's words/s), and for every sampler setting the AR model's bits per word of the batch-64 samples (a
judge of sample quality: lower is likelier under the AR model; the AR model's own samples give the reference).

    python tests/benchmarks/lm_budget.py --minutes 5 20     # the issue's budgets (about 2 x 25 minutes plus measuring)
    python tests/benchmarks/lm_budget.py --minutes 1        # a check that it runs
    python tests/benchmarks/lm_budget.py --minutes 0.5 --n-eval 64 --steps 8 --block-steps 1 4   # the quickest check

Writes `lm_budget.json` and README's tables (`lm_budget.md`; `--table-from JSON` reprints them) to `--out` (default `tests/benchmarks/results/`, ignored by git) and prints a table.
"""
import argparse, json, math, time
from pathlib import Path

import torch

from vtd.core import get_device
from vtd.data import load_text_corpus
from vtd.diffusion import categorical
from vtd.autoregressive import ar_heldout_bits
from vtd.lm import LMConfig, VisualTokenLM, as_sequences, split_corpus


def timed(fn):
    t0 = time.perf_counter(); out = fn(); return out, time.perf_counter() - t0


def measure(lm, ar, held_text, n_t, n_eval, speed_batches, step_list, seed=0):
    "One model's row: held-out bits, prompt adherence, words/s per (steps, batch), the AR model's bits of its batch-64 samples."
    cfg = lm.cfg
    ids = lm.tokenizer.encode(held_text)
    seqs = as_sequences(ids, cfg.seq_len)[:n_eval]
    r = lm.heldout_bits(seqs, n_t=n_t)
    name = cfg.model if cfg.model != 'block' else f"block {cfg.block_size}"
    print(f"  {name}: held-out {r['bits_per_token']:.3f} ± {r['stderr']:.3f} bits/word on {len(seqs)} sequences", flush=True)
    row = dict(bits_per_word=r['bits_per_token'], stderr=r['stderr'], tokens_per_s=lm.history['tokens_per_s'][-1],
               steps=lm.history['steps'], epochs=lm.history['epoch'][-1])
    prompt = "first citizen : before we proceed any further , hear me speak ."
    p = lm.encode_prompt(prompt)
    kept = lm.sample(prompt, length=cfg.seq_len, steps=32, num_samples=32, seed=seed)['tokens']
    row['prompt_kept'] = (kept[:, :len(p)] == p).all(1).float().mean().item()
    speed, judged = {}, {}
    for bs in speed_batches:
        for S in (['kv-cache'] if cfg.model == 'ar' else step_list):
            r, sec = timed(lambda: lm.sample(length=cfg.seq_len, steps=S if S != 'kv-cache' else 1, num_samples=bs, seed=seed))
            speed[f"{S}@{bs}"] = bs * cfg.seq_len / sec
            if bs == max(speed_batches):    # the AR model's bits per word of these samples (its own: the reference)
                judged[f"{S}@{bs}"] = ar_heldout_bits(ar.net, r['tokens'].to(ar.device))['bits_per_token']
            print(f"  {name} generation, {S} steps{' per block' if cfg.model == 'block' else ''}, batch {bs}: {speed[f'{S}@{bs}']:,.0f} words/s"
                  + (f", AR bits/word of the samples {judged[f'{S}@{bs}']:.2f}" if f"{S}@{bs}" in judged else ''), flush=True)
    row['words_per_s'], row['ar_bits_of_samples'] = speed, judged
    if cfg.model == 'diffusion':
        g = torch.Generator().manual_seed(seed)
        holes = torch.stack([torch.randperm(cfg.seq_len // 2, generator=g)[:4] + cfg.seq_len // 4 for _ in seqs])
        x_init = seqs.clone().scatter_(1, holes, lm.process.mask_id)
        filled = lm.sample(length=cfg.seq_len, steps=4, sampler='maskgit', num_samples=len(seqs), x_init=x_init, seed=seed)['tokens']
        uni = seqs.clone().scatter_(1, holes, categorical(lm.unigram().cpu().expand(len(seqs), 4, -1), g))
        judge = lambda x: ar_heldout_bits(ar.net, x.to(ar.device))['bits_per_token'] * cfg.seq_len
        row['infill'] = dict(ar_bits_true=judge(seqs), ar_bits_diffusion=judge(filled), ar_bits_unigram=judge(uni),
                             exact=(filled.gather(1, holes) == seqs.gather(1, holes)).float().mean().item())
    return row


def _share(v) -> str:
    "A gap share as a percentage, or 'undefined' while the AR model is not yet below the unigram floor (lesson 08's rule)."
    return f"{v:.0%}" if v is not None and math.isfinite(v) else 'undefined (the AR model is not below the unigram floor yet)'


LABELS = {'ar': 'autoregressive', 'diffusion': 'masked diffusion (bound)', 'block4': 'block diffusion, 4 (bound)',
          'block16': 'block diffusion, 16 (bound)'}


def markdown_table(report: dict) -> str:
    "README's \"Train your own\" tables from a report: bits per budget and model, generation speed and infill of the first budget."
    out = ["| budget | model | held-out bits/word | gap closed | epochs | training tokens/s | prompt kept |",
           "|---|---|---:|---:|---:|---:|---:|"]
    kinds = lambda b: [k for k in b if isinstance(b[k], dict) and 'bits_per_word' in b[k]]
    for m, b in report['budgets'].items():
        out.append(f"| {m} min | unigram floor | {b['unigram_bits']:.3f} | | | | |")
        for k in kinds(b):
            x = b[k]
            share = b.get('gap_share', {}).get(k, b.get('diffusion_gap_share') if k == 'diffusion' else None)
            gap = '100%' if k == 'ar' else f"{share:.0%}" if share is not None and math.isfinite(share) else 'undefined'
            out.append(f"| {m} min | {LABELS.get(k, k)} | {x['bits_per_word']:.3f} ± "
                       f"{x['stderr']:.3f} | {gap} | {x['epochs']:.1f} | {x['tokens_per_s']:,.0f} | {x['prompt_kept']:.0%} |")
    first = next(iter(report['budgets'])); b = report['budgets'][first]
    bs = sorted({int(key.split('@')[1]) for k in kinds(b) for key in b[k]['words_per_s']})
    out += ["", f"| generation, words/s ({report['config']['seq_len']}-word samples) | " + ' | '.join(f"batch {x}" for x in bs)
            + f" | AR bits/word of batch-{bs[-1]} samples |", "|---|" + "---:|" * (len(bs) + 1)]
    for k in kinds(b):
        ws, jb = b[k]['words_per_s'], b[k].get('ar_bits_of_samples', {})
        for S in dict.fromkeys(key.split('@')[0] for key in ws):
            what = 'key/value cache' if S == 'kv-cache' else f"{S} steps" + (' per block' if k.startswith('block') else '')
            out.append(f"| {LABELS.get(k, k)}, {what} | " + ' | '.join(f"{ws[f'{S}@{x}']:,.0f}" if f'{S}@{x}' in ws else '' for x in bs)
                       + (f" | {jb[f'{S}@{bs[-1]}']:.2f} |" if f'{S}@{bs[-1]}' in jb else ' | |'))
    inf = b['diffusion']['infill']
    for m, goals in report.get('goals', {}).items():   # every budget's goals, the first's first
        if goals: out += ["", "Issue 29's goals at " + f"{m} minutes: " + '; '.join(f"{LABELS.get(k, k)} closes {_share(g['gap_share'])} of the gap "
                          f"(goal 90%), generates at {g['speed_ratio_64']:.2f}x AR's batch-64 words/s at its fastest setting (goal 0.5)" for k, g in goals.items())]
    out += ["", f"Infill ({first}-minute models, 4 blanks in each of {report.get('n_eval', 400)} held-out sequences, judged by the AR "
                f"model's bits per sequence): true words {inf['ar_bits_true']:.1f}, diffusion fills {inf['ar_bits_diffusion']:.1f}, "
                f"unigram fills {inf['ar_bits_unigram']:.1f}; {inf['exact']:.1%} of filled words are the true word."]
    return '\n'.join(out)


def joined(reports: list) -> dict:
    "One report from runs of one budget each (README's tables came from `--minutes 5` and `--minutes 20` run apart, each alone)."
    out = {**reports[0], 'budgets': {}, 'goals': {}}
    for r in reports: out['budgets'].update(r['budgets']); out['goals'].update(r.get('goals', {}))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--minutes', type=float, nargs='+', default=[5.0, 20.0])
    ap.add_argument('--n-t', type=int, default=8)
    ap.add_argument('--n-eval', type=int, default=400)
    ap.add_argument('--speed-batches', type=int, nargs='+', default=[1, 64])
    ap.add_argument('--steps', type=int, nargs='+', default=[8, 32, 128])
    ap.add_argument('--block-sizes', type=int, nargs='*', default=[4, 16], help='block diffusion rows (none: no block rows)')
    ap.add_argument('--block-steps', type=int, nargs='+', default=[1, 2, 4, 16], help='reverse steps per block (at most the block size is used)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results'))
    ap.add_argument('--table-from', metavar='JSON', nargs='+',
                    help="print README's tables from saved lm_budget.json files and exit (several: one run per budget, joined in the order given)")
    a = ap.parse_args(argv)
    if a.table_from: print(markdown_table(joined([json.loads(Path(f).read_text()) for f in a.table_from]))); return None
    device = get_device(a.device)
    text = load_text_corpus('tinyshakespeare').text
    _, held_text = split_corpus(text, LMConfig().valid_fraction)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    report = {'device': str(device), 'torch_threads': torch.get_num_threads(), 'config': LMConfig().asdict(), 'n_eval': a.n_eval,
              'budgets': {}}
    for minutes in a.minutes:
        models = {}
        for kind in ('ar', 'diffusion', *(f"block{k}" for k in a.block_sizes)):
            cfg = LMConfig(model=kind, minutes=minutes) if not kind.startswith('block') else LMConfig(model='block', block_size=int(kind[5:]), minutes=minutes)
            lm = VisualTokenLM.build(text, cfg).to(device)
            print(f"--- {kind}, {minutes:g} minutes: {lm}")
            models[kind] = lm.fit(text, show_progress=False)
        ar = models['ar']
        rows = {k: measure(m, ar, held_text, a.n_t, a.n_eval, a.speed_batches,
                           a.steps if not k.startswith('block') else sorted({min(S, m.cfg.block_size) for S in a.block_steps}))
                for k, m in models.items()}
        s = ar.score(held_text[:200_000], n_t=2)
        uni = s['unigram_bits_per_token']
        gap = uni - rows['ar']['bits_per_word']
        rows['unigram_bits'] = uni
        share = lambda k: (uni - rows[k]['bits_per_word']) / gap if gap > 0 else float('nan')
        rows['diffusion_gap_share'] = share('diffusion')
        rows['gap_share'] = {k: share(k) for k in models if k != 'ar'}
        big = max(a.speed_batches)
        report.setdefault('goals', {})[f"{minutes:g}"] = {
            k: dict(gap_share=share(k), speed_ratio_64=max(v for key, v in rows[k]['words_per_s'].items() if key.endswith(f"@{big}"))
                    / rows['ar']['words_per_s'][f"kv-cache@{big}"]) for k in models if k.startswith('block')}
        report['budgets'][f"{minutes:g}"] = rows
        print(f"\n{minutes:g} minutes on {device} ({torch.get_num_threads()} threads): unigram {uni:.3f} bits/word")
        for k in models:
            r = rows[k]
            print(f"  {k:9s} {r['bits_per_word']:.3f} ± {r['stderr']:.3f} bits/word after {r['steps']} steps ({r['epochs']:.2f} epochs), "
                  f"{r['tokens_per_s']:,.0f} training tokens/s, prompt kept {r['prompt_kept']:.0%}")
            print("            generation words/s: " + ', '.join(f"{k2} {v:,.0f}" for k2, v in r['words_per_s'].items()))
        for k, v in rows['gap_share'].items(): print(f"  {k} closes {_share(v)} of the unigram-to-AR gap")
        inf = rows['diffusion']['infill']
        print(f"  infill (AR bits per sequence): true {inf['ar_bits_true']:.1f}, diffusion fill {inf['ar_bits_diffusion']:.1f}, "
              f"unigram fill {inf['ar_bits_unigram']:.1f}; filled words exactly right {inf['exact']:.1%}")
        (out / 'lm_budget.json').write_text(json.dumps(report, indent=1))
        (out / 'lm_budget.md').write_text(markdown_table(report) + '\n')
    print('\n' + markdown_table(report))
    return report


if __name__ == '__main__':
    main()
