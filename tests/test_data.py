"""vtd.data: IDX parsing and validation, loaders, fallbacks, tokenizer and vocabulary."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vtd.data import (DataFileError, Vocabulary, load_digits_images, load_fashion_mnist, load_text_corpus,
                      photo_patches, read_idx, tokenize_words, FASHION_FILES)


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b''.join(n.to_bytes(4, 'big') for n in a.shape) + a.astype(np.uint8).tobytes()


def test_read_idx_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, (5, 4, 3)).astype(np.uint8)
    (tmp_path / 'a-idx3-ubyte').write_bytes(idx_bytes(a))
    with gzip.open(tmp_path / 'a-idx3-ubyte.gz', 'wb') as f: f.write(idx_bytes(a))
    assert np.array_equal(read_idx(tmp_path / 'a-idx3-ubyte'), a)
    assert np.array_equal(read_idx(tmp_path / 'a-idx3-ubyte.gz'), a)


@pytest.mark.parametrize('damage,match', [
    (lambda b: b[:-7], 'truncated'),
    (lambda b: b + b'xx', 'trailing data'),
    (lambda b: b'\x01\x02' + b[2:], 'bad magic'),
    (lambda b: b[:6], 'truncated IDX header'),
])
def test_read_idx_rejects_damaged_files(tmp_path, damage, match):
    good = idx_bytes(np.zeros((3, 2, 2)))
    (tmp_path / 'x-idx3-ubyte').write_bytes(damage(good))
    with pytest.raises(DataFileError, match=match): read_idx(tmp_path / 'x-idx3-ubyte')


def test_corrupt_gzip_is_reported(tmp_path):
    with gzip.open(tmp_path / 'x-idx3-ubyte.gz', 'wb') as f: f.write(idx_bytes(np.zeros((30, 2, 2))))
    data = (tmp_path / 'x-idx3-ubyte.gz').read_bytes()
    (tmp_path / 'x-idx3-ubyte.gz').write_bytes(data[: len(data) - 12])
    with pytest.raises(DataFileError, match='corrupt or truncated'): read_idx(tmp_path / 'x-idx3-ubyte.gz')


def test_fashion_folder_with_a_bad_file_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv('VTD_DATA', raising=False)
    for stem in FASHION_FILES.values():
        (tmp_path / stem).write_bytes(idx_bytes(np.zeros((2, 28, 28)) if 'images' in stem else np.zeros(2)))
    with pytest.raises(DataFileError, match='FashionMNIST has 60000'):
        load_fashion_mnist(root=tmp_path, download=False)


def test_fashion_missing_without_download_is_clear(tmp_path, monkeypatch):
    monkeypatch.delenv('VTD_DATA', raising=False)
    monkeypatch.setattr('vtd.data.DEBIAN_FASHION_DIR', str(tmp_path / 'nothing'))
    monkeypatch.setenv('VTD_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(FileNotFoundError, match='download=False'):
        load_fashion_mnist(root=tmp_path / 'empty', download=False)


@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist').exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian():
    d = load_fashion_mnist(download=False, verbose=False)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1 and set(d.y_test.unique().tolist()) == set(range(10))


def test_digits_and_patches():
    d = load_digits_images()
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.max() <= 1.0
    p = photo_patches(8)
    assert p.shape == (2 * (427 // 8) * (640 // 8), 3, 8, 8)
    # the first patch is the photo's top-left corner
    from vtd.data import load_sample_photos
    assert torch.equal(p[0], load_sample_photos()[0, :, :8, :8])


def test_text_corpus_local_and_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv('VTD_DATA', str(tmp_path))
    monkeypatch.setenv('VTD_CACHE', str(tmp_path / 'cache'))
    (tmp_path / 'tiny.txt').write_text('To be, or not to be.')
    assert load_text_corpus('tiny', verbose=False).text.startswith('To be')
    # a known corpus that cannot be had (no file, no download) falls back to the embedded text, saying so
    c = load_text_corpus('tinyshakespeare', download=False, verbose=False)
    assert c.name == 'pydoc' and 'fallback: tinyshakespeare' in c.source and len(tokenize_words(c.text)) > 50_000
    # an unknown name is an error that lists the known ones, never a different corpus
    with pytest.raises(ValueError, match=r"unknown text corpus 'not-a-corpus'.*pydoc.*tinyshakespeare"):
        load_text_corpus('not-a-corpus', download=False, verbose=False)
    (tmp_path / 'empty.txt').write_text('  ')
    with pytest.raises(DataFileError, match='empty'): load_text_corpus('empty', verbose=False)
    (tmp_path / 'binary.txt').write_bytes(b'\xff\xfe\x00bad')
    with pytest.raises(DataFileError, match='UTF-8'): load_text_corpus('binary', verbose=False)


def test_vocabulary():
    toks = tokenize_words("The king, the KING's men; the end.")
    assert toks == ['the', 'king', ',', 'the', "king's", 'men', ';', 'the', 'end', '.']
    v = Vocabulary.build(toks, max_size=4)
    assert len(v) == 4 and v.itos[0] == '<unk>' and v.itos[1] == 'the'
    assert v.decode(v.encode(['the', 'zebra'])) == ['the', '<unk>']
    with pytest.raises(IndexError, match='outside the vocabulary'): v.decode([99])
    with pytest.raises(ValueError, match='empty'): Vocabulary.build([])
    with pytest.raises(ValueError, match='no room'): Vocabulary.build(toks, max_size=1)
