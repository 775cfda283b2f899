"""vtd.spatial_vae: output size equals input size, impossible sizes refused, encode/decode shapes, the cache."""
import pytest
import torch

from vtd.core import save_checkpoint
from vtd.data import ImageData
from vtd.spatial_vae import (SpatialVAE, TRAIN_SETTINGS, get_spatial_vae, kl_per_latent, latent_mosaic,
                             producible_sizes, size_plan, spatial_vae_key, spatial_vae_path)


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


def test_get_spatial_vae_cache_round_trip(tmp_path, monkeypatch, tiny_data):
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    monkeypatch.setitem(TRAIN_SETTINGS, 'smoke', dict(n_train=64, n_valid=8, epochs=1, batch_size=32, lr=2e-3, beta=0.005))
    a = get_spatial_vae(tiny_data, smoke=True, verbose=False)
    assert not a.training and a.config['in_size'] == 8
    files = list(tmp_path.glob('spatial_vae_tiny_smoke_seed0_*.pt'))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = get_spatial_vae(tiny_data, smoke=True, verbose=False)  # loaded, not retrained
    assert files[0].stat().st_mtime_ns == mtime
    for k, v in a.state_dict().items(): assert torch.equal(v, b.state_dict()[k])
    assert 'train' in b.history
    # another seed is another key, another file
    get_spatial_vae(tiny_data, smoke=True, seed=1, verbose=False)
    assert len(list(tmp_path.glob('spatial_vae_tiny_*.pt'))) == 2


def test_get_spatial_vae_retrains_on_corrupt_or_mismatched_cache(tmp_path, monkeypatch, tiny_data, capsys):
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    monkeypatch.setitem(TRAIN_SETTINGS, 'smoke', dict(n_train=64, n_valid=8, epochs=1, batch_size=32, lr=2e-3, beta=0.005))
    key = spatial_vae_key(tiny_data, smoke=True)
    path = spatial_vae_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'not a checkpoint')
    m = get_spatial_vae(tiny_data, smoke=True)
    assert 'retraining' in capsys.readouterr().out
    assert m.decode(torch.zeros(1, 16, 4, 4)).shape == (1, 1, 8, 8)
    # a checkpoint at the right path but saved for another config is refused and retrained
    save_checkpoint(path, SpatialVAE(in_size=8), {**key, 'seed': 99}, kind='spatial_vae')
    get_spatial_vae(tiny_data, smoke=True)
    assert 'another config' in capsys.readouterr().out
    get_spatial_vae(tiny_data, smoke=True)
    assert 'loaded the cached' in capsys.readouterr().out


def test_different_data_is_a_different_key(tiny_data):
    other = ImageData(tiny_data.x_train.flip(0), tiny_data.y_train, tiny_data.x_test, tiny_data.y_test, ['a'], 'x', 'tiny')
    assert spatial_vae_key(tiny_data, True) != spatial_vae_key(other, True)
    assert spatial_vae_key(tiny_data, True) != spatial_vae_key(tiny_data, False)
    bad = ImageData(tiny_data.x_train * 2, tiny_data.y_train, tiny_data.x_test, tiny_data.y_test, ['a'], 'x', 'tiny')
    with pytest.raises(ValueError, match=r'\[0, 1\]'): spatial_vae_key(bad, True)
