"""vtd.spatial_vae: output size equals input size, impossible sizes refused, encode/decode shapes, the cache."""
import pytest
import torch

from vtd.data import ImageData
from vtd.spatial_vae import (SpatialVAE, SpatialVAEConfig, get_spatial_vae, kl_divergence, kl_per_latent, latent_mosaic,
                             producible_sizes, reconstruct, size_plan, vae_loss)


@pytest.mark.parametrize('size,channels', [(28, 1), (8, 1), (7, 1), (13, 1), (15, 3), (16, 1), (32, 1)])
def test_output_shape_equals_input_shape(size, channels):
    m = SpatialVAE(in_size=size, in_channels=channels).eval()
    x = torch.rand(3, channels, size, size)
    out = m(x)
    assert out['x_recon'].shape == x.shape
    assert out['mu'].shape == out['logvar'].shape == out['z'].shape == (3, 16, 4, 4)
    assert 0 <= out['x_recon'].min() and out['x_recon'].max() <= 1


def test_other_grids_and_dims():
    m = SpatialVAE(in_size=28, latent_grid=7, latent_dim=8, width=8).eval()
    x = torch.rand(2, 1, 28, 28)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (2, 8, 7, 7)
    assert m.decode(mu).shape == x.shape
    assert m.config == dict(in_size=28, in_channels=1, latent_grid=7, latent_dim=8, width=8)


@pytest.mark.parametrize('size', [10, 12, 3, 4, 6, 24])
def test_impossible_sizes_fail_at_construction(size):
    with pytest.raises(ValueError, match='cannot be decoded'):
        SpatialVAE(in_size=size)


def test_size_plan_and_producible_sizes():
    assert size_plan(28, 4) == [28, 14, 7, 4]
    assert size_plan(8, 4) == [8, 4]
    ok = producible_sizes(4, 32)
    assert ok == [7, 8, 13, 14, 15, 16] + list(range(25, 33))
    for s in range(5, 33):  # exactly the producible sizes construct, and decode to their size
        if s in ok: assert SpatialVAE(in_size=s, width=8).eval().decode(torch.zeros(1, 16, 4, 4)).shape[-1] == s
        else:
            with pytest.raises(ValueError): SpatialVAE(in_size=s, width=8)
    with pytest.raises(ValueError): SpatialVAE(latent_dim=0)


def test_encode_decode_shape_errors():
    m = SpatialVAE().eval()
    with pytest.raises(ValueError, match='shape'): m.encode(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match='shape'): m.decode(torch.rand(2, 8, 4, 4))
    with pytest.raises(TypeError): m.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_encode_refuses_non_finite_images(bad):
    m = SpatialVAE().eval()
    x = torch.rand(3, 1, 28, 28); x[2, 0, 3, 4] = bad
    with pytest.raises(ValueError, match='NaN'): m.encode(x)
    with pytest.raises(ValueError, match='NaN'): m(x)
    assert torch.isfinite(m.encode(x[:2])[0]).all()   # the finite images still encode


def test_kl_per_latent_and_mosaic():
    m = SpatialVAE(in_size=8, width=8)
    kl = kl_per_latent(m, torch.rand(5, 1, 8, 8))
    assert kl.shape == (16,) and (kl >= 0).all()
    mu = torch.arange(16 * 16.).view(16, 4, 4)
    mos = latent_mosaic(mu)
    assert mos.shape == (16, 16)
    assert torch.equal(mos[:4, :4].flatten(), mu[:, 0, 0])  # the top-left tile is position (0, 0)'s vector
    with pytest.raises(ValueError): latent_mosaic(torch.zeros(15, 4, 4))


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=g)
    return ImageData(x[:80], torch.zeros(80, dtype=torch.long), x[80:], torch.zeros(16, dtype=torch.long),
                     ['a'], 'random test images', 'tiny')

TINY = SpatialVAEConfig(n_train=64, n_valid=8, epochs=1, batch_size=32, beta=0.005)


