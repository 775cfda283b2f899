"""vtd.vq: the Gaussian source and its D(R), PCA modules, quantizers (STE, rotation trick, EMA, dead codes),
the loss's codebook gradient, the R(D) initialisation, the VQ-VAE and its trainer, and bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from vtd.metrics import codebook_perplexity, codebook_usage
from vtd.vq import (GaussianDataset, PCAEncoder, PCADecoder, VQConfig, VQVAE, VectorQuantizer, evaluate_vqvae,
                    gaussian_rate_distortion, nearest_code, pca_basis, rd_gaussian_init, rotation_trick, train_vqvae,
                    vqvae_loss, water_level)


@pytest.fixture(scope='module')
def ds():
    return GaussianDataset(d=16, k=4, n_samples=2000, seed=0)


def test_gaussian_dataset_has_its_eigenvalues_and_subspace(ds):
    assert ds.X.shape == (2000, 16) and ds.U_k.shape == (16, 4)
    assert torch.allclose(ds.U_k.T @ ds.U_k, torch.eye(4), atol=1e-5)
    ev = torch.linalg.eigvalsh(torch.cov(ds.X.T)).flip(0)
    assert torch.allclose(ev[:4], ds.eigenvalues, rtol=0.15) and ev[4] < 1e-5
    b = ds.get_initialization_batch(100)
    assert b.shape == (100, 16) and torch.equal(b, ds.get_initialization_batch(100))
    assert ds.sample(7).shape == (7, 16) and len(ds) == 2000 and ds[3].shape == (16,)
    with pytest.raises(ValueError): GaussianDataset(d=4, k=8)
    with pytest.raises(ValueError): GaussianDataset(d=8, k=2, eigenvalues=[1.0, -1.0])
    with pytest.raises(ValueError): ds.get_initialization_batch(10**6)


def test_reverse_water_filling():
    # equal eigenvalues: R/k bits each, D = k λ 2^(-2R/k)
    assert math.isclose(gaussian_rate_distortion([2.0] * 4, 8), 4 * 2.0 * 2**-4, rel_tol=1e-9)
    assert math.isclose(gaussian_rate_distortion([1.0, 0.5], 0), 1.5, rel_tol=1e-12)
    lam = [1.0, 0.5, 0.1, 0.01]
    th = water_level(lam, 2.0)
    assert math.isclose(sum(max(0, 0.5 * math.log2(l / th)) for l in lam), 2.0, rel_tol=1e-9)
    assert math.isclose(gaussian_rate_distortion(lam, 2.0), sum(min(th, l) for l in lam), rel_tol=1e-9)
    assert th > 0.1  # the two weakest components get no bits
    ds_ = [gaussian_rate_distortion(lam, r) for r in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(ds_, ds_[1:]))  # more bits, less distortion
    with pytest.raises(ValueError): gaussian_rate_distortion([1.0, float('nan')], 1)
    with pytest.raises(ValueError): gaussian_rate_distortion([1.0], -1)
    with pytest.raises(ValueError): water_level([], 1)


def test_pca_modules_natural_orientation_and_round_trip(ds):
    enc, dec = PCAEncoder(ds.U_k), PCADecoder(ds.U_k)
    assert enc.encoder_weight.shape == (16, 4) and dec.decoder_weight.shape == (4, 16)
    assert 'encoder_weight' in dict(enc.named_buffers()) and not list(enc.parameters())
    assert torch.allclose(dec(enc(ds.X)), ds.X, atol=1e-5)
    assert len(list(PCAEncoder(ds.U_k, trainable=True).parameters())) == 1
    assert len(list(PCADecoder(ds.U_k, trainable=True).parameters())) == 1
    with pytest.raises(ValueError, match='width'): enc(torch.randn(3, 15))
    with pytest.raises(ValueError, match='width'): dec(torch.randn(3, 5))
    with pytest.raises(ValueError, match='shape'): PCAEncoder(ds.U_k.T)
    U, lam = pca_basis(ds.X, 4)
    assert torch.allclose(lam, ds.eigenvalues, rtol=0.15) and ((U.T @ ds.U_k).abs().max(1).values > 0.98).all()


def test_quantizer_picks_nearest_code_and_always_uses_the_ste():
    cb = torch.tensor([[0., 0.], [1., 0.], [0., 1.]])
    q = VectorQuantizer(2, 3, init=cb)
    z = torch.tensor([[0.9, 0.1], [0.1, 0.2], [0.2, 0.8]], requires_grad=True)
    z_q, idx, info = q(z)
    assert idx.tolist() == [1, 0, 2] and torch.equal(info['z_q_hard'], cb[idx])
    assert torch.allclose(z_q, cb[idx])
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z)) and q.codebook.grad is None  # STE: gradient to z unchanged
    # the same graph whether or not z needs a gradient: never the codebook through z_q
    z_q2, _, _ = q(z.detach())
    assert not z_q2.requires_grad
    q.eval(); z_q3, _, _ = q(z); assert z_q3.requires_grad
    # any leading shape
    zz = torch.randn(2, 5, 2); a, i, inf = q(zz)
    assert a.shape == zz.shape and i.shape == (2, 5) and inf['z_q_hard'].shape == zz.shape


def test_fixed_loss_gives_the_codebook_the_analytic_gradient():
    torch.manual_seed(0)
    q = VectorQuantizer(3, 5, init=torch.randn(5, 3))
    x = torch.randn(20, 3); z = (x * 1.0).requires_grad_(True)
    z_q, idx, info = q(z)
    total, parts = vqvae_loss(x, z_q * 1.0, z, info['z_q_hard'], beta=0.25)
    total.backward()
    analytic = torch.zeros(5, 3).index_add_(0, idx, 2 * (q.codebook.detach()[idx] - z.detach()) / z.numel())
    assert torch.allclose(q.codebook.grad, analytic, atol=1e-7, rtol=1e-5)
    assert set(parts) == {'recon', 'codebook', 'commitment', 'total'}
    assert math.isclose(parts['total'], parts['recon'] + parts['codebook'] + 0.25 * parts['commitment'], rel_tol=1e-5)
    with pytest.raises(ValueError): vqvae_loss(x, x[:3], z, info['z_q_hard'])
    with pytest.raises(ValueError): vqvae_loss(x, x, z, info['z_q_hard'][:, :2])
    with pytest.raises(ValueError): vqvae_loss(x, x, z, info['z_q_hard'], beta=-1)


def test_rotation_trick_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 4, generator=g, requires_grad=True); q = torch.randn(6, 4, generator=g)
    out = rotation_trick(e, q)
    assert torch.allclose(out, q, atol=1e-5)
    up = torch.randn(6, 4, generator=g); (out * up).sum().backward()
    for ei, qi, gi, got in zip(e.detach(), q, up, e.grad):
        eh, qh = ei / ei.norm(), qi / qi.norm(); r = (eh + qh) / (eh + qh).norm()
        R = torch.eye(4) - 2 * torch.outer(r, r) + 2 * torch.outer(qh, eh)
        assert torch.allclose(R @ eh, qh, atol=1e-5) and torch.allclose(R.T @ R, torch.eye(4), atol=1e-5)
        assert torch.allclose(got, qi.norm() / ei.norm() * R.T @ gi, atol=1e-5)
    # the quantizer returns the hard codes like VectorQuantizer, and the codebook loss reaches the codebook
    rq = VectorQuantizer(4, 8, init=torch.randn(8, 4, generator=g), rotation_trick=True)
    z = torch.randn(10, 4, generator=g, requires_grad=True)
    z_q, idx, info = rq(z)
    assert torch.allclose(z_q, info['z_q_hard'], atol=1e-5) and torch.equal(info['z_q_hard'], rq.codebook[idx])
    F.mse_loss(info['z_q_hard'], z.detach()).backward()
    assert rq.codebook.grad is not None and rq.codebook.grad.abs().sum() > 0


def test_ema_codebook_moves_to_the_mean_and_dead_codes_reset():
    torch.manual_seed(0)
    q = VectorQuantizer(2, 2, init=torch.tensor([[0., 0.], [100., 100.]]), ema=True, decay=0.5, dead_code_after=3)
    assert not list(q.parameters())
    z = torch.tensor([[1., 1.], [1., 1.], [3., 3.], [3., 3.]])
    q.train()
    for _ in range(40): q(z)
    # code 1 was never used: after 3 steps it restarted on a latent; in the end both codes serve the two clusters
    used = set(q(z)[1].tolist())
    assert used == {0, 1}
    assert torch.allclose(q.codebook.sort(0).values, torch.tensor([[1., 1.], [3., 3.]]), atol=1e-2)
    q.eval(); before = q.codebook.clone(); q(z * 10); assert torch.equal(before, q.codebook)  # no updates in eval


def test_usage_and_perplexity():
    assert codebook_usage(torch.tensor([0, 1, 1, 3]), 4) == 0.75
    assert math.isclose(codebook_perplexity(torch.tensor([0, 1, 2, 3]), 4), 4.0, rel_tol=1e-9)
    assert math.isclose(codebook_perplexity(torch.tensor([2, 2, 2]), 4), 1.0, rel_tol=1e-9)
    with pytest.raises(IndexError, match='out of range'): codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(TypeError): codebook_usage(torch.tensor([0.5]), 4)


def test_rd_init_follows_the_water_filling_solution(ds):
    z = PCAEncoder(ds.U_k)(ds.X)
    cb = rd_gaussian_init(4096, 4, z, seed=0)
    assert cb.shape == (4096, 4)
    lam = ds.eigenvalues.double(); th = water_level(lam, 12)
    var = torch.var(cb.double(), 0)
    assert torch.allclose(var, (lam - th).clamp_min(0), rtol=0.15, atol=0.01)
    assert torch.equal(cb, rd_gaussian_init(4096, 4, z, seed=0))
    with pytest.raises(ValueError, match='encode'): rd_gaussian_init(16, 4, ds.X)
    with pytest.raises(ValueError, match='empty'): rd_gaussian_init(0, 4, z)
    with pytest.raises(ValueError, match='NaN'): rd_gaussian_init(16, 4, torch.full((10, 4), float('nan')))


def test_vqvae_outputs_training_and_rd_init_starts_closer(ds):
    K = 16
    enc = PCAEncoder(ds.U_k)
    cb = rd_gaussian_init(K, 4, enc(ds.get_initialization_batch(500)))
    x_test = ds.sample(1000)
    D_R = gaussian_rate_distortion(ds.eigenvalues, math.log2(K)) / 4
    models = {init: VQVAE(PCAEncoder(ds.U_k, True), VectorQuantizer(4, K, init=c, dead_code_after=20), PCADecoder(ds.U_k, True))
              for init, c in (('random', 'uniform'), ('rd', cb))}
    out = models['rd'](ds.X[:32])
    assert set(out) == {'x_recon', 'z', 'z_q', 'z_q_hard', 'indices'}
    assert out['x_recon'].shape == (32, 16) and out['z_q_hard'].shape == (32, 4) and out['indices'].shape == (32,)
    start = {i: evaluate_vqvae(m, x_test)['distortion_per_dim'] for i, m in models.items()}
    assert start['rd'] < start['random']
    h = train_vqvae(models['rd'], ds.X, steps=200, eval_x=x_test, eval_every=100, lr=1e-3, codebook_lr=1e-2, progress=False)
    assert h['step'] == [0, 100, 200] and len(h['distortion_per_dim']) == 3
    assert h['distortion_per_dim'][-1] < h['distortion_per_dim'][0] and h['distortion_per_dim'][-1] >= D_R
    assert 0 < h['usage'][-1] <= 1 and 1 <= h['perplexity'][-1] <= K
    # a frozen model with an EMA codebook trains without an optimiser
    m = VQVAE(PCAEncoder(ds.U_k), VectorQuantizer(4, K, init=cb, ema=True), PCADecoder(ds.U_k))
    h2 = train_vqvae(m, ds.X, steps=100, eval_every=50, progress=False)
    assert h2['distortion_per_dim'][-1] < h2['distortion_per_dim'][0]


def test_bad_inputs_give_clear_errors():
    q = VectorQuantizer(4, 8)
    with pytest.raises(ValueError, match='width 4'): q(torch.randn(3, 5))
    with pytest.raises(ValueError, match='NaN'): q(torch.tensor([[0., float('nan'), 0., 0.]]))
    with pytest.raises(ValueError, match='empty'): VectorQuantizer(4, 0)
    with pytest.raises(ValueError, match='empty'): VectorQuantizer(4, 8, init=torch.zeros(0, 4))
    with pytest.raises(ValueError, match='shape'): VectorQuantizer(4, 8, init=torch.zeros(8, 3))
    with pytest.raises(ValueError, match='NaN'): VectorQuantizer(2, 1, init=torch.tensor([[float('nan'), 0.]]))
    with pytest.raises(ValueError, match='unknown init'): VectorQuantizer(4, 8, init='kaiming')
    with pytest.raises(ValueError, match='beta'): VectorQuantizer(4, 8, beta=-1)
    with pytest.raises(IndexError, match='out of range'): q.lookup(torch.tensor([0, 8]))
    with pytest.raises(IndexError, match='out of range'): q.lookup(torch.tensor([-1]))
    assert q.lookup(torch.tensor([[1, 2]])).shape == (1, 2, 4)
    model = VQVAE(PCAEncoder(torch.eye(4)), q, PCADecoder(torch.eye(4)))
    with pytest.raises(ValueError, match='NaN'): model(torch.full((2, 4), float('nan')))
    with pytest.raises(ValueError, match='width'): VQVAE(PCAEncoder(torch.eye(6)[:, :5]), q, PCADecoder(torch.eye(4)))(torch.randn(2, 6))
    with pytest.raises(ValueError): train_vqvae(model, torch.randn(10, 4), steps=0)


def test_integer_latents_are_refused_naming_the_dtype():
    # issue 17.16: VectorQuantizer(4, 8) fed an integer tensor used to fail inside the distance's matmul with torch's message
    q = VectorQuantizer(4, 8)
    for dtype in (torch.long, torch.int32, torch.uint8, torch.bool):
        with pytest.raises(TypeError, match=rf"VectorQuantizer: latents must be a floating-point tensor, got dtype {dtype}"):
            q(torch.ones(3, 4, dtype=dtype))
        with pytest.raises(TypeError, match='floating-point'): q.encode(torch.ones(3, 4, dtype=dtype))
    with pytest.raises(TypeError, match='tensor'): q([[0.0] * 4])


def test_nearest_code_is_the_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    z, cb = torch.randn(200, 6, generator=g), torch.randn(37, 6, generator=g)
    idx, d2 = nearest_code(z, cb)
    brute = ((z[:, None] - cb[None]) ** 2).sum(-1)
    assert torch.equal(idx, brute.argmin(1)) and torch.allclose(d2, brute.min(1).values, atol=1e-5)
    i2, d22 = nearest_code(z.double(), cb.double(), chunk=64)                  # chunked, in float64: the same answer
    assert torch.equal(i2, idx) and d22.dtype == torch.float64 and torch.allclose(d22.float(), d2, atol=1e-5)


def test_info_losses_are_on_the_hard_codes_and_options_keep_the_return_shape():
    torch.manual_seed(0)
    z = torch.randn(6, 4, requires_grad=True)
    q = VectorQuantizer(4, 10, init='normal', beta=0.5)
    z_q, ids, info = q(z)
    assert set(info) == {'z_q_hard', 'sq_distances', 'codebook_loss', 'commitment_loss', 'loss'}
    assert torch.allclose(info['loss'], info['codebook_loss'] + 0.5 * info['commitment_loss'])
    info['codebook_loss'].backward(retain_graph=True)
    assert z.grad is None or z.grad.abs().sum() == 0                  # the codebook loss moves only the codebook
    expected = torch.zeros(10, 4).index_add_(0, ids, 2 * (q.codebook[ids] - z).detach() / z.numel())
    assert torch.allclose(q.codebook.grad, expected, atol=1e-6)
    q.codebook.grad = None
    info['commitment_loss'].backward()
    assert q.codebook.grad is None or q.codebook.grad.abs().sum() == 0  # commitment moves only the encoder
    assert torch.allclose(z.grad, 2 * (z - q.codebook[ids]).detach() / z.numel(), atol=1e-6)
    for opts in ({}, {'ema': True}, {'rotation_trick': True}, {'dead_code_after': 1}, {'init': 'normal'}):
        out = VectorQuantizer(4, 10, **opts)(torch.randn(2, 3, 4))
        assert len(out) == 3 and out[0].shape == (2, 3, 4) and out[1].shape == (2, 3) and out[2]['z_q_hard'].shape == (2, 3, 4)


def test_encode_never_updates_and_set_codebook_resets():
    q = VectorQuantizer(2, 2, init=torch.tensor([[0., 0.], [100., 100.]]), ema=True, decay=0.5, dead_code_after=1)
    z = torch.tensor([[1., 1.], [3., 3.]])
    before = q.codebook.clone()
    assert q.training and q.encode(z).tolist() == [0, 0] and torch.equal(q.codebook, before) and q.steps == 0
    q(z); assert q.steps == 1 and not torch.equal(q.codebook, before)      # a training forward does update
    q.set_codebook(before)
    assert torch.equal(q.codebook, before) and torch.equal(q.ema_sum, before) and (q.ema_count == 1).all() and (q.steps_unused == 0).all()


def test_dead_codes_checked_every_n_steps_are_the_codes_unused_since_the_last_check():
    # dead_code_after=n, dead_code_every=n: every n steps, restart the codes unused in those n steps (lesson 02's schedule);
    # dead_code_every=1: restart a code as soon as it has been unused for n steps in a row (lesson 03's)
    near = {0: torch.tensor([[0.1], [-0.1]]), 1: torch.tensor([[10.1], [9.9]])}
    for every, when_code_1 in ((4, 8), (1, 6)):
        q = VectorQuantizer(1, 3, init=torch.tensor([[0.], [10.], [20.]]), dead_code_after=4, dead_code_every=every)
        restarted = {}
        for step, code in enumerate([0, 1, 0, 0, 0, 0, 0, 0], 1):   # code 1 used at step 2 only, code 2 never
            before = q.codebook.detach().clone()
            q(near[code])
            restarted[step] = set((q.codebook.detach() != before).flatten().nonzero().flatten().tolist())
        assert restarted[4] == {2}                                     # never used: restarted at the first check
        assert 1 in restarted[when_code_1] and all(1 not in restarted[s] for s in restarted if s != when_code_1), (every, restarted)
        if every == 4: assert all(not restarted[s] for s in (1, 2, 3, 5, 6, 7))  # nothing between checks


def test_config_presets():
    assert VQConfig.preset(True) == VQConfig.smoke() and VQConfig.preset(False) == VQConfig.full() == VQConfig()
    s, f = VQConfig.smoke(), VQConfig.full()
    assert s.train_steps < f.train_steps and s.n_train < f.n_train and s.train_steps % s.eval_every == 0 and f.train_steps % f.eval_every == 0


def test_models_forward_and_losses_on_the_meta_device():
    # built on meta, run outside the `with`: a tensor created on the CPU inside a forward pass or loss fails loudly
    cases = []
    for opts in ({}, {'ema': True}, {'rotation_trick': True}, {'dead_code_after': 5}):
        with torch.device('meta'):
            U = torch.empty(16, 4)
            q = VectorQuantizer(4, 8, init=torch.empty(8, 4), **opts)
            cases.append((q, VQVAE(PCAEncoder(U, trainable=True), q, PCADecoder(U, trainable=True)), torch.empty(32, 16)))
    for q, model, x in cases:
        assert all(t.is_meta for t in model.state_dict().values())
        for train in (True, False):
            model.train(train)
            out = model(x)
            total, _ = vqvae_loss(x, out['x_recon'], out['z'], out['z_q_hard'])
            assert out['x_recon'].is_meta and total.is_meta and out['indices'].shape == (32,)
            assert q.lookup(out['indices']).is_meta and q.encode(out['z']).is_meta
        total.backward()
    e, c = torch.empty(5, 3, device='meta'), torch.empty(7, 3, device='meta')
    assert rotation_trick(e, e).is_meta and nearest_code(e, c)[0].is_meta
