"""What any-length generation costs: `vtd generate --length 512` from 64-word models, beside 64-word samples.

Issue 28's measurement. Both kinds of `vtd train` model (`LMConfig()`'s sizes: V = 4,000 words, 64-word context,
4 layers of 128; `--small`: 2 layers of 64, V = 2,000) are trained on TinyShakespeare for `--minutes` each, or loaded from
`--checkpoints DIFFUSION.pt AR.pt`. Then, for each model and each length, unprompted samples are timed
(words/s, the whole batch) and judged by the autoregressive model (bits per word of the samples, each cut into
64-word sequences scored from <bos>, as `vtd score` does; lower = likelier under the AR model), with the share of
distinct bigrams (repetition shows as a low share). Past the context the diffusion model writes block after block
(`--block`, default half the context, `--steps` reverse steps per block) and the AR model re-primes its key/value
cache every `--block` tokens; the AR model is also run at block 1 (a full context for every token, as nanoGPT).
The held-out text's own AR bits per word is the reference row.

    python tests/benchmarks/long_samples.py --minutes 2            # about 6 minutes on 2 idle CPU cores
    OMP_NUM_THREADS=1 python tests/benchmarks/long_samples.py --minutes 2 --small   # a busy machine
    python tests/benchmarks/long_samples.py --checkpoints runs/d/best.pt runs/ar/best.pt

Writes `long_samples.json` and `long_samples.md` to `--out` (default `tests/benchmarks/results/`, ignored by git).
"""
import argparse, json, time
from pathlib import Path

import torch

from vtd.core import get_device
from vtd.data import load_text_corpus
from vtd.lm import LMConfig, VisualTokenLM, as_sequences, split_corpus


def distinct_bigrams(tokens: torch.Tensor) -> float:
    "Share of distinct bigrams among all bigrams of the samples `[N, L]` (each sample's own)."
    pairs = [set(zip(t[:-1].tolist(), t[1:].tolist())) for t in tokens]
    return sum(len(p) for p in pairs) / (tokens.shape[0] * (tokens.shape[1] - 1))


def judge(ar: VisualTokenLM, tokens: torch.Tensor) -> float:
    "The AR model's bits per word of samples `[N, L]`, each cut into context-long sequences."
    seqs = torch.cat([as_sequences(t, min(ar.cfg.seq_len, len(t))) for t in tokens])
    return ar.heldout_bits(seqs)['bits_per_token']


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--minutes', type=float, default=2.0, help='training minutes per model (default 2)')
    ap.add_argument('--checkpoints', nargs=2, default=None, metavar=('DIFFUSION', 'AR'), help='trained checkpoints instead')
    ap.add_argument('--small', action='store_true', help='2 layers of 64, V = 2,000 (the 64-word context kept): for a busy CPU')
    ap.add_argument('--lengths', type=int, nargs='+', default=[64, 512])
    ap.add_argument('--num-samples', type=int, default=4)
    ap.add_argument('--steps', type=int, default=32)
    ap.add_argument('--block', type=int, default=None, help='default: half the context')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results'))
    a = ap.parse_args()
    device = get_device(a.device)
    text = load_text_corpus('tinyshakespeare').text
    if a.checkpoints: models = {k: VisualTokenLM.load(p, device=device) for k, p in zip(('diffusion', 'ar'), a.checkpoints)}
    else:
        models = {}
        for kind in ('diffusion', 'ar'):
            cfg = LMConfig(model=kind, **(dict(vocab_size=2000, n_layer=2, n_head=2, n_embd=64) if a.small else {}))
            torch.manual_seed(0)
            lm = VisualTokenLM.build(text, cfg).to(device)
            print(f"training {lm} for {a.minutes} minutes on {device}", flush=True)
            models[kind] = lm.fit(text, minutes=a.minutes, show_progress=False, samples_per_epoch=0, log=lambda *x: None)
            print(f"  {kind}: {lm.history['steps']} steps, held-out {lm.history['best_bits']:.3f} bits/word", flush=True)
    diff, ar = models['diffusion'], models['ar']
    if diff.tokenizer.token_strings() != ar.tokenizer.token_strings(): raise SystemExit("the two models must share a vocabulary")
    S = ar.cfg.seq_len
    block = a.block or S // 2
    _, held = split_corpus(text, ar.cfg.valid_fraction)
    held_ids = ar.tokenizer.encode(held)
    rows = [dict(model='held-out text', length=S, block=None, words_per_s=None,
                 ar_bits_per_word=ar.heldout_bits(as_sequences(held_ids, S)[:64])['bits_per_token'],
                 distinct_bigrams=distinct_bigrams(as_sequences(held_ids, S)[:64]))]
    runs = [('diffusion', diff, block), ('ar', ar, block), ('ar', ar, 1)]
    for kind, lm, b in runs:
        for L in a.lengths:
            if b == 1 and L <= S and (kind, L) in {(r['model'], r['length']) for r in rows}: continue   # the same run: no window slides
            lm.sample(length=8, steps=2, num_samples=1)                                                  # warm-up
            t0 = time.perf_counter()
            tokens = lm.sample(length=L, steps=a.steps, num_samples=a.num_samples, block=b, seed=0)['tokens']
            if device.type == 'cuda': torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            rows.append(dict(model=kind, length=L, block=b if L > S else None, steps=a.steps if kind == 'diffusion' else None,
                             words_per_s=a.num_samples * L / sec, seconds=sec, ar_bits_per_word=judge(ar, tokens),
                             distinct_bigrams=distinct_bigrams(tokens)))
            r = rows[-1]
            print(f"  {kind:9s} {L:4d} words (block {r['block']}): {r['words_per_s']:8.1f} words/s, AR bits/word "
                  f"{r['ar_bits_per_word']:.3f}, distinct bigrams {r['distinct_bigrams']:.3f}", flush=True)
    setup = (f"{'checkpoints ' + ' '.join(a.checkpoints) if a.checkpoints else f'both trained {a.minutes} minutes'}, "
             f"{diff.cfg.n_layer}x{diff.cfg.n_embd}, V = {diff.vocab_size}, context {S}; {a.num_samples} unprompted samples "
             f"per row, seed 0, on {device} ({torch.get_num_threads()} threads)")
    lines = [f"Long samples ({setup}):", '',
             '| samples | length (words) | block | words/s | AR bits/word of the samples | distinct bigrams |', '|---|---|---|---|---|---|']
    for r in rows:
        name = r['model'] if r['model'] != 'diffusion' else f"diffusion ({r['steps']} steps per block)"
        speed = '-' if r['words_per_s'] is None else f"{r['words_per_s']:.1f}"
        lines.append(f"| {name} | {r['length']} | {r['block'] or '-'} | {speed} | {r['ar_bits_per_word']:.3f} | {r['distinct_bigrams']:.3f} |")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'long_samples.json').write_text(json.dumps(dict(setup=setup, rows=rows), indent=1))
    (out / 'long_samples.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__': main()
