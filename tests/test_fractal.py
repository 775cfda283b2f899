"""vtd.fractal: the IFS renderers, the tokenizers built on vtd.vq.VectorQuantizer, shapes, errors, devices."""
import pytest
import torch
import torch.nn.functional as F

from vtd.fractal import (FractalConfig, FractalTokenizer, PatchMLPDecoderVQ, SpatialConvVQ, affine_maps, assemble_patches,
                         ifs_hits, kmeans_reconstruct, render_ifs, render_ifs_soft)
from vtd.vq import VectorQuantizer


def _q(dim=32, size=512, **kw): return VectorQuantizer(dim, size, init='normal', **kw)


def _maps(n=3, m=4, seed=0):
    return affine_maps(torch.randn(n, m, 6, generator=torch.Generator().manual_seed(seed)))


def test_affine_maps_are_contractive():
    maps = affine_maps(torch.randn(50, 4, 6) * 10)
    assert maps.shape == (50, 4, 2, 3)
    assert (torch.linalg.matrix_norm(maps[..., :2], ord=2) <= 0.9 + 1e-5).all()


def test_render_ifs_shape_range_and_no_nan():
    out = render_ifs(_maps(), size=8, n_points=500, n_steps=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 8, 8)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out.flatten(1).max(1).values, torch.ones(3))  # divided by its maximum
    hits = ifs_hits(_maps(), size=8, n_points=500, n_steps=10, generator=torch.Generator().manual_seed(0))
    assert hits.shape == (3, 8, 8) and hits.sum() <= 3 * 500 * 10 and hits.sum() > 0


def test_render_ifs_is_seeded():
    a = render_ifs(_maps(), n_steps=5, generator=torch.Generator().manual_seed(1))
    b = render_ifs(_maps(), n_steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_soft_render_shapes_range_and_gradients():
    raw = torch.randn(2, 3, 6, requires_grad=True)
    colors = torch.rand(2, 3, 3, requires_grad=True)
    out = render_ifs_soft(affine_maps(raw), colors, size=8, n_points=100, n_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    out.mean().backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0 and colors.grad.abs().sum() > 0
    gray = render_ifs_soft(_maps(), size=8, n_points=100, n_steps=5)
    assert gray.shape == (3, 1, 8, 8)


def test_hard_render_gives_the_maps_no_gradient():
    # the seed's objective (lesson 02's `render_loss`) is MSE(render, photo): here its render term alone
    tok = FractalTokenizer(_q(), n_steps=3, n_points=50)
    x = torch.rand(4, 3, 8, 8)
    z_q, _, info = tok.quantizer(tok.encoder(x))
    (F.mse_loss(tok.render(codes=z_q).expand_as(x), x) + info['codebook_loss']).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tok.generator.parameters())
    assert tok.quantizer.codebook.grad is not None   # the other terms do reach their parameters


def test_decoder_output_shapes():
    mlp = PatchMLPDecoderVQ(_q(32, 16))
    x = torch.rand(5, 3, 8, 8)
    recon, ids, info = mlp(x)
    assert recon.shape == x.shape and ids.shape == (5,) and mlp.decode(ids).shape == (5, 3, 8, 8)
    assert abs(mlp.bits_per_pixel - 4 / 64) < 1e-12
    loss, parts = mlp.loss(x); loss.backward()
    for stride in (4, 8):
        sp = SpatialConvVQ(_q(3 * stride * stride, 16), stride=stride, width=8, n_res=1)
        imgs = torch.rand(2, 3, 32, 32)
        grid = sp.encode(imgs)
        assert grid.shape == (2, 32 // stride, 32 // stride)
        out = sp.decode(grid)
        assert out.shape == imgs.shape and out.min() >= 0 and out.max() <= 1
        loss, _ = sp.loss(imgs); loss.backward()


def test_spatial_model_starts_as_kmeans_on_blocks():
    torch.manual_seed(0)
    sp = SpatialConvVQ(_q(48, 8), stride=4, width=8, n_res=1)
    imgs = torch.rand(4, 3, 16, 16)
    sp.init_codebook(imgs, max_iter=5)
    class KM:  # the spatial model's own codebook, viewed as a k-means model on 4x4 blocks
        cluster_centers_ = (sp.quantizer.codebook.detach().view(8, 3, 4, 4) + 0.5).flatten(1).numpy()
        def predict(self, x): return torch.cdist(torch.tensor(x) - 0.5, sp.quantizer.codebook.detach()).argmin(1).numpy()
    with torch.no_grad():
        assert torch.allclose(sp.decode(sp.encode(imgs)), kmeans_reconstruct(KM(), imgs).clamp(0, 1), atol=1e-5)


def test_assemble_patches_inverts_photo_patches():
    from vtd.data import photo_patches
    imgs = torch.rand(2, 3, 16, 24)
    assert torch.equal(assemble_patches(photo_patches(8, imgs), 2, 3), imgs)
    with pytest.raises(ValueError, match='grids'): assemble_patches(torch.rand(5, 3, 8, 8), 2, 2)


def test_bad_inputs_are_named():
    tok = FractalTokenizer(_q())
    with pytest.raises(ValueError, match=r'\[N, M, 2, 3\]'): render_ifs(torch.rand(3, 4, 6))
    with pytest.raises(ValueError, match='NaN'): render_ifs(torch.full((1, 2, 2, 3), float('nan')))
    with pytest.raises(TypeError, match='floating'): render_ifs(torch.zeros(1, 2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='n_steps'): render_ifs(_maps(), n_steps=0)
    with pytest.raises(IndexError, match='out of range'): tok.render(torch.tensor([0, 512]))
    with pytest.raises(TypeError, match='integer'): tok.render(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r'\[N, 3, 8, 8\]'): tok.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match='NaN'): tok.encode(torch.full((2, 3, 8, 8), float('nan')))
    mlp = PatchMLPDecoderVQ(_q(32, 16))
    with pytest.raises(IndexError, match='out of range'): mlp.decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match='multiple of the stride'): SpatialConvVQ(_q(48)).encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match='dim 32'): SpatialConvVQ(_q(32), stride=4)
    with pytest.raises(TypeError, match='floating point'): mlp.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match='colors'): render_ifs_soft(_maps(2, 3), torch.rand(2, 4, 3))


