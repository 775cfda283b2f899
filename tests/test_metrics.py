"""vtd.metrics: PSNR and SSIM, every generation metric against a case whose answer is known, its bad inputs, the cached
classifier, and the classifier's forward pass on the meta device (a tensor left on the CPU fails there)."""
import math

import numpy as np
import pytest
import torch
from conftest import digits_image_data  # the small real image set these unit tests share

from vtd.metrics import (ClassifierConfig, ImageClassifier, classifier_accuracy, classifier_features, codebook_perplexity,
                         codebook_usage, distinct_n, frechet_distance, grid_diversity, psnr, ssim,
                         train_image_classifier, unigram_entropy_bits)


def test_psnr_ssim():
    a = torch.rand(3, 1, 16, 16)
    b = a.clone(); b[0] = 0
    assert psnr(a, b, reduction='pooled') < psnr(a, b)  # pooled MSE is dominated by the bad image
    assert abs(psnr(a, a + 0.1, data_range=1.0) - 20.0) < 1e-6  # MSE 0.01 is exactly 20 dB
    assert ssim(a, a) > 0.999 and ssim(a, torch.rand_like(a)) < 0.5
    with pytest.raises(ValueError, match='shapes differ'): psnr(a, a[:2])


def test_codebook_usage_and_perplexity():
    assert codebook_usage(torch.tensor([0, 1, 1, 3]), 4) == 0.75
    assert math.isclose(codebook_perplexity(torch.tensor([0, 1, 2, 3]), 4), 4.0, rel_tol=1e-9)
    assert math.isclose(codebook_perplexity(torch.tensor([2, 2, 2]), 4), 1.0, rel_tol=1e-9)
    assert math.isclose(codebook_perplexity(torch.tensor([0, 3] * 7), 4), 2.0, rel_tol=1e-9)
    with pytest.raises(IndexError, match='out of range'): codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(IndexError, match='out of range'): codebook_perplexity(torch.tensor([-1, 0]), 4)
    with pytest.raises(TypeError, match='integers'): codebook_usage(torch.tensor([0.5]), 4)
    with pytest.raises(ValueError, match='codebook_size'): codebook_usage(torch.tensor([0]), 0)


def test_unigram_entropy_and_distinct_n():
    assert unigram_entropy_bits(torch.tensor([0, 1, 0, 1]), 4) == 1.0
    assert unigram_entropy_bits(torch.tensor([[3, 3], [3, 3]]), 4) == 0.0
    assert math.isclose(unigram_entropy_bits(torch.arange(16), 16), 4.0)
    assert distinct_n(torch.tensor([[1, 2, 1, 2]]), 2) == 2 / 3
    assert distinct_n(torch.tensor([[1, 2, 3], [1, 2, 3]]), 1) == 0.5
    assert distinct_n(torch.tensor([[1, 2]]), 3) == 0.0
    with pytest.raises(IndexError, match='vocab_size=4'): unigram_entropy_bits(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match='positive'): distinct_n(torch.tensor([[1, 2]]), 0)
    with pytest.raises(ValueError, match='sequences'): distinct_n(torch.tensor([1, 2, 3]), 2)


def test_grid_diversity():
    train = torch.tensor([[1] * 16, [2] * 16])
    d = grid_diversity(torch.tensor([[1] * 16, [1] * 16, [3] * 16, [4] * 16]), train)
    assert d == {'unique_share': 0.75, 'copy_share': 0.5}
    assert grid_diversity(train, train) == {'unique_share': 1.0, 'copy_share': 1.0}
    with pytest.raises(ValueError, match='same L'): grid_diversity(torch.zeros(2, 16), torch.zeros(2, 15))


def test_frechet_distance_matches_closed_form_and_rejects_bad_input():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3)); b = rng.normal(size=(4000, 3)) * 2 + 1
    # N(0, I) vs N(1, 4I): |mu|^2 = 3, trace term 3 * (1 + 4 - 2 * 2) = 3
    assert abs(frechet_distance(a, b) - 6.0) < 0.3
    assert abs(frechet_distance(a, a)) < 1e-8
    import scipy.linalg
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0))**2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert abs(frechet_distance(a, b) - ref) < 1e-6
    assert abs(frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) - ref) < 1e-3  # tensors too
    with pytest.raises(ValueError, match='same F'): frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError, match='at least 2'): frechet_distance(a[:1], b)
    bad = a.copy(); bad[0, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'): frechet_distance(bad, b)


def test_classifier_features_accuracy_and_bad_input():
    torch.manual_seed(0)
    clf = ImageClassifier(n_classes=10).eval()
    f = classifier_features(clf, torch.rand(5, 1, 28, 28), batch_size=2)
    assert f.shape == (5, clf.config['n_features'])
    x = torch.rand(7, 1, 28, 28)
    pred = clf(x).argmax(1)
    assert classifier_accuracy(clf, x, pred, batch_size=3) == 1.0
    assert classifier_accuracy(clf, x, (pred + 1) % 10) == 0.0
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'): classifier_features(clf, torch.rand(5, 28, 28))
    with pytest.raises(ValueError, match='NaN'): classifier_features(clf, torch.full((2, 1, 28, 28), float('nan')))
    with pytest.raises(TypeError, match='floating'): classifier_features(clf, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match='labels'): classifier_accuracy(clf, x, pred[:3])


def test_classifier_runs_on_the_meta_device():
    with torch.device('meta'):
        clf = ImageClassifier(n_classes=10)
        x = torch.rand(4, 1, 28, 28)
    assert classifier_features(clf, x).device.type == 'meta'
    assert clf(x).shape == (4, 10) and clf(x).is_meta


def _tiny_data():
    return digits_image_data()


def test_train_image_classifier_is_cached_and_keyed_by_config_and_data(tmp_path, monkeypatch):
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    data = _tiny_data()
    cfg = ClassifierConfig(width=16, n_features=32, epochs=6, batch_size=64, n_train=1000)
    clf = train_image_classifier(data, cfg, progress=False)
    assert 0.5 < clf.test_accuracy <= 1.0 and not clf.training
    assert len(list(tmp_path.rglob('*.pt'))) == 1
    again = train_image_classifier(data, cfg, device='cpu', progress=False)   # a device name, as get_device takes
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    assert again.test_accuracy == clf.test_accuracy and len(list(tmp_path.rglob('*.pt'))) == 1
    train_image_classifier(data, cfg.replace(epochs=1), progress=False)   # another config: another entry
    data.x_train = data.x_train.flip(-1)                                   # other images: another entry
    train_image_classifier(data, cfg, progress=False)
    train_image_classifier(data, cfg, seed=1, progress=False)              # another seed: another entry
    assert len(list(tmp_path.rglob('*.pt'))) == 4


def test_classifier_config_presets():
    assert ClassifierConfig.preset(True).n_train == 10_000 and ClassifierConfig.preset(False).n_train is None
    with pytest.raises(Exception): ClassifierConfig().epochs = 3  # frozen
