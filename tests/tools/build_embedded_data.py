"""Build the data vtd ships inside the package (vtd/data_files/), reproducibly.

    python tests/tools/build_embedded_data.py [--fashion DIR] [--text FILE] [--out vtd/data_files]

- FashionMNIST subset: `--train` training and `--test` test images (default 10,000 and 2,000), the same number
  of each of the 10 classes, chosen with a seeded generator from the real IDX files (Debian's
  FashionMNIST package by default), stored as uint8 arrays in one `.npz` archive compressed with xz
  (`fashion_mnist_subset.npz.xz`: x_train, y_train, x_test, y_test, and the indices into the original files).
  xz is measured against `np.savez_compressed` (zlib) every build; on 10,000 + 2,000 images xz is ~15% smaller.
- TinyShakespeare: the whole text, xz-compressed (`vtd.data.EMBEDDED_TEXTS`).
The script prints each file's size and the total, which must stay within the 8 MB budget of issue #26.
"""
import argparse, io, lzma, sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from vtd.data import EMBEDDED_FASHION, EMBEDDED_TEXTS, _read_fashion_dir  # the validated IDX reader: a bad source file stops the build

BUDGET = 8_000_000


def balanced_choice(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    "`n` indices, `n // 10` of each class, drawn without replacement, returned in ascending order."
    per = n // 10
    if per * 10 != n: raise SystemExit(f"{n} is not a multiple of the 10 classes")
    picks = [rng.choice(np.flatnonzero(labels == c), size=per, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--fashion', type=Path, default=Path('/usr/share/datasets/fashion-mnist'))
    ap.add_argument('--text', type=Path, required=True, help="the whole TinyShakespeare text (karpathy's char-rnn input.txt)")
    ap.add_argument('--out', type=Path, default=REPO / 'vtd' / 'data_files')
    ap.add_argument('--train', type=int, default=10_000)
    ap.add_argument('--test', type=int, default=2_000)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    arrays = _read_fashion_dir(a.fashion)
    rng = np.random.default_rng(a.seed)
    tr, te = balanced_choice(arrays['y_train'], a.train, rng), balanced_choice(arrays['y_test'], a.test, rng)
    subset = dict(x_train=arrays['x_train'][tr], y_train=arrays['y_train'][tr].astype(np.uint8), train_index=tr.astype(np.int32),
                  x_test=arrays['x_test'][te], y_test=arrays['y_test'][te].astype(np.uint8), test_index=te.astype(np.int32))
    # The two candidates, measured (printed, so the choice can be re-checked): zlib inside the npz, or xz around it.
    zipped = io.BytesIO(); np.savez_compressed(zipped, **subset)
    plain = io.BytesIO(); np.savez(plain, **subset)
    xz = lzma.compress(plain.getvalue(), preset=9 | lzma.PRESET_EXTREME)
    print(f"FashionMNIST subset: np.savez_compressed {len(zipped.getvalue()):,} bytes, xz-compressed npz {len(xz):,} bytes")
    if len(xz) > len(zipped.getvalue()): raise SystemExit("xz is no longer the smaller: switch vtd.data to the zlib npz")
    (a.out / EMBEDDED_FASHION).write_bytes(xz)
    text = a.text.read_text(encoding='utf-8')
    (a.out / EMBEDDED_TEXTS['tinyshakespeare']).write_bytes(lzma.compress(text.encode('utf-8'), preset=9 | lzma.PRESET_EXTREME))
    total = 0
    for p in sorted(a.out.iterdir()):
        total += p.stat().st_size; print(f"{p.name:<32} {p.stat().st_size:>10,} bytes")
    print(f"{'total':<32} {total:>10,} bytes (budget {BUDGET:,})")
    if total > BUDGET: raise SystemExit(f"the shipped data ({total:,} bytes) exceed the {BUDGET:,}-byte budget")


if __name__ == '__main__':
    main()
