"""vtd.data: IDX parsing and validation, the embedded data, the one lookup (smoke: embedded; full: found or embedded), text, vocabulary."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vtd.core import cache_root
from vtd.data import (DEBIAN_FASHION_DIR, DataFileError, Vocabulary, load_embedded_fashion_mnist, load_fashion_mnist, load_image_data,
                      load_text_corpus, photo_patches, read_corpus, read_idx, tokenize_words, FASHION_CLASSES, FASHION_FILES)


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
    with pytest.raises(DataFileError, match='FashionMNIST has 60000'):   # not the embedded subset in its place
        load_image_data(root=tmp_path, download=False, verbose=False)


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
    "A machine without our data: no VTD_DATA, an empty cache, Debian's folder pointed at nothing, no network."
    monkeypatch.delenv('VTD_DATA', raising=False)
    monkeypatch.setenv('VTD_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr('vtd.data.DEBIAN_FASHION_DIR', str(tmp_path / 'no-debian'))
    def offline(dest): raise OSError('network unreachable (test)')
    monkeypatch.setattr('vtd.data._download_fashion', offline)
    return tmp_path


@pytest.fixture(scope='module')
def fake_full_fashion(tmp_path_factory) -> Path:
    "A full-size FashionMNIST folder (60,000 + 10,000 gzipped IDX files) the test writes: image i is the constant i % 251."
    folder = tmp_path_factory.mktemp('fake') / 'fashion-mnist'; folder.mkdir()
    for split, n in (('train', 60000), ('t10k', 10000)):
        i = np.arange(n)
        with gzip.open(folder / f'{split}-images-idx3-ubyte.gz', 'wb', compresslevel=1) as f:
            f.write(idx_bytes(np.broadcast_to((i % 251)[:, None, None], (n, 28, 28))))
        with gzip.open(folder / f'{split}-labels-idx1-ubyte.gz', 'wb', compresslevel=1) as f: f.write(idx_bytes(i % 10))
    return folder


def test_fashion_missing_without_download_is_clear(newcomer):
    with pytest.raises(FileNotFoundError, match='download=False'):
        load_fashion_mnist(root=newcomer / 'empty', download=False)
    with pytest.raises(FileNotFoundError, match='downloading failed.*network unreachable'):
        load_fashion_mnist(verbose=False)


def test_embedded_subset_is_real_balanced_and_the_same_every_time(newcomer):
    d = load_embedded_fashion_mnist()
    assert d.embedded and d.name == 'fashion_mnist' and d.classes == FASHION_CLASSES
    assert d.x_train.shape == (10000, 1, 28, 28) and d.x_test.shape == (2000, 1, 28, 28)
    assert torch.bincount(d.y_train).tolist() == [1000] * 10 and torch.bincount(d.y_test).tolist() == [200] * 10
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1 and d.x_train.mean() > 0.1   # real images, not blanks
    assert torch.equal(load_embedded_fashion_mnist().x_test, d.x_test)
    assert 'subset embedded in vtd' in d.summary and '10,000 train / 2,000 test' in d.summary


def test_newcomer_gets_the_embedded_subset_in_both_modes(newcomer, capsys):
    assert load_image_data(smoke=True).embedded
    full = load_image_data(smoke=False)
    assert full.embedded and len(full.x_train) == 10000
    out = capsys.readouterr().out
    assert 'full FashionMNIST not found' in out   # it says which data it used, and why
    assert str(cache_root()) not in out   # and no folder of this machine: a committed lesson prints the line


@pytest.mark.parametrize('where', ['root', 'VTD_DATA', 'VTD_DATA parent', 'debian', 'cache'])
def test_full_mode_finds_the_full_set_and_smoke_mode_never_uses_it(newcomer, fake_full_fashion, monkeypatch, where):
    root = None
    if where == 'root': root = fake_full_fashion
    elif where == 'VTD_DATA': monkeypatch.setenv('VTD_DATA', str(fake_full_fashion))
    elif where == 'VTD_DATA parent': monkeypatch.setenv('VTD_DATA', str(fake_full_fashion.parent))
    elif where == 'debian': monkeypatch.setattr('vtd.data.DEBIAN_FASHION_DIR', str(fake_full_fashion))
    else: monkeypatch.setenv('VTD_CACHE', str(fake_full_fashion.parent))   # the cache holds <cache>/fashion-mnist
    full = load_image_data(smoke=False, root=root, verbose=False)
    assert not full.embedded and full.x_train.shape == (60000, 1, 28, 28) and len(full.x_test) == 10000
    assert str(fake_full_fashion) in full.source and 'full' in full.summary
    assert full.x_train[300, 0, 0, 0].item() == pytest.approx((300 % 251) / 255) and full.y_train[:3].tolist() == [0, 1, 2]
    assert load_image_data(smoke=True, root=root, verbose=False).embedded   # same figures on every machine


def test_vtd_data_embedded_means_only_the_embedded_data(newcomer, fake_full_fashion, monkeypatch):
    monkeypatch.setattr('vtd.data.DEBIAN_FASHION_DIR', str(fake_full_fashion))
    monkeypatch.setenv('VTD_DATA', 'embedded')
    assert load_image_data(smoke=False, verbose=False).embedded
    assert 'embedded in vtd' in load_text_corpus('tinyshakespeare', verbose=False).source


@pytest.mark.skipif(not Path(DEBIAN_FASHION_DIR).exists(), reason="needs the 70,000 original images (Debian's FashionMNIST package) to compare with")
def test_embedded_subset_is_the_real_images_it_says():
    "Where Debian's FashionMNIST is installed: the embedded images are the originals at the indices stored beside them."
    import io, lzma
    from vtd.data import EMBEDDED_DIR, EMBEDDED_FASHION
    full = load_fashion_mnist(root=DEBIAN_FASHION_DIR, download=False, verbose=False)
    with np.load(io.BytesIO(lzma.decompress((EMBEDDED_DIR / EMBEDDED_FASHION).read_bytes()))) as z:
        tr, te = torch.from_numpy(z['train_index'].astype(np.int64)), torch.from_numpy(z['test_index'].astype(np.int64))
    d = load_embedded_fashion_mnist()
    assert torch.equal(d.x_train, full.x_train[tr]) and torch.equal(d.y_test, full.y_test[te])


def test_patches():
    p = photo_patches(8)
    assert p.shape == (2 * (427 // 8) * (640 // 8), 3, 8, 8)
    # the first patch is the photo's top-left corner
    from vtd.data import load_sample_photos
    assert torch.equal(p[0], load_sample_photos()[0, :, :8, :8])


def test_text_corpus_embedded_local_and_unknown(newcomer, monkeypatch):
    c = load_text_corpus('tinyshakespeare', verbose=False)   # no file anywhere: the embedded copy, whole
    assert 'embedded in vtd' in c.source and len(c.text) == 1_115_394 and c.text.startswith('First Citizen:')
    monkeypatch.setenv('VTD_DATA', str(newcomer))
    (newcomer / 'tiny.txt').write_text('To be, or not to be.')
    assert load_text_corpus('tiny', verbose=False).text.startswith('To be')
    (newcomer / f"{c.name}.txt").write_text('A local copy wins in full mode.')   # the test's own file, named as the corpus
    assert load_text_corpus('tinyshakespeare', verbose=False).text.startswith('A local copy')
    assert load_text_corpus('tinyshakespeare', smoke=True, verbose=False).text == c.text   # smoke: always the embedded
    # an unknown name is an error that lists the known ones, never a different corpus
    with pytest.raises(ValueError, match=r"unknown text corpus 'not-a-corpus'.*tinyshakespeare"):
        load_text_corpus('not-a-corpus', verbose=False)
    (newcomer / 'empty.txt').write_text('  ')
    with pytest.raises(DataFileError, match='empty'): load_text_corpus('empty', verbose=False)
    (newcomer / 'binary.txt').write_bytes(b'\xff\xfe\x00bad')
    with pytest.raises(DataFileError, match='UTF-8'): load_text_corpus('binary', verbose=False)
    with pytest.raises(DataFileError, match='is a directory'): read_corpus(newcomer)


def test_vocabulary():
    toks = tokenize_words("The king, the KING's men; the end.")
    assert toks == ['the', 'king', ',', 'the', "king's", 'men', ';', 'the', 'end', '.']
    v = Vocabulary.build(toks, max_size=4)
    assert len(v) == 4 and v.itos[0] == '<unk>' and v.itos[1] == 'the'
    assert v.decode(v.encode(['the', 'zebra'])) == ['the', '<unk>']
    with pytest.raises(IndexError, match='outside the vocabulary'): v.decode([99])
    with pytest.raises(ValueError, match='empty'): Vocabulary.build([])
    with pytest.raises(ValueError, match='no room'): Vocabulary.build(toks, max_size=1)