def test_config_presets():
    assert SpatialVAEConfig.preset(True) == SpatialVAEConfig.smoke() and SpatialVAEConfig.preset(False) == SpatialVAEConfig.full()
    full = SpatialVAEConfig.full()   # the lesson's full setting
    assert (full.n_train, full.n_valid, full.epochs, full.batch_size, full.lr, full.beta, full.min_steps) == (58000, 2000, 5, 64, 2e-3, 0.002, 0)
    assert SpatialVAEConfig.smoke().n_train == 3000 and SpatialVAEConfig.smoke().min_steps == 90
    with pytest.raises(Exception): full.epochs = 1   # frozen


def test_get_spatial_vae_cache_round_trip(tmp_path, monkeypatch, tiny_data):
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    a = get_spatial_vae(tiny_data, TINY, verbose=False)
    assert not a.training and a.config['in_size'] == 8 and next(a.parameters()).device.type == 'cpu'
    files = list((tmp_path / 'spatial_vae').glob('*.pt'))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = get_spatial_vae(tiny_data, TINY, verbose=False)  # loaded, not retrained
    assert files[0].stat().st_mtime_ns == mtime
    for k, v in a.state_dict().items(): assert torch.equal(v, b.state_dict()[k])
    assert b.history['train'] == a.history['train'] and len(b.history['valid']) == 1
    get_spatial_vae(tiny_data, TINY, seed=1, verbose=False)               # another seed: another entry
    get_spatial_vae(tiny_data, TINY.replace(beta=0.01), verbose=False)    # another config: another entry
    other = ImageData(tiny_data.x_train.flip(0), tiny_data.y_train, tiny_data.x_test, tiny_data.y_test, ['a'], 'x', 'tiny')
    get_spatial_vae(other, TINY, verbose=False)                           # other images: another entry
    assert len(list((tmp_path / 'spatial_vae').glob('*.pt'))) == 4


def test_get_spatial_vae_remakes_a_corrupt_cache(tmp_path, monkeypatch, tiny_data, capsys):
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    a = get_spatial_vae(tiny_data, TINY)
    (path,) = (tmp_path / 'spatial_vae').glob('*.pt')
    path.write_bytes(b'not a checkpoint'); capsys.readouterr()
    m = get_spatial_vae(tiny_data, TINY)
    assert 'cannot be used' in capsys.readouterr().out
    for k, v in a.state_dict().items(): assert torch.equal(v, m.state_dict()[k])   # seeded: the same model again
    get_spatial_vae(tiny_data, TINY)
    assert 'loaded from the cache' in capsys.readouterr().out


def test_bad_data_is_refused(tiny_data):
    bad = ImageData(tiny_data.x_train * 2, tiny_data.y_train, tiny_data.x_test, tiny_data.y_test, ['a'], 'x', 'tiny')
    with pytest.raises(ValueError, match=r'\[0, 1\]'): get_spatial_vae(bad, TINY, verbose=False)


def test_forward_loss_and_helpers_on_the_meta_device():
    "Built and run on `meta`: a tensor created on the CPU inside forward, loss or the helpers fails loudly."
    with torch.device('meta'):
        m = SpatialVAE()
    x = torch.rand(4, 1, 28, 28, device='meta')
    m.train()
    out = m(x)
    assert all(v.is_meta for v in out.values()) and out['x_recon'].shape == x.shape
    loss, parts = vae_loss(m, x)
    assert loss.is_meta and loss.shape == () and all(v.is_meta for v in parts.values())
    loss.backward()   # the backward pass too
    assert all(p.grad is not None and p.grad.is_meta for p in m.parameters())
    m.eval()
    assert reconstruct(m, x).is_meta and kl_per_latent(m, x).is_meta
    assert kl_divergence(out['mu'], out['logvar']).is_meta


def test_meta_device_test_catches_a_planted_cpu_tensor(monkeypatch):
    "The meta test can fail: a forward that adds a CPU tensor (as a device-less torch.zeros would) raises."
    import vtd.spatial_vae as sv
    real = sv.SpatialVAE.decode
    monkeypatch.setattr(sv.SpatialVAE, 'decode', lambda self, z: real(self, z) + torch.zeros(z.shape[0], 1, 28, 28, device='cpu'))
    with torch.device('meta'):
        m = SpatialVAE()
    with pytest.raises((RuntimeError, NotImplementedError)):
        vae_loss(m, torch.rand(2, 1, 28, 28, device='meta'))
