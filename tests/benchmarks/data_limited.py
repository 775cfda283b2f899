"""The data-limited picture of lesson 08, run long: held-out bits per word after every epoch for the
autoregressive transformer and masked diffusion of the same size, on TinyShakespeare words.

Prabhudesai et al. 2025 ("Diffusion beats autoregressive in data-constrained settings") found that
autoregressive models win at low compute and then overfit repeated data, while masked diffusion keeps
improving over many epochs. This script trains both models side by side in one run with lesson 08's
full setting (vocabulary 4,000, sequences of 64 words, 4 layers x 128 with rotary positions, batches
of 32; the autoregressive model with dropout 0.1, weight decay 0.1 and lr 1e-3, masked diffusion
without dropout, lr 3e-3 and the `masked_mean` training loss) for `--epochs` epochs, evaluates both
on the same 400 held-out sequences after every epoch (the diffusion bound with `--n-t` antithetic
times per sequence, its standard error printed), and reports where the curves cross, if they do.
`--no-rope` and `--weighting elbo` undo two of the choices lesson 08 explains.

    python tests/benchmarks/data_limited.py --epochs 32        # about 32 minutes on 2 CPU cores (14 AR + 18 diffusion)
    python tests/benchmarks/data_limited.py --epochs 2 --smoke  # a quick check that it runs
    python tests/benchmarks/data_limited.py --epochs 32 --device cuda

The settings are lesson 08's `TextModelConfig` (`.full()`, or `.smoke()` with `--smoke`).

Writes `data_limited.json` and `data_limited.png` to `--out` (default `tests/benchmarks/results/`, ignored by git).
"""
import argparse, json, math, time
from pathlib import Path

import torch

