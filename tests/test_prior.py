"""vtd.prior: the prior's causal shift, its key/value-cached sampling, the code-grid boundary, prior checkpoints and their
errors, sampling reproducibility (the generation metrics are tested in test_metrics.py)."""
import numpy as np
import pytest
import torch
from conftest import digits_image_data  # the small real image set these unit tests share

from vtd.core import CheckpointError, save_checkpoint
from vtd.prior import (CodeGrids, CodePrior, CodeRangeError, IndependentPositions, PriorConfig, check_codes,
                       codebook_signature, fit_independent, load_prior, save_prior, uniform_bits)


class FakeCodebook:
    "What the prior needs of a codebook: K, kind and a hash of its vectors."
    def __init__(self, K, kind='euclidean', seed=0):
        self.vectors = torch.randn(K, 4, generator=torch.Generator().manual_seed(seed)); self.kind = kind
    @property
    def K(self): return len(self.vectors)


def small_prior(K=12, n_classes=3, seed=0):
    torch.manual_seed(seed)
    return CodePrior(K, n_classes=n_classes, n_layer=2, n_head=2, n_embd=16, dropout=0.0).eval()


def test_prior_causal_code_change_never_moves_earlier_logits():
    prior = small_prior()
    codes = torch.randint(0, 12, (4, 16)); codes2 = codes.clone(); codes2[:, 7] = (codes2[:, 7] + 1) % 12
    with torch.no_grad(): a, b = prior.logits(codes, 1), prior.logits(codes2, 1)
    # logits at position j predict code j from codes < j: code 7 first shows in the logits at position 8
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_kv_cache_sampling_matches_uncached_sampling():
    prior = small_prior()
    a = prior.sample(50, 2, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = prior.sample(50, 2, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert (a == b).float().mean() > 0.95


def test_sampling_is_reproducible_and_respects_options():
    prior = small_prior()
    a = prior.sample(40, torch.arange(40) % 3, generator=torch.Generator().manual_seed(0), batch_size=16)
    b = prior.sample(40, torch.arange(40) % 3, generator=torch.Generator().manual_seed(0), batch_size=16)
    assert torch.equal(a, b) and a.shape == (40, 16) and a.dtype == torch.long and a.min() >= 0 and a.max() < 12
    top1 = prior.sample(5, 0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert (top1 == top1[0]).all()  # top-1 is greedy: every sample the same
    with pytest.raises(ValueError, match='temperature'): prior.sample(2, temperature=0)
    with pytest.raises(ValueError, match='class labels'): prior.sample(2, class_label=3)
    with pytest.raises(ValueError, match='unconditional'): CodePrior(8, n_classes=0, n_layer=1, n_head=1, n_embd=8).sample(2, class_label=0)


def test_log_prob_is_in_bits_and_normalised():
    prior = small_prior(K=3, n_classes=0)
    # all 3^16 grids are too many; check the first position's distribution sums to one and bits are <= 0
    lp = prior.log_prob(torch.randint(0, 3, (10, 16)))
    assert lp.shape == (10,) and (lp < 0).all()
    logits = prior.logits(torch.zeros(1, 16, dtype=torch.long))
    assert torch.allclose(logits.softmax(-1).sum(-1), torch.ones(1, 16))
    fresh = CodePrior(16, n_layer=1, n_head=1, n_embd=8)
    with torch.no_grad(): fresh.net.wte.weight.zero_()  # all logits 0: exactly uniform, 16 * 4 bits
    assert torch.allclose(-fresh.log_prob(torch.randint(0, 16, (5, 16))), torch.full((5,), uniform_bits(16)))


def test_code_grid_boundary_names_the_offending_images():
    codes = torch.randint(0, 10, (50, 16)); codes[7, 3] = -1; codes[31, 15] = 10
    with pytest.raises(CodeRangeError, match=r'2 of 50 images .*\[7, 31\]'): CodeGrids(codes, None, 10)
    with pytest.raises(CodeRangeError, match='integers'): check_codes(codes.float(), 10)
    with pytest.raises(CodeRangeError, match='shape'): check_codes(torch.zeros(3, 15, dtype=torch.long), 10)
    with pytest.raises(CodeRangeError, match='labels'): CodeGrids(torch.zeros(4, 16, dtype=torch.long), torch.zeros(3), 10)
    ok = CodeGrids(torch.zeros(4, 4, 4, dtype=torch.int32), None, 10)  # [N, 4, 4] grids are flattened row-major
    assert ok.codes.shape == (4, 16) and ok.codes.dtype == torch.long
    with pytest.raises(IndexError, match='outside the vocabulary'):  # the transformer's own guard, below the boundary
        small_prior().net(torch.full((1, 4), 99))
    with pytest.raises(CodeRangeError): small_prior().log_prob(codes)


def test_independent_positions_baseline():
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, 2, (2000,), generator=g) for _ in range(16)], 1)  # each position uses codes 0-1 of 8
    tr, va = CodeGrids(codes[:1500], None, 8), CodeGrids(codes[1500:], None, 8)
    m = fit_independent(tr, va)
    bits = -m.log_prob(va.codes).mean().item()
    assert 15 < bits < 17 < uniform_bits(8) == 48  # ~1 bit per position
    s = m.sample(100, generator=torch.Generator().manual_seed(1))
    assert s.shape == (100, 16) and s.max() < 8
    with pytest.raises(ValueError): IndependentPositions(8, alpha=0)