def test_coverage_counts_match_the_hit_buffer():
    from vtd.fractal import ifs_coverage
    maps = _maps(4, 3)
    cov = ifs_coverage(maps, 16, [2, 7], n_points=100, generator=torch.Generator().manual_seed(3))
    for steps, frac in zip([2, 7], cov):
        hits = ifs_hits(maps, 16, n_points=100, n_steps=steps, generator=torch.Generator().manual_seed(3))
        assert abs(frac - (hits == 0).float().mean().item()) < 1e-6


def test_config_presets():
    s, f = FractalConfig.smoke(), FractalConfig.full()
    assert FractalConfig.preset(True) == s and FractalConfig.preset(False) == f == FractalConfig()
    assert all(getattr(s, k) <= getattr(f, k) for k in ('ifs_epochs', 'mlp_epochs', 'conv_epochs', 'best_random_k', 'kmeans_iter'))
    assert 100 in s.coverage_steps and 100 in f.coverage_steps


def test_models_forward_and_losses_on_the_meta_device():
    # built on meta, run outside the `with`: a tensor created on the CPU inside a forward pass, loss or render fails loudly
    with torch.device('meta'):
        patches, images = torch.empty(6, 3, 8, 8), torch.empty(2, 3, 16, 16)
        tok = FractalTokenizer(_q(32, 16), n_points=20, n_steps=2)
        ctok = FractalTokenizer(_q(32, 16), n_points=20, n_steps=2, color=True)
        mlp = PatchMLPDecoderVQ(_q(32, 16, dead_code_after=2))
        sp = SpatialConvVQ(_q(48, 16, dead_code_after=2), stride=4, width=8, n_res=1)
        maps, colors = affine_maps(torch.empty(3, 4, 6)), torch.empty(3, 4, 3)
    for train in (True, False):
        for m in (tok, ctok, mlp, sp): m.train(train)
        for t in (tok, ctok):
            z_q, ids, _ = t.quantizer(t.encoder(patches))
            assert t.render(codes=z_q).is_meta and t.render(t.encode(patches)).is_meta
        loss, _ = mlp.loss(patches); assert loss.is_meta and mlp(patches)[0].is_meta and mlp.decode(mlp.encode(patches)).is_meta
        loss, _ = sp.loss(images); assert loss.is_meta and sp(images)[0].is_meta and sp.decode(sp.encode(images)).is_meta
        loss.backward()
    assert render_ifs(maps, n_steps=2).is_meta and render_ifs_soft(maps, colors, n_steps=2).is_meta