from vtd.core import batches, fit, get_device, seed_everything
from vtd.data import load_text_corpus, tokenize_words, Vocabulary
from vtd.diffusion import (AbsorbingProcess, TextModelConfig, TokenDenoiser, make_ar_model, ar_loss, ar_heldout_bits,
                           masked_diffusion_loss, heldout_bound)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--epochs', type=int, default=32)
    ap.add_argument('--n-t', type=int, default=8, help='antithetic t-samples per held-out sequence (even)')
    ap.add_argument('--smoke', action='store_true', help='a small model on 25k words: checks that the script runs')
    ap.add_argument('--no-rope', action='store_true', help='learned absolute positions instead of rotary ones (both models)')
    ap.add_argument('--weighting', default='masked_mean', choices=['masked_mean', 'elbo'], help="masked diffusion's training loss")
    ap.add_argument('--device', default='auto', help="'auto' (CUDA, then MPS, then the CPU), 'cpu', 'cuda' or 'mps'")
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results'))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    seed_everything(0)
    device = get_device(args.device)
    cfg = TextModelConfig.preset(args.smoke).replace(epochs=args.epochs, rope=not args.no_rope)

    seq_len = cfg.seq_len
    toks = tokenize_words(load_text_corpus('tinyshakespeare').text)
    if cfg.max_words: toks = toks[:cfg.max_words]
    n_train = int(0.9 * len(toks))
    vocab = Vocabulary.build(toks[:n_train], max_size=cfg.vocab_size); V = len(vocab)
    ids = vocab.encode(toks)
    train_seqs = ids[:n_train // seq_len * seq_len].view(-1, seq_len)
    held = ids[n_train:]; eval_seqs = held[:len(held) // seq_len * seq_len].view(-1, seq_len)[:32 if args.smoke else 400]
    counts = torch.bincount(ids[:n_train], minlength=V).double() + 0.5
    unigram = -(counts / counts.sum()).log2()[eval_seqs].mean().item()
    train_seqs, eval_seqs = train_seqs.to(device), eval_seqs.to(device)   # the data goes to the device once
    print(f"V = {V}, {len(train_seqs)} training sequences of {seq_len} words, {len(eval_seqs)} held out; "
          f"unigram {unigram:.3f} bits/word; {args.epochs} epochs each; device {device}")

    absorbing = AbsorbingProcess(V)
    curves = {}

    def run(name, model, loss_fn, eval_fn, lr, wd):
        gen = torch.Generator().manual_seed(0)
        total = args.epochs * (len(train_seqs) // cfg.batch_size)
        model = model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        sched = torch.optim.lr_scheduler.LambdaLR(  # lesson 08's warm-up and cosine decay to 10%
            opt, lambda s: min(1, (s + 1) / cfg.warmup_steps) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, total) / total))))
        evals = []
        def valid(m):
            r = eval_fn(m); evals.append(r); return r['bits_per_token']
        t0 = time.perf_counter()
        hist = fit(model, loss_fn, batches(train_seqs, batch_size=cfg.batch_size, generator=gen, drop_last=True),
                   epochs=args.epochs, opt=opt, scheduler=sched, valid_fn=valid, keep_best=False, grad_clip=cfg.grad_clip, desc=name)
        curves[name] = dict(bits=[r['bits_per_token'] for r in evals], stderr=[r['stderr'] for r in evals],
                            train_nats=hist['train'], seconds=time.perf_counter() - t0)
        best = min(range(len(evals)), key=lambda e: evals[e]['bits_per_token'])
        print(f"{name}: best {evals[best]['bits_per_token']:.3f} ± {evals[best]['stderr']:.3f} bits/word at epoch {best + 1}, "
              f"last {evals[-1]['bits_per_token']:.3f}; {curves[name]['seconds'] / 60:.1f} min")

    torch.manual_seed(0)
    run('autoregressive', make_ar_model(V, 2 * seq_len, dropout=cfg.ar_dropout, **cfg.model_kw()), lambda m, x: ar_loss(m, x),
        lambda m: ar_heldout_bits(m, eval_seqs), lr=cfg.ar_lr, wd=cfg.ar_weight_decay)
    torch.manual_seed(0)
    loss_gen = torch.Generator().manual_seed(1)
    run('masked diffusion', TokenDenoiser(V, 2 * seq_len, **cfg.model_kw()),
        lambda m, x: masked_diffusion_loss(m, absorbing, x, generator=loss_gen, weighting=args.weighting),
        lambda m: heldout_bound(m, absorbing, eval_seqs, n_t=args.n_t), lr=cfg.diffusion_lr, wd=0.0)

    ar, md = curves['autoregressive'], curves['masked diffusion']
    below = [e + 1 for e in range(args.epochs) if md['bits'][e] < ar['bits'][e]]
    print(f"\n{'epoch':>5} {'autoregressive':>15} {'masked diffusion':>22}")
    for e in range(args.epochs):
        print(f"{e + 1:>5} {ar['bits'][e]:>15.3f} {md['bits'][e]:>13.3f} ± {md['stderr'][e]:.3f}")
    print(f"unigram {unigram:.3f}; best: autoregressive {min(ar['bits']):.3f}, masked diffusion {min(md['bits']):.3f}; "
          f"diffusion below the autoregressive model at epochs {below or 'none'}"
          + (f"; below its best at epochs {[e + 1 for e in range(args.epochs) if md['bits'][e] < min(ar['bits'])] or 'none'}"))

    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'data_limited.json').write_text(json.dumps(dict(args=vars(args), config=cfg.asdict(), device=str(device), V=V, unigram=unigram, curves=curves,
                                                           diffusion_below_ar_at_epochs=below), indent=1))
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(1, args.epochs + 1)
    ax.plot(x, ar['bits'], 'o-', ms=3, label='autoregressive (exact)')
    ax.errorbar(x, md['bits'], yerr=md['stderr'], fmt='s-', ms=3, label='masked diffusion (bound ± s.e.)')
    ax.axhline(unigram, color='gray', ls=':', label='unigram')
    ax.set_xlabel('epoch'); ax.set_ylabel('held-out bits/word'); ax.legend(); fig.tight_layout()
    fig.savefig(out / 'data_limited.png', dpi=120)
    print(f"wrote {out / 'data_limited.json'} and {out / 'data_limited.png'}")
    return curves


if __name__ == '__main__':
    main()