def test_prior_checkpoint_round_trip_and_mismatches(tmp_path):
    prior = small_prior(K=12)
    cb, other_kind, other_vectors = FakeCodebook(12), FakeCodebook(12, 'geodesic', seed=1), FakeCodebook(12, seed=2)
    p = save_prior(tmp_path / 'p.pt', prior, cb)
    loaded = load_prior(p, cb, expected_config=prior.config)
    a = prior.sample(20, 1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, loaded.sample(20, 1, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(CheckpointError, match=r"kind: checkpoint has 'euclidean', codebook here has 'geodesic'"):
        load_prior(p, other_kind)
    with pytest.raises(CheckpointError, match='hash'): load_prior(p, other_vectors)
    with pytest.raises(CheckpointError, match='K: checkpoint has 12'): load_prior(p, FakeCodebook(16))
    with pytest.raises(CheckpointError, match='n_embd'): load_prior(p, cb, expected_config={**prior.config, 'n_embd': 32})
    with pytest.raises(ValueError, match='K=12'): save_prior(tmp_path / 'q.pt', prior, FakeCodebook(16))
    save_checkpoint(tmp_path / 'plain.pt', prior, prior.config, kind='code_prior')  # no codebook signature
    with pytest.raises(CheckpointError, match='no codebook signature'): load_prior(tmp_path / 'plain.pt', cb)
    with pytest.raises(CheckpointError, match="'code_prior'"):
        save_checkpoint(tmp_path / 'other.pt', prior, prior.config, kind='spatial_vae'); load_prior(tmp_path / 'other.pt', cb)


class Pickled:
    pass


def test_prior_checkpoint_with_pickled_objects_is_refused(tmp_path):
    torch.save({'format': 1, 'kind': 'code_prior', 'config': {}, 'state_dict': {}, 'extra': {'x': Pickled()}}, tmp_path / 'x.pt')
    with pytest.raises(CheckpointError, match='pickled'): load_prior(tmp_path / 'x.pt', FakeCodebook(12))


def test_codebook_signature():
    sig = codebook_signature(FakeCodebook(12))
    assert sig['K'] == 12 and sig['kind'] == 'euclidean' and len(sig['hash']) == 16
    assert codebook_signature(FakeCodebook(12, seed=1))['hash'] != sig['hash']


def _digit_grids():
    "Checked code grids of the embedded digits under an untrained spatial VAE and a random Euclidean codebook."
    from vtd.geodesic import Codebook
    from vtd.prior import image_code_grids
    from vtd.spatial_vae import SpatialVAE
    data = digits_image_data()
    torch.manual_seed(0)
    vae = SpatialVAE(in_size=8, latent_grid=4, latent_dim=4, width=8).eval()
    cb = Codebook(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), 'euclidean')
    return data, vae, cb, image_code_grids(vae, cb, data, PriorConfig.smoke())


def test_image_code_grids_split_and_boundary():
    from vtd.prior import code_grid_split, image_code_grids
    data, vae, cb, gr = _digit_grids()
    sp = code_grid_split(data, PriorConfig.smoke())
    assert len(gr['train']) == len(sp['train']) and len(gr['valid']) == len(sp['valid']) == len(data.x_train) // 10
    assert set(sp['train'].tolist()).isdisjoint(sp['valid'].tolist()) and set(gr) == {'train', 'valid', 'test'}
    assert torch.equal(gr['valid'].labels, data.y_train[sp['valid']]) and gr['test'].codes.shape == (len(data.x_test), 16)
    with pytest.raises(ValueError, match='latents for'):
        image_code_grids(vae, cb, data, PriorConfig.smoke(), latents=(torch.zeros(3, 16, 4), torch.zeros(2, 16, 4)))


def test_get_code_prior_trains_once_then_loads_and_never_loads_another_codebooks(tmp_path, monkeypatch, capsys):
    from vtd.prior import get_code_prior
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    data, vae, cb, gr = _digit_grids()
    cfg = PriorConfig.smoke()
    prior, hist = get_code_prior(gr, cb, 10, cfg, progress=False)
    files = list(tmp_path.rglob('*.pt'))
    assert len(files) == 1 and len(hist['valid']) == 3 and hist['best_epoch'] in (0, 1, 2) and not prior.training
    again, hist2 = get_code_prior(gr, cb, 10, cfg, device='cpu', progress=False)   # a device name, as get_device takes
    assert 'loaded from the cache' in capsys.readouterr().out and hist2['valid'] == hist['valid']
    assert torch.allclose(prior.log_prob(gr['test'].codes, gr['test'].labels), again.log_prob(gr['test'].codes, gr['test'].labels))
    from vtd.geodesic import Codebook  # another codebook of the same K gets its own prior, never this one
    other = Codebook(cb.vectors.flip(0), 'euclidean')
    get_code_prior(gr, other, 10, cfg, progress=False)
    get_code_prior(gr, cb, 10, cfg.replace(epochs=2), progress=False)   # another config: another prior
    assert len(list(tmp_path.rglob('*.pt'))) == 3
    files[0].write_bytes(files[0].read_bytes()[:100])  # a truncated cache file is retrained, with a message
    get_code_prior(gr, cb, 10, cfg, progress=False)
    assert 'making it again' in capsys.readouterr().out


def test_prior_config_presets_and_model_shape():
    s, f = PriorConfig.preset(True), PriorConfig.preset(False)
    assert s.n_train == 4000 and f.n_train is None and s.model == dict(n_layer=2, n_head=2, n_embd=64, dropout=0.1)
    assert 'model' not in s.asdict()                      # the shape is derived, not a second copy of the settings
    with pytest.raises(Exception): s.epochs = 9           # frozen


def test_prior_runs_on_the_meta_device():
    "Forward, loss, log-prob and sampling with every tensor on `meta`: one created on the CPU inside them fails here."
    with torch.device('meta'):
        prior = CodePrior(12, n_classes=3, n_layer=2, n_head=2, n_embd=16)
        codes = torch.randint(0, 12, (5, 16)); labels = torch.randint(0, 3, (5,))
    prior.train()
    loss = prior.loss(codes, labels)
    assert loss.is_meta and loss.shape == ()
    assert prior.logits(codes, labels).shape == (5, 16, 12) and prior.log_prob(codes, labels).is_meta
    out = prior.sample(4, class_label=1)
    assert out.is_meta and out.shape == (4, 16)
    assert prior.sample(4, class_label=1, guidance=1.0).shape == (4, 16)


def test_cached_sampling_is_the_shared_loop():
    "CodePrior.sample is vtd.transformer.generate from its start tokens: the same generator gives the same codes."
    from functools import partial
    from vtd.transformer import generate, sample_logits
    prior = small_prior()
    start = prior.start_tokens(30, 2)[:, None]
    ref = generate(prior.net, start, 16, partial(sample_logits, generator=torch.Generator().manual_seed(4)))[:, 1:]
    assert torch.equal(prior.sample(30, 2, generator=torch.Generator().manual_seed(4)), ref)


def test_prior_trains_with_core_batches_and_lowers_held_out_bits():
    from vtd.prior import train_prior
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (600, 1), generator=g).repeat(1, 16)   # each grid repeats one code: 2 bits per image
    tr, va = CodeGrids(codes[:500], None, 8), CodeGrids(codes[500:], None, 8)
    prior, hist = train_prior(tr, va, PriorConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.0, epochs=3, batch_size=50, lr=1e-2),
                              progress=False)
    assert hist['valid'][hist['best_epoch']] < 10 < uniform_bits(8)      # far below the uniform 48 bits


def test_classifier_free_guidance_options_and_effect():
    prior = small_prior()
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(prior.sample(20, 1, guidance=0.0, generator=g()), prior.sample(20, 1, generator=g()))
    a, b = prior.sample(20, 1, guidance=2.0, generator=g()), prior.sample(20, 1, guidance=2.0, generator=g(), use_cache=False)
    assert (a == b).float().mean() > 0.95                  # guided sampling is the same with or without the cache
    assert not torch.equal(a, prior.sample(20, 1, generator=g()))
    for kw, msg in ((dict(guidance=-1.0), 'guidance must be'), (dict(guidance=1.0, class_label=None), 'needs a class_label')):
        with pytest.raises(ValueError, match=msg): prior.sample(4, **{'class_label': 1, **kw})
    torch.manual_seed(0)
    no_uncond = CodePrior(12, n_classes=3, n_layer=1, n_head=2, n_embd=16, p_uncond=0.0)
    with pytest.raises(ValueError, match='p_uncond=0'): no_uncond.sample(4, 1, guidance=1.0)