"""Unit tests for vtd.geodesic: the graph, shortest-path, k-medoids and assignment functions."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn
from scipy.sparse import csgraph

from vtd.core import fingerprint
from vtd.data import ImageData
from vtd.geodesic import (Codebook, GeodesicConfig, LatentSet, codes_for_images, decode_codes, decoded_segment_lengths,
                          decoder_metric, fill_unreachable, geodesic_edge_lengths, geodesic_voronoi, get_codebook,
                          get_geodesic_graph, grid_latents, jvp_segment_lengths, kmedoids, knn_graph, largest_component,
                          latents_to_grid, metric_lengths, sample_latent_set)


class TinyVAE(nn.Module):
    "A minimal stand-in with the SpatialVAE interface: 8x8 images, a 2x2 grid of 3-d latents."
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Conv2d(1, 6, 4, stride=4)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(3, 8, 4, stride=4), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))
    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, 1); return mu, logvar
    def decode(self, z): return torch.sigmoid(self.decoder(z))


@pytest.fixture(scope='module')
def tiny():
    vae = TinyVAE().eval()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return vae, x


def blobs(n_per=30, centers=((0, 0), (6, 0), (0, 6)), seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, 0.4, size=(n_per, 2)) for c in centers]).astype(np.float32)
    return X, np.repeat(np.arange(len(centers)), n_per)


def test_knn_graph_symmetric_and_checked():
    X, _ = blobs()
    A = knn_graph(X, 4)
    assert A.shape == (len(X), len(X)) and abs(A - A.T).max() == 0
    assert (A.diagonal() == 0).all() and (A.data > 0).all()
    assert ((A > 0).sum(1) >= 4).all()                 # every node keeps at least its own k neighbours
    D = np.linalg.norm(X[:, None] - X[None], axis=-1); r, c = A.nonzero()
    assert np.allclose(A[r, c].A1, D[r, c], atol=1e-5)  # weights are Euclidean distances
    with pytest.raises(ValueError, match='k must be'): knn_graph(X, len(X))
    with pytest.raises(ValueError, match='NaN'): knn_graph(np.full((5, 2), np.nan), 2)


def test_duplicates_keep_their_edge():
    X = np.zeros((4, 2), dtype=np.float32); X[2:] = 1
    A = knn_graph(X, 1)
    assert A.nnz > 0 and (A.data > 0).all()


def test_largest_component():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal((0, 0), 0.4, size=(15, 2)), rng.normal((100, 0), 0.4, size=(10, 2))]).astype(np.float32)
    A = knn_graph(X, 3)
    n_comp, _ = csgraph.connected_components(A, directed=False)
    m = largest_component(A)
    assert n_comp >= 2 and m[15:].sum() == 0 and m.sum() == np.bincount(csgraph.connected_components(A)[1]).max()


def test_multisource_dijkstra_matches_brute_force():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    pair = sp.csr_matrix(np.array([[0, 1.5], [1.5, 0]]))             # an isolated pair: unreachable from the sources
    B = sp.block_diag([knn_graph(X, 3), pair]).tocsr()
    sources = np.array([3, 17, 42])
    cell, dist = geodesic_voronoi(B, sources)
    D = csgraph.shortest_path(B, directed=False)[sources]
    best = D.min(0); reach = np.isfinite(best)
    assert np.allclose(dist[reach], best[reach])
    assert np.allclose(D[cell[reach], np.flatnonzero(reach)], best[reach])
    assert (cell[~reach] == -1).all() and np.isinf(dist[~reach]).all() and (~reach).sum() == 2
    assert (cell[sources] == np.arange(3)).all() and (dist[sources] == 0).all()
    with pytest.raises(ValueError): geodesic_voronoi(B, [B.shape[0]])


@pytest.mark.parametrize('use_graph', [True, False])
def test_kmedoids_toy(use_graph):
    X, truth = blobs()
    r = kmedoids(X, 3, graph=knn_graph(X, 5) if use_graph else None, seed=0)
    assert sorted(truth[r.medoids]) == [0, 1, 2]
    for b in range(3): assert len(set(r.labels[truth == b])) == 1
    assert all(b <= a * (1 + 1e-9) for a, b in zip(r.history, r.history[1:]))
    # the medoid of a cell minimises the sum of squared distances to its members
    if not use_graph:
        for c, m in enumerate(r.medoids):
            mem = X[r.labels == c]; cost = ((mem[:, None] - mem[None]) ** 2).sum(-1).sum(1)
            assert np.isclose(((mem - X[m]) ** 2).sum(), cost.min(), rtol=1e-4)
    with pytest.raises(ValueError, match='K must be'): kmedoids(X, 0)


def test_unreachable_rule():
    X = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [4.9, 5.2], [-100, 0]], dtype=np.float32)
    medoid_vectors = X[[0, 2]]
    labels = np.array([0, 0, 1, 1, -1, -1])
    filled, n = fill_unreachable(X, medoid_vectors, labels)
    assert n == 2 and filled.tolist() == [0, 0, 1, 1, 1, 0]   # each -1 goes to its nearest medoid in Euclidean distance
    assert filled.min() >= 0 and filled.max() < 2


def test_codebook_assign_range_and_fingerprint():
    cb = Codebook(torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), 'geodesic')
    z = torch.randn(500, 3) * 10
    codes = cb.assign(z)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < cb.K == 7
    assert torch.equal(codes, torch.cdist(z, cb.vectors).argmin(1))
    assert torch.equal(cb.assign(cb.vectors), torch.arange(7))
    h = cb.fingerprint(); assert h == Codebook(cb.vectors.clone(), 'euclidean').fingerprint() and len(h) == 16
    assert h == fingerprint(cb.vectors)                      # the one hasher
    assert fingerprint(cb) == fingerprint(Codebook(cb.vectors.clone(), 'euclidean'))   # a codebook can be a cache key's upstream
    v2 = cb.vectors.clone(); v2[3, 1] += 1e-3
    assert Codebook(v2, 'geodesic').fingerprint() != h and fingerprint(Codebook(v2, 'geodesic')) != fingerprint(cb)
    with pytest.raises(ValueError, match='latents must be'): cb.assign(torch.randn(4, 5))
    with pytest.raises(ValueError, match='NaN'): cb.assign(torch.full((2, 3), float('nan')))
    with pytest.raises(ValueError, match='kind'): Codebook(torch.randn(2, 3), 'cosine')


def test_codes_and_decode(tiny):
    vae, x = tiny
    lat = grid_latents(vae, x)
    assert lat.shape == (40, 4, 3)
    mu = vae.encode(x)[0]
    assert torch.allclose(latents_to_grid(lat), mu, atol=1e-6)
    assert torch.allclose(lat[:, 1], mu[:, :, 0, 1], atol=1e-6)   # positions are row-major
    cb = Codebook(lat.reshape(-1, 3)[:5], 'euclidean')
    codes = codes_for_images(vae, cb, x)
    assert codes.shape == (40, 4) and codes.min() >= 0 and codes.max() < 5
    imgs = decode_codes(vae, cb, codes)
    assert imgs.shape == x.shape
    with pytest.raises(ValueError, match=r'in \[0, 5\)'): decode_codes(vae, cb, torch.full((2, 4), 5))
    with pytest.raises(ValueError, match=r'in \[0, 5\)'): decode_codes(vae, cb, torch.full((2, 4), -1))
    with pytest.raises(ValueError, match='images'): grid_latents(vae, x[0])


def test_edge_lengths_zero_symmetric_and_first_order(tiny):
    vae, x = tiny
    ls = sample_latent_set(grid_latents(vae, x), 60, seed=0)
    Z, ctx, pos = ls.vectors, ls.contexts, ls.position
    zero = decoded_segment_lengths(vae, ctx, pos, Z, Z)
    assert zero.abs().max() == 0
    perm = torch.roll(torch.arange(60), 1)
    ab = decoded_segment_lengths(vae, ctx, pos, Z, Z[perm]); ba = decoded_segment_lengths(vae, ctx, pos, Z[perm], Z)
    assert torch.allclose(ab, ba, rtol=1e-4, atol=1e-7)
    # first order: one jvp per segment equals |J dz| from the jvp metric; finite differences agree closely
    M = decoder_metric(vae, ctx, pos, method='jvp'); M_fd = decoder_metric(vae, ctx, pos, method='fd')
    dz = Z[perm] - Z
    from_metric = torch.einsum('ed,edf,ef->e', dz, M, dz).sqrt()
    assert torch.allclose(from_metric, jvp_segment_lengths(vae, ctx, pos, Z, Z[perm]), rtol=1e-3, atol=1e-6)
    assert torch.allclose(M_fd, M, rtol=0.05, atol=1e-3 * M.abs().max().item())
    # whole-graph lengths: symmetric, same sparsity, positive; sampled and first order agree on short edges
    A = knn_graph(Z, 3)
    W = geodesic_edge_lengths(vae, ls, A, metric=M)
    Ws = geodesic_edge_lengths(vae, ls, A, method='sampled', n_steps=4)
    assert abs(W - W.T).max() < 1e-9 and W.nnz == A.nnz and (W.data > 0).all()
    assert abs(Ws - Ws.T).max() < 1e-9
    assert np.corrcoef(W.data, Ws.data)[0, 1] > 0.9


def test_latent_set_checks():
    g = torch.randn(3, 4, 2)
    with pytest.raises(ValueError): LatentSet(g, torch.tensor([0, 3]), torch.tensor([0, 0]))
    with pytest.raises(ValueError): LatentSet(g, torch.tensor([0, 1]), torch.tensor([0, 4]))
    with pytest.raises(ValueError): sample_latent_set(g, 13)
    ls = sample_latent_set(g, 12, seed=0)
    assert len({(int(i), int(p)) for i, p in zip(ls.image, ls.position)}) == 12


def test_config_presets():
    assert GeodesicConfig.preset(True) == GeodesicConfig.smoke() and GeodesicConfig.smoke().n_vectors == 600
    full = GeodesicConfig.full()
    assert (full.n_vectors, full.k_neighbors, full.metric_method, full.max_iter) == (20000, 10, 'fd', 30)


@pytest.fixture
def tiny_data():
    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return ImageData(x[:40], torch.zeros(40, dtype=torch.long), x[40:], torch.zeros(10, dtype=torch.long), ['a'], 'random', 'tiny')


def test_graph_and_codebook_are_cached_by_config_data_and_vae(tmp_path, monkeypatch, tiny, tiny_data, capsys):
    monkeypatch.setenv('VTD_CACHE', str(tmp_path))
    vae, _ = tiny
    cfg = GeodesicConfig(n_vectors=60, k_neighbors=4)
    lat, W, info = get_geodesic_graph(vae, tiny_data, cfg, verbose=False)
    assert len(lat) == 60 and W.shape == (60, 60) and abs(W - W.T).max() < 1e-9 and info['n_edges'] == W.nnz // 2
    lat2, W2, _ = get_geodesic_graph(vae, tiny_data, cfg)
    assert 'loaded from the cache' in capsys.readouterr().out
    assert torch.equal(lat.vectors, lat2.vectors) and (W != W2).nnz == 0
    cb = get_codebook(vae, tiny_data, 5, 'geodesic', cfg)
    out = capsys.readouterr().out
    assert 'geodesic_graph: loaded from the cache' in out and 'codebook: made' in out   # the graph is shared
    assert cb.K == 5 and cb.kind == 'geodesic' and len(cb.info['train_codes']) == 60 and cb.info['train_codes'].min() >= 0
    again = get_codebook(vae, tiny_data, 5, 'geodesic', cfg)
    assert 'codebook: loaded from the cache' in capsys.readouterr().out and torch.equal(again.vectors, cb.vectors)
    assert torch.equal(again.info['train_codes'], cb.info['train_codes'])
    get_codebook(vae, tiny_data, 5, 'euclidean', cfg, verbose=False)     # another kind, size, seed: new entries
    get_codebook(vae, tiny_data, 6, 'geodesic', cfg, verbose=False)
    get_codebook(vae, tiny_data, 5, 'geodesic', cfg, seed=1, verbose=False)
    assert len(list((tmp_path / 'codebook').glob('*.pt'))) == 4
    other = TinyVAE(); other.decoder[0].bias.data += 0.1               # another VAE: a new graph and codebook
    get_codebook(other.eval(), tiny_data, 5, 'geodesic', cfg, verbose=False)
    assert len(list((tmp_path / 'geodesic_graph').glob('*.pt'))) == 3 and len(list((tmp_path / 'codebook').glob('*.pt'))) == 5
    with pytest.raises(ValueError, match='codebook_size'): get_codebook(vae, tiny_data, 0, 'geodesic', cfg)
    with pytest.raises(ValueError, match='kind'): get_codebook(vae, tiny_data, 5, 'cosine', cfg)


def test_device_code_on_the_meta_device():
    "The VAE-facing code runs on `meta` with a meta VAE: any tensor created on the CPU inside it fails loudly."
    from vtd.spatial_vae import SpatialVAE
    with torch.device('meta'):
        vae = SpatialVAE().eval()
    x = torch.rand(6, 1, 28, 28, device='meta')
    grids = grid_latents(vae, x)
    assert grids.is_meta and grids.shape == (6, 16, 16)
    pos = torch.zeros(6, dtype=torch.long, device='meta'); za, zb = grids[:, 0], grids[:, 1]
    for method in ('fd', 'jvp'):
        M = decoder_metric(vae, grids, pos, method=method, batch_size=4)
        assert M.is_meta and M.shape == (6, 16, 16)
    assert metric_lengths(M, M, zb - za).is_meta
    assert decoded_segment_lengths(vae, grids, pos, za, zb, n_steps=2, batch_size=4).is_meta
    assert jvp_segment_lengths(vae, grids, pos, za, zb).is_meta
    ls = LatentSet(grids, torch.arange(6, device='meta'), pos)
    assert ls.vectors.is_meta and ls.subset([0, 2]).vectors.is_meta
    cb = Codebook(torch.randn(8, 16, device='meta'), 'euclidean')
    codes = codes_for_images(vae, cb, x)
    assert codes.is_meta and codes.shape == (6, 16)
    assert decode_codes(vae, cb, codes).is_meta


def test_meta_test_catches_a_planted_cpu_tensor(monkeypatch):
    "The meta test can fail: a device-less torch.zeros planted in the metric's loop (as a CPU tensor) raises."
    import vtd.geodesic as geo
    from vtd.spatial_vae import SpatialVAE
    real = geo.latents_to_grid
    monkeypatch.setattr(geo, 'latents_to_grid', lambda l: real(l) + torch.zeros(1, device='cpu'))
    with torch.device('meta'):
        vae = SpatialVAE().eval()
    grids = torch.rand(2, 16, 16, device='meta')
    with pytest.raises((RuntimeError, NotImplementedError)):
        decoder_metric(vae, grids, torch.zeros(2, dtype=torch.long, device='meta'))
