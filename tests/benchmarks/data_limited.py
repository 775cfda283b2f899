"""The data-limited regime, honestly: the autoregressive model, masked diffusion and block diffusion trained for many
epochs over a small text, each with the regularisation that serves it best, through `vtd.lm`.

Prabhudesai et al. 2025 ("Diffusion beats autoregressive in data-constrained settings") found that on data repeated
for many epochs the AR model overfits early while masked diffusion keeps improving and can end below it; a later study
found much of that gap closes when AR gets matched regularisation. This script runs `vtd.lm.data_limited_study`: each
model with each (dropout, weight decay) of `--grid`, on the first `--words` words of a corpus, its held-out end cut
into a validation half (which chooses each model's setting: its best epoch's bound) and a test half (scored after
every epoch, the curves reported). Bits per word: the AR likelihood exactly, the diffusion models' bounds (`--n-t`
is not used: each epoch's score draws 2 noise levels per sequence, its standard error recorded). FLOPs: 3x the
forward's (`transformer_flops`), block diffusion reading 2L tokens per sequence.

    python tests/benchmarks/data_limited.py                          # TinyShakespeare (embedded), the recorded run
    python tests/benchmarks/data_limited.py --words 60000 --vocab-size 2000 --n-layer 2 --grid 0,0 0.1,0.1 0.3,0.1 --epochs 40
                                                                     # a larger study (where a GPU or idle cores can be had)
    python tests/benchmarks/data_limited.py --corpus-file kjv.txt --name kjv
    python tests/benchmarks/data_limited.py --smoke                  # a check that it runs (a minute)

The second corpus is the King James Bible from Debian's `bible-kjv-text` package (public domain), decoded with its
`bible` program (package `bible-kjv`), developer-only (the lesson runs on the embedded TinyShakespeare):

    apt-get download bible-kjv-text bible-kjv && for f in bible-kjv*.deb; do dpkg-deb -x $f kjv; done
    kjv/usr/bin/bible -f -p kjv/usr/lib "gen1:1-rev22:21" | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' > kjv.txt

The defaults are sized for 2 shared CPU cores (a few minutes per corpus): 8,000 words, V = 500, one layer of 64,
batches of 8, 30 epochs, a grid of two settings (none; dropout 0.2 with weight decay 0.1).

Writes `data_limited_NAME.json` and `data_limited_NAME.png` to `--out` (default `results/`, tracked: lesson 09
reads `results/data_limited_tinyshakespeare.json` in its full setting) and prints the summary.
"""
import argparse, json, time
from pathlib import Path

import torch

from vtd.data import load_text_corpus, read_corpus
from vtd.lm import LMConfig, data_limited_study, data_limited_summary, plot_data_limited

REPO = Path(__file__).resolve().parents[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--corpus-file', default=None, help='a UTF-8 text file (default: the embedded TinyShakespeare)')
    ap.add_argument('--name', default=None, help="the result's name (default tinyshakespeare, or the file's stem)")
    ap.add_argument('--words', type=int, default=8_000, help='the first N space-separated words of the corpus')
    ap.add_argument('--epochs', type=int, default=30)
    ap.add_argument('--batch-size', type=int, default=8, help='small batches: many steps per epoch, so AR can overfit within minutes')
    ap.add_argument('--models', nargs='+', default=['ar', 'diffusion', 'block'])
    ap.add_argument('--grid', nargs='+', default=['0,0', '0.2,0.1'], help='dropout,weight_decay pairs')
    ap.add_argument('--vocab-size', type=int, default=500)
    ap.add_argument('--seq-len', type=int, default=32)
    ap.add_argument('--n-layer', type=int, default=1)
    ap.add_argument('--n-embd', type=int, default=64)
    ap.add_argument('--block-size', type=int, default=4)
    ap.add_argument('--lr', type=float, default=2e-3, help='the same peak learning rate for every model')
    ap.add_argument('--smoke', action='store_true', help='tiny: 8,000 words, 3 epochs, one setting')
    ap.add_argument('--out', default=str(REPO / 'results'))
    a = ap.parse_args(argv)
    if a.smoke: a.words, a.epochs, a.grid, a.vocab_size, a.seq_len, a.n_layer, a.n_embd = 4000, 3, ['0,0'], 200, 16, 1, 32
    text = read_corpus(a.corpus_file) if a.corpus_file else load_text_corpus('tinyshakespeare').text
    name = a.name or (Path(a.corpus_file).stem if a.corpus_file else 'tinyshakespeare') + ('-smoke' if a.smoke else '')
    text = ' '.join(text.split(' ')[:a.words])
    grid = tuple(tuple(float(v) for v in g.split(',')) for g in a.grid)
    cfg = LMConfig(vocab_size=a.vocab_size, seq_len=a.seq_len, n_layer=a.n_layer, n_head=2, n_embd=a.n_embd, batch_size=a.batch_size,
                   warmup=10, n_valid=64, valid_fraction=0.2, block_size=a.block_size, lr=a.lr)
    t0 = time.perf_counter()
    study = data_limited_study(text, cfg, models=tuple(a.models), epochs=a.epochs, grid=grid)
    summary = data_limited_summary(study)
    study.update(name=name, summary=summary, seconds=time.perf_counter() - t0, torch_threads=torch.get_num_threads(),
                 command='python tests/benchmarks/data_limited.py ' + ' '.join(argv if argv is not None else __import__('sys').argv[1:]))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / f'data_limited_{name}.json').write_text(json.dumps(study, indent=1))
    plot_data_limited(study, f"{name}: {study['n_train_tokens']:,} training words, {a.epochs} epochs").savefig(out / f'data_limited_{name}.png', dpi=100)
    print(f"\n{name}: unigram (test) {study['unigram_test']:.3f} bits/word; {study['seconds'] / 60:.1f} minutes")
    for m, s in summary.items():
        extra = '' if m == 'ar' else (f"; {s['gap_to_ar_at_best']:+.3f} against AR at its best; below the AR curve at epochs "
                                      f"{s['below_ar_curve_at_epochs'] or 'none'}, below AR's best at {s['below_ar_best_at_epochs'] or 'none'}")
        print(f"  {m:9s} dropout {s['dropout']:g}, wd {s['weight_decay']:g}: best epoch {s['best_epoch']}, test {s['test_at_best']:.3f} "
              f"there, {s['test_last']:.3f} at the end" + extra)
    print(f"wrote {out / f'data_limited_{name}.json'} and its .png")
    return study


if __name__ == '__main__':
    main()
