"Unit tests for vtd.diffusion and vtd.autoregressive (the baseline): processes, posterior, loss weights, samplers, float32 Gumbel, bad inputs."
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vtd.diffusion import (AbsorbingProcess, UniformProcess, LogLinearSchedule, CosineSchedule, TokenDenoiser,
                           PatternDenoiser, masked_diffusion_loss, discrete_time_loss, heldout_bound, ancestral_sample,
                           maskgit_sample, categorical, distinct_n, unigram_entropy_bits)
from vtd.autoregressive import make_ar_model, ar_sample, ar_heldout_bits, ar_loss, transformer_flops

SCHEDULES = [LogLinearSchedule(), CosineSchedule()]
PROCESSES = [AbsorbingProcess, UniformProcess]


@pytest.mark.parametrize('proc', PROCESSES)
@pytest.mark.parametrize('sched', SCHEDULES, ids=lambda s: s.name)
def test_transitions_are_stochastic_and_compose(proc, sched):
    P = proc(5, sched)
    for s, t in [(0.0, 0.2), (0.2, 0.7), (0.5, 1.0), (0.0, 1.0)]:
        Q = P.transition_matrix(s, t)
        assert torch.allclose(Q.sum(1), torch.ones(P.n_states, dtype=torch.float64))
        assert (Q >= 0).all()
    assert torch.allclose(P.transition_matrix(0, 0.3) @ P.transition_matrix(0.3, 0.8), P.transition_matrix(0, 0.8))
    x0 = torch.tensor([[0, 1, 4]])
    assert torch.allclose(P.marginal(x0, 0.4)[0], P.transition_matrix(0, 0.4)[x0[0]])


@pytest.mark.parametrize('sched', SCHEDULES, ids=lambda s: s.name)
def test_uniform_reaches_uniform_and_absorbing_reaches_mask(sched):
    U = UniformProcess(4, sched)
    assert torch.allclose(U.transition_matrix(0, 1.0), torch.full((4, 4), 0.25, dtype=torch.float64))
    A = AbsorbingProcess(4, sched)
    assert torch.allclose(A.transition_matrix(0, 1.0)[:, A.mask_id], torch.ones(5, dtype=torch.float64))
    x1 = A.q_sample(torch.randint(0, 4, (3, 50)), 1.0)
    assert (x1 == A.mask_id).all()


@pytest.mark.parametrize('proc', PROCESSES)
@pytest.mark.parametrize('sched', SCHEDULES, ids=lambda s: s.name)
def test_posterior_equals_brute_force_bayes(proc, sched):
    "q(x_s | x_t, x_0) from the joint q(x_0) q(x_s|x_0) q(x_t|x_s) on a 4-token vocabulary."
    P = proc(4, sched)
    for s, t in [(0.0, 0.25), (0.3, 0.7), (0.6, 1.0)]:
        Qs, Qts = P.transition_matrix(0, s), P.transition_matrix(s, t)
        for x0 in range(4):
            for xt in range(P.n_states):
                joint = Qs[x0] * Qts[:, xt]                    # over x_s, for this x_0 and x_t
                if joint.sum() == 0: continue                  # impossible (x_0, x_t) pair
                post = P.posterior(torch.tensor([xt]), F.one_hot(torch.tensor([x0]), 4).double(), torch.tensor(s), torch.tensor(t))
                assert torch.allclose(post[0], joint / joint.sum(), atol=1e-12)


def test_absorbing_posterior_with_predicted_x0_marginalises():
    "With a predicted distribution over x_0, the reverse step is the p0-mixture of the exact posteriors (absorbing)."
    P = AbsorbingProcess(4)
    p0 = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    xt = torch.tensor([P.mask_id])
    mix = sum(p0[0, k] * P.posterior(xt, F.one_hot(torch.tensor([k]), 4).double(), torch.tensor(0.2), torch.tensor(0.6))
              for k in range(4))
    assert torch.allclose(P.posterior(xt, p0, torch.tensor(0.2), torch.tensor(0.6)), mix)


def test_loss_weights():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(LogLinearSchedule().weight(t), 1 / t)
    c, h = CosineSchedule(), 1e-6
    num = -(c.alpha(t + h) - c.alpha(t - h)) / (2 * h) / (1 - c.alpha(t))
    assert torch.allclose(c.weight(t), num, rtol=1e-5)
    # the discrete-time weights (α_s - α_t)/(1 - α_t) summed x T tend to the continuous integral of -α'/(1-α)·(1-α) = 1
    for sched in SCHEDULES:
        T = 2000
        i = torch.arange(1, T + 1, dtype=torch.float64)
        a_s, a_t = sched.alpha((i - 1) / T), sched.alpha(i / T)
        assert abs(((a_s - a_t)).sum().item() - 1.0) < 1e-9   # each token is revealed exactly once


def test_discrete_bound_kl_matches_weighted_cross_entropy_for_absorbing():
    "For the absorbing process the generic KL(q(x_s|x_t,x_0)||p(x_s|x_t)) is the weighted masked cross-entropy."
    torch.manual_seed(0)
    P, V = AbsorbingProcess(6), 6
    xt = torch.tensor([[V, 2, V, 5]]); x0 = torch.tensor([[1, 2, 3, 5]])
    p0 = torch.softmax(torch.randn(1, 4, V, dtype=torch.float64), -1)
    s, t = torch.tensor(0.3), torch.tensor(0.5)
    q, p = P.posterior(xt, F.one_hot(x0, V).double(), s, t), P.posterior(xt, p0, s, t)
    kl = (q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log())).sum(-1)
    w = (P.schedule.alpha(s) - P.schedule.alpha(t)) / (1 - P.schedule.alpha(t))
    expect = -p0.gather(-1, x0[..., None])[..., 0].log() * w * (xt == V)
    assert torch.allclose(kl, expect.double(), atol=1e-9)


def _tiny(V=80, L=12, **kw):
    torch.manual_seed(0)
    return TokenDenoiser(V, L, n_layer=1, n_head=2, n_embd=32, **kw)


def test_losses_finite_and_bound_has_stderr():
    d, A = _tiny(), AbsorbingProcess(80)
    x0 = torch.randint(0, 80, (16, 12))
    assert torch.isfinite(masked_diffusion_loss(d, A, x0))
    assert torch.isfinite(discrete_time_loss(d, A, x0, 10))
    r = heldout_bound(d, A, x0, n_t=4)
    assert r['stderr'] > 0 and math.isfinite(r['bits_per_token'])
    # an untrained denoiser is close to uniform: the bound is near log2 V
    assert abs(r['bits_per_token'] - math.log2(80)) < 1.0
    du, U = _tiny(process='uniform', time_cond=True), UniformProcess(80)
    assert torch.isfinite(discrete_time_loss(du, U, x0, 10, hybrid_ce=0.01))


def test_ancestral_sampler_fills_every_position_and_reuses_predictions():
    d, A = _tiny(), AbsorbingProcess(80)
    g = torch.Generator().manual_seed(0)
    r = ancestral_sample(d, A, 3, 12, steps=200, generator=g, record=True)
    assert r['tokens'].shape == (3, 12) and (r['tokens'] < 80).all()
    assert r['n_evals'] <= 3 * 12 + 1 < 200  # a step that reveals nothing costs no network call
    r2 = ancestral_sample(d, A, 3, 12, steps=200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r['tokens'], r2['tokens'])  # seeded
    m = maskgit_sample(d, A, 3, 12, steps=4, generator=g)
    assert (m['tokens'] < 80).all() and m['n_evals'] == 4
    du = _tiny(process='uniform', time_cond=True)
    u = ancestral_sample(du, UniformProcess(80), 2, 12, steps=5, generator=g)
    assert u['tokens'].shape == (2, 12) and u['n_evals'] == 5


def test_pattern_denoiser_scores_words_by_their_cells():
    torch.manual_seed(0)
    V, L = 90, 6
    table = torch.randint(0, 3, (V, 25))
    pd = PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32).eval()
    A = AbsorbingProcess(V)
    x0 = torch.randint(0, V, (2, L)); xt = torch.full_like(x0, V)
    lp = pd.x0_log_prob(xt, torch.ones(2), x0)
    cells = pd.x0_probs(xt, torch.ones(2)).log()
    manual = cells.gather(-1, table[x0][..., None])[..., 0].sum(-1)
    assert torch.allclose(lp.double(), manual, atol=1e-4)
    ids, exact = pd.decode_cells(table[x0])
    assert torch.equal(ids, x0) and exact.all()
    r = ancestral_sample(pd, A, 2, L, 4, generator=torch.Generator().manual_seed(0))
    assert 0 <= r['exact_share'] <= 1
    with pytest.raises(ValueError, match='injective'):
        PatternDenoiser(torch.zeros(90, 25, dtype=torch.long), 3, L)


def test_categorical_is_unbiased():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    x = categorical(p.expand(20000, 4), torch.Generator().manual_seed(0))
    freq = torch.bincount(x, minlength=4).double() / 20000
    assert (freq[3] == 0) and torch.allclose(freq[:3], p[:3], atol=0.015)


def test_categorical_keeps_the_entropy_of_a_zipf_vocabulary():
    "Zipf vocabulary: our float64 draw keeps H(p) (lesson 08 shows, in cells of its own, float32 Gumbel-max losing it)."
    V = 4000
    p = 1 / torch.arange(1, V + 1, dtype=torch.float64); p /= p.sum()
    H = lambda q: float(-(q * q.clamp_min(1e-300).log2()).sum())
    # reveal in float64, then draw the token from p: its samples' cross-entropy under p matches H(p)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([categorical(p.expand(1000, V), g) for _ in range(20)])
    ce = -p.log2()[x]
    assert abs(ce.mean().item() - H(p)) < 4 * ce.std().item() / math.sqrt(len(x))


def test_ar_baseline_sampler_and_metrics():
    torch.manual_seed(0)
    ar = make_ar_model(50, 16, n_layer=1, n_head=2, n_embd=32)
    x = ar_sample(ar, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and (x < 50).all()
    r = ar_heldout_bits(ar, x)
    assert abs(r['bits_per_token'] - math.log2(50)) < 0.5 and r['per_position'].shape == (16,)
    assert distinct_n(torch.tensor([[1, 2, 1, 2]]), 2) == 2 / 3
    assert unigram_entropy_bits(torch.tensor([0, 1, 0, 1]), 4) == 1.0


def test_bad_inputs_give_clear_errors():
    d, A = _tiny(), AbsorbingProcess(80)
    with pytest.raises(ValueError, match=r'\[MASK\] id'):
        masked_diffusion_loss(d, A, torch.tensor([[1, 2, 80]]))
    with pytest.raises(ValueError, match='outside the vocabulary'):
        masked_diffusion_loss(d, A, torch.tensor([[1, -2, 3]]))
    with pytest.raises(ValueError, match='longer than'):
        masked_diffusion_loss(d, A, torch.zeros(2, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        masked_diffusion_loss(d, A, torch.zeros(2, 5, dtype=torch.long), t=1.5)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        A.q_sample(torch.zeros(2, 5, dtype=torch.long), -0.1)
    with pytest.raises(ValueError, match='finite'):
        A.marginal(torch.zeros(2, 5, dtype=torch.long), float('nan'))
    with pytest.raises(TypeError, match='torch.long'):
        A.q_sample(torch.zeros(2, 5), 0.5)
    with pytest.raises(ValueError, match='longer than'):
        ancestral_sample(d, A, 1, 13, 4)
    with pytest.raises(ValueError, match='s < t'):
        A.posterior(torch.tensor([1]), torch.ones(1, 80) / 80, 0.5, 0.5)
    with pytest.raises(ValueError, match='uniform process'):
        masked_diffusion_loss(d, UniformProcess(80), torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize('proc', PROCESSES)
def test_q_sample_matches_the_marginal(proc):
    P = proc(4, CosineSchedule())
    x0 = torch.full((1, 40000), 1)
    xt = P.q_sample(x0, 0.4, torch.Generator().manual_seed(0))
    freq = torch.bincount(xt.flatten(), minlength=P.n_states).double() / xt.numel()
    assert torch.allclose(freq, P.marginal(torch.tensor([1]), 0.4)[0], atol=0.01)


def test_pattern_vocabulary_score_is_a_distribution_over_words_and_tighter_than_free_cells():
    torch.manual_seed(0)
    V, L = 90, 5
    table = torch.randint(0, 3, (V, 25))
    pd = PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32).eval()
    x0 = torch.randint(0, V, (3, L)); xt = torch.full_like(x0, V); t = torch.ones(3)
    with torch.no_grad():
        assert torch.allclose(pd.word_log_probs(xt, t).exp().sum(-1), torch.ones(3, L), atol=1e-5)
        cells = pd.x0_log_prob(xt, t, x0)
        words = pd.x0_log_prob(xt, t, x0, score='vocabulary')
        both = pd.x0_log_prob(xt, t, x0, score='both')
    assert (words >= cells - 1e-5).all() and torch.allclose(both, words + cells / 25, atol=1e-4)
    with pytest.raises(ValueError, match='score'):
        pd.x0_log_prob(xt, t, x0, score='nonsense')
    with pytest.raises(ValueError, match='score'):
        PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32, score='nonsense')
    with pytest.raises(AttributeError, match='score='):   # the scoring is an argument, not a mode to flip
        pd.score = 'vocabulary'
    assert pd.default_score == pd.score == 'cells'
    built = PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32, score='vocabulary').eval()
    built.load_state_dict(pd.state_dict())
    with torch.no_grad():   # a default chosen when built is the same as naming it in the call
        assert torch.equal(built.x0_log_prob(xt, t, x0), words) and torch.equal(built.x0_log_prob(xt, t, x0, score='cells'), cells)


def test_class_conditional_denoiser_loss_bound_and_samplers():
    torch.manual_seed(0)
    A = AbsorbingProcess(10)
    d = TokenDenoiser(10, 16, n_layer=1, n_head=2, n_embd=16, n_classes=3)
    x0, labels = torch.randint(0, 10, (8, 16)), torch.arange(8) % 3
    assert torch.isfinite(masked_diffusion_loss(d, A, x0, class_label=labels))
    with pytest.raises(ValueError, match='class-conditional'):
        masked_diffusion_loss(d, A, x0)                       # a conditional denoiser needs its labels
    r = heldout_bound(d, A, x0, n_t=2, labels=labels)
    assert math.isfinite(r['bits_per_token'])
    with pytest.raises(ValueError, match='labels'):
        heldout_bound(d, A, x0, n_t=2, labels=labels[:3])
    g = torch.Generator().manual_seed(0)
    assert ancestral_sample(d, A, 8, 16, 4, g, class_label=labels)['tokens'].shape == (8, 16)
    assert maskgit_sample(d, A, 8, 16, 4, g, class_label=2)['tokens'].shape == (8, 16)
    with pytest.raises(IndexError, match='class labels'):
        ancestral_sample(d, A, 2, 16, 4, g, class_label=5)
    with pytest.raises(ValueError, match='unconditional'):
        TokenDenoiser(10, 16, n_layer=1, n_head=2, n_embd=16).logits(x0, 0.5, class_label=labels)
    # the label changes the prediction: the class embedding reaches the output
    d.eval(); xt = torch.full((1, 16), A.mask_id)
    assert not torch.allclose(d.x0_probs(xt, 1.0, class_label=0), d.x0_probs(xt, 1.0, class_label=1))


class CopyOracle(torch.nn.Module):
    "A denoiser for sequences of one repeated token: perfect once any position is visible, uniform before."
    process_kind, block_size = 'absorbing', 16
    def __init__(self, V): super().__init__(); self.vocab_size = V
    def x0_log_prob(self, x_t, t, x0, class_label=None):
        seen = (x_t != self.vocab_size).any(1, keepdim=True).expand_as(x0)
        return torch.where(seen, torch.zeros(x0.shape), torch.full(x0.shape, -math.log(self.vocab_size)))


def test_heldout_bound_is_right_on_a_known_integral_and_its_error_covers_the_t_noise():
    # The bound for the oracle is exactly log2 V per sequence: the integrand L log V t^(L-1) integrates to log V.
    V, L = 50, 16
    A, oracle = AbsorbingProcess(V), CopyOracle(V)
    data = torch.randint(0, V, (4000, 1)).expand(4000, L).contiguous()
    r = heldout_bound(oracle, A, data, n_t=2, batch_size=500)
    exact = math.log2(V) / L
    assert abs(r['bits_per_token'] - exact) < 4 * r['stderr'] and r['stderr'] < 0.1 * exact
    # every sequence draws its own times: the spread over sequences is the t noise, not zero
    small = heldout_bound(oracle, A, data[:64], n_t=2, batch_size=64)
    assert small['stderr'] > 0.02 * exact


def test_masked_mean_training_loss_matches_the_elbo_in_expectation():
    torch.manual_seed(0)
    d, A = _tiny(), AbsorbingProcess(80)
    x0 = torch.randint(0, 80, (512, 12))
    with torch.no_grad():
        elbo = masked_diffusion_loss(d, A, x0, t=torch.full((512,), 0.5), generator=torch.Generator().manual_seed(0))
        mm = masked_diffusion_loss(d, A, x0, t=torch.full((512,), 0.5), generator=torch.Generator().manual_seed(0), weighting='masked_mean')
    assert abs(mm.item() - elbo.item()) < 0.03 * elbo.item()
    with pytest.raises(ValueError, match='batch-level'):
        masked_diffusion_loss(d, A, x0, weighting='masked_mean', reduction='none')
    with pytest.raises(ValueError, match='weighting'):
        masked_diffusion_loss(d, A, x0, weighting='uniform')


def test_pattern_vocabulary_score_starts_from_the_word_prior():
    torch.manual_seed(0)
    V, L = 90, 6
    table = torch.randint(0, 3, (V, 25))
    prior = torch.distributions.Dirichlet(torch.ones(V) * 0.3).sample().clamp_min(1e-6); prior /= prior.sum()
    pd = PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32, word_log_prior=prior.log()).eval()
    xt = torch.full((1, L), V)
    with torch.no_grad():
        pd.net.head.weight.zero_()   # cells exactly uniform: the word distribution is exactly the prior
        p = pd.x0_probs(xt, torch.ones(1), score='vocabulary')[0, 0]
    assert torch.allclose(p, prior.double(), atol=1e-6)
    with pytest.raises(ValueError, match='word_log_prior'):
        PatternDenoiser(table, 3, L, word_log_prior=torch.zeros(V + 1))
    x0 = torch.randint(0, V, (1, L))
    with torch.no_grad():
        both = pd.x0_log_prob(xt, torch.ones(1), x0, score='both')
        w = pd.x0_log_prob(xt, torch.ones(1), x0, score='vocabulary'); c = pd.x0_log_prob(xt, torch.ones(1), x0, score='cells')
    assert torch.allclose(both, w + c / 25, atol=1e-5)


def test_decode_cells_finds_the_nearest_word_by_hamming_distance():
    torch.manual_seed(0)
    table = torch.randint(0, 3, (200, 25))
    pd = PatternDenoiser(table, 3, 4, n_layer=1, n_head=2, n_embd=16)
    noisy = table[torch.arange(50)].clone(); noisy[:, :2] = (noisy[:, :2] + 1) % 3   # two cells off
    ids, exact = pd.decode_cells(noisy)
    brute = (noisy[:, None] != table[None]).sum(-1)
    assert torch.equal(brute.gather(1, ids[:, None])[:, 0], brute.min(1).values) and not exact.any()
    ids, exact = pd.decode_cells(table[:50].view(5, 10, 25))
    assert torch.equal(ids, torch.arange(50).view(5, 10)) and exact.all()


class CopyDenoiser(torch.nn.Module):
    "Predicts, at every position, the first visible (unmasked) token of its row; uniform where nothing is visible."
    process_kind, block_size = 'absorbing', 16
    def __init__(self, V): super().__init__(); self.vocab_size = V
    def x0_probs(self, x_t, t, class_label=None):
        V = self.vocab_size
        seen = x_t != V
        first = torch.where(seen.any(1), seen.long().argmax(1), 0)
        tok = x_t.gather(1, first[:, None]).clamp_max(V - 1)                     # [B, 1]
        hit = F.one_hot(tok, V).double().expand(*x_t.shape, V)
        return torch.where(seen.any(1)[:, None, None], hit, torch.full_like(hit, 1 / V))


def _given(n, L, V, generator):
    "Prompts [n, L]: a 4-token prefix and one token in the middle given, the rest [MASK] (= V)."
    x = torch.full((n, L), V, dtype=torch.long)
    x[:, :4] = torch.randint(0, V, (n, 4), generator=generator)
    x[:, L // 2] = 7
    return x


@pytest.mark.parametrize('sampler', ['ancestral', 'maskgit'])
def test_conditioned_samplers_keep_the_given_tokens_and_generate_the_rest(sampler):
    d, A = _tiny(V=80, L=12), AbsorbingProcess(80)
    g = torch.Generator().manual_seed(0)
    x_init = _given(64, 12, 80, g)
    free = x_init == A.mask_id
    run = (lambda **kw: ancestral_sample(d, A, 64, 12, 12, **kw)) if sampler == 'ancestral' else \
          (lambda **kw: maskgit_sample(d, A, 64, 12, 6, **kw))
    r = run(generator=g, x_init=x_init, record=True)
    out = r['tokens']
    assert torch.equal(out[~free], x_init[~free])                    # prefix and the middle token kept exactly
    for h in r['history']: assert torch.equal(h['tokens'][~free], x_init[~free])   # ... at every step: never resampled
    assert (out < 80).all()                                           # every [MASK] position was generated
    assert out[:, 4].unique().numel() > 10 and out[:, -1].unique().numel() > 10   # the generated positions still vary
    if sampler == 'maskgit':   # the cosine schedule runs over the m positions to generate, not over the length
        m = int(free[0].sum()); still = (r['history'][0]['tokens'] == A.mask_id).sum(1)
        assert (still == math.floor(m * math.cos(math.pi / 2 / 6))).all()
    # an all-[MASK] x_init is the unconditioned sampler, draw for draw
    full = torch.full((64, 12), A.mask_id)
    assert torch.equal(run(generator=torch.Generator().manual_seed(1), x_init=full)['tokens'],
                       run(generator=torch.Generator().manual_seed(1))['tokens'])


@pytest.mark.parametrize('sampler', ['ancestral', 'maskgit'])
def test_the_denoiser_sees_the_given_tokens(sampler):
    "A denoiser that copies the first visible token: every generated position must become the given token."
    V, A, oracle = 50, AbsorbingProcess(50), CopyDenoiser(50)
    x_init = torch.full((8, 16), V); x_init[:, 5] = torch.arange(8) + 3
    g = torch.Generator().manual_seed(0)
    f = ancestral_sample if sampler == 'ancestral' else maskgit_sample
    out = f(oracle, A, 8, 16, 8, g, x_init=x_init)['tokens']
    assert torch.equal(out, (torch.arange(8) + 3)[:, None].expand(8, 16))


def test_uniform_process_conditioned_sampler_restores_the_given_tokens():
    du, U = _tiny(process='uniform', time_cond=True), UniformProcess(80)
    g = torch.Generator().manual_seed(0)
    x_init = _given(32, 12, 80, g); free = x_init == 80
    r = ancestral_sample(du, U, 32, 12, 5, g, x_init=x_init, record=True)
    for h in r['history']: assert torch.equal(h['tokens'][~free], x_init[~free])
    assert (r['tokens'] < 80).all() and r['tokens'][:, -1].unique().numel() > 5


def test_conditioned_samplers_refuse_bad_x_init():
    d, A = _tiny(), AbsorbingProcess(80)
    with pytest.raises(ValueError, match=r'shape \[n, length\]'):
        ancestral_sample(d, A, 2, 12, 4, x_init=torch.full((3, 12), 80))
    with pytest.raises(TypeError, match='torch.long'):
        maskgit_sample(d, A, 2, 12, 4, x_init=torch.full((2, 12), 80.0))
    with pytest.raises(ValueError, match=r'outside \[0, 80\]'):
        maskgit_sample(d, A, 2, 12, 4, x_init=torch.full((2, 12), 81))


def test_ar_sample_continues_a_prompt_exactly_and_reads_it():
    torch.manual_seed(0)
    ar = make_ar_model(50, 16, n_layer=2, n_head=2, n_embd=32, rope=True)
    with torch.no_grad():   # weights large enough that every output depends on the positions and the context
        for w in ar.parameters(): w.normal_(0, 0.15)
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    x = ar_sample(ar, 256, 16, torch.Generator().manual_seed(0), prompt=prompt)
    assert x.shape == (256, 16) and torch.equal(x[:, :5], prompt.expand(256, 5))    # the prompt, exactly
    assert x[:, 5].unique().numel() > 10 and x[:, -1].unique().numel() > 10        # the continuation varies
    # the continuation reads the prompt through the cache: redrawing each generated token, with the same
    # random numbers, from one full forward pass over [BOS, prompt, continuation] gives the same tokens
    # (a prompt read at the wrong positions, or only its last token, changes some of the 2,816 draws)
    with torch.no_grad(): p = F.softmax(ar(torch.cat([torch.full((256, 1), 50), x[:, :-1]], 1)).double(), -1)
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(torch.stack([categorical(p[:, k], g2) for k in range(5, 16)], 1), x[:, 5:])
    per_row = torch.randint(0, 50, (4, 3), generator=g)
    assert torch.equal(ar_sample(ar, 4, 10, g, prompt=per_row)[:, :3], per_row)
    assert torch.equal(ar_sample(ar, 4, 3, g, prompt=per_row), per_row)              # nothing left to generate
    with pytest.raises(ValueError, match='does not fit'):
        ar_sample(ar, 2, 4, prompt=prompt)
    with pytest.raises(ValueError, match='n = 3'):
        ar_sample(ar, 3, 16, prompt=per_row)
    with pytest.raises(ValueError, match='outside the vocabulary'):
        ar_sample(ar, 2, 16, prompt=torch.tensor([50]))


# ---- devices (issue 20): a tensor created without the device of its inputs fails loudly ----

def _transformer_reads_values_on_meta() -> bool:
    "Whether vtd.transformer's id range check still reads values (then nothing can run on the meta device)."
    from vtd.transformer import Transformer, TransformerConfig
    with torch.device('meta'): m = Transformer(TransformerConfig(vocab_size=4, block_size=2, n_layer=1, n_head=1, n_embd=8))
    try: m(torch.zeros(1, 2, dtype=torch.long, device='meta'))
    except RuntimeError as e: return 'meta' in str(e)
    return False


def _meta_models():
    torch.manual_seed(0)
    table = torch.randint(0, 3, (40, 25))
    with torch.device('meta'):
        tok = TokenDenoiser(40, 12, n_layer=1, n_head=2, n_embd=32, rope=True)
        cond = TokenDenoiser(40, 12, n_layer=1, n_head=2, n_embd=32, n_classes=3)
        unif = TokenDenoiser(40, 12, process='uniform', n_layer=1, n_head=2, n_embd=32, time_cond=True)
        pat = PatternDenoiser(table.to('meta'), 3, 12, n_layer=1, n_head=2, n_embd=32)
        ar = make_ar_model(40, 12, n_layer=1, n_head=2, n_embd=32)
    return tok, cond, unif, pat, ar


def test_forward_passes_and_losses_run_on_the_meta_device():
    "Models and inputs on `meta`: a tensor made on the CPU inside a forward pass or a loss fails loudly."
    if _transformer_reads_values_on_meta(): pytest.skip("vtd.transformer's id check reads values on meta (needs `not idx.is_meta`)")
    tok, cond, unif, pat, ar = _meta_models()
    A, U = AbsorbingProcess(40), UniformProcess(40)
    x0 = torch.zeros(4, 12, dtype=torch.long, device='meta')
    g = torch.Generator().manual_seed(0)
    assert masked_diffusion_loss(tok, A, x0, generator=g).is_meta
    assert masked_diffusion_loss(tok, A, x0, generator=g, weighting='masked_mean').is_meta
    assert masked_diffusion_loss(cond, A, x0, generator=g, class_label=torch.zeros(4, dtype=torch.long, device='meta')).is_meta
    assert discrete_time_loss(tok, A, x0, 10, generator=g).is_meta
    assert discrete_time_loss(unif, U, x0, 10, generator=g, hybrid_ce=0.01).is_meta
    for score in ('cells', 'vocabulary', 'both'):
        assert masked_diffusion_loss(pat, A, x0, generator=g, score=score).is_meta
    assert pat.decode_cells(torch.zeros(4, 12, 25, dtype=torch.long, device='meta'))[0].is_meta
    assert ar_loss(ar, x0).is_meta
    # one reverse step's pieces: the denoiser's draw and the uniform process's posterior
    probs = tok.x0_probs(torch.full((4, 12), 40, device='meta'), torch.ones(4))
    assert categorical(probs, g).is_meta
    assert U.posterior(x0, unif.x0_probs(x0, torch.ones(4)), torch.tensor(0.2), torch.tensor(0.4)).is_meta


def test_samplers_and_bounds_create_nothing_off_their_inputs_device():
    """Models and data on the CPU, torch's default device `meta`: any tensor a sampler or bound creates
    without naming a device lands on `meta`, and mixing it with the CPU tensors fails loudly."""
    d, A = _tiny(V=40, L=12), AbsorbingProcess(40)
    du, U = _tiny(V=40, L=12, process='uniform', time_cond=True), UniformProcess(40)
    table = torch.randint(0, 3, (40, 25), generator=torch.Generator().manual_seed(0))
    pd = PatternDenoiser(table, 3, 12, n_layer=1, n_head=2, n_embd=32)
    ar = make_ar_model(40, 12, n_layer=1, n_head=2, n_embd=32)
    x0 = torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(0))
    given = x0.clone(); given[:, 3:] = 40
    with torch.device('meta'):
        g = torch.Generator().manual_seed(0)
        assert ancestral_sample(d, A, 2, 12, 6, g, x_init=given[:2])['tokens'].device.type == 'cpu'
        assert ancestral_sample(du, U, 2, 12, 3, g, x_init=given[:2])['tokens'].device.type == 'cpu'
        assert ancestral_sample(pd, A, 2, 12, 4, g)['tokens'].device.type == 'cpu'
        assert maskgit_sample(d, A, 2, 12, 4, g, x_init=given[:2])['tokens'].device.type == 'cpu'
        assert ar_sample(ar, 2, 12, g, prompt=x0[0, :3]).device.type == 'cpu'
        assert math.isfinite(heldout_bound(d, A, x0, n_t=2)['bits_per_token'])
        assert math.isfinite(heldout_bound(du, U, x0, n_t=2, T=5)['bits_per_token'])
        assert math.isfinite(ar_heldout_bits(ar, x0)['bits_per_token'])
        assert masked_diffusion_loss(d, A, x0, generator=g).device.type == 'cpu'


def test_float32_probabilities_still_draw_exactly():
    "MPS has no float64, so its probabilities arrive in float32 and the draw is made on the CPU: the Zipf entropy is kept."
    V = 4000
    p = 1 / torch.arange(1, V + 1, dtype=torch.float64); p /= p.sum()
    H = float(-(p * p.log2()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.cat([categorical(p.float().expand(1000, V), g) for _ in range(20)])
    ce = -p.log2()[x]
    assert abs(ce.mean().item() - H) < 4 * ce.std().item() / math.sqrt(len(x))
    assert (x >= V // 2).float().mean() > 0.05     # the rare half of the vocabulary is drawn


def test_the_baseline_lives_in_vtd_autoregressive_only():
    "The AR baseline's one home is vtd.autoregressive: vtd.diffusion neither defines nor forwards its names."
    import vtd.diffusion as D, vtd.autoregressive as A
    for name in ('make_ar_model', 'ar_loss', 'ar_heldout_bits', 'ar_sample', 'transformer_flops'):
        assert not hasattr(D, name) and name in A.__all__, name
    assert 'TextModelConfig' not in dir(D)   # lesson 08's settings live in the lesson
    cfg = make_ar_model(50, 16, n_layer=2, n_head=2, n_embd=32).cfg
    assert transformer_flops(cfg, 3, 16) == 3 * transformer_flops(cfg, 1, 16) > transformer_flops(cfg, 1, 8)


def test_samplers_take_the_pattern_scoring_as_an_argument():
    "score= reaches the samplers' draws: 'vocabulary' draws words (every draw exactly a word), 'cells' free cells; 'both' is refused."
    torch.manual_seed(0)
    V, L = 60, 6
    table = torch.randint(0, 3, (V, 25))
    pd = PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32).eval()
    A = AbsorbingProcess(V)
    by_arg = ancestral_sample(pd, A, 8, L, L, torch.Generator().manual_seed(0), score='vocabulary')
    built = PatternDenoiser(table, 3, L, n_layer=1, n_head=2, n_embd=32, score='vocabulary').eval()
    built.load_state_dict(pd.state_dict())
    by_default = ancestral_sample(built, A, 8, L, L, torch.Generator().manual_seed(0))
    assert torch.equal(by_arg['tokens'], by_default['tokens']) and by_arg['exact_share'] == 1.0
    cells = ancestral_sample(pd, A, 64, L, L, torch.Generator().manual_seed(0))
    assert cells['exact_share'] < 0.5 and pd.default_score == 'cells'   # an untrained model's free cells are rarely a word
    mg = maskgit_sample(pd, A, 8, L, 4, torch.Generator().manual_seed(0), score='vocabulary')
    assert mg['exact_share'] == 1.0 and (mg['tokens'] < V).all()
    for sampler in (ancestral_sample, maskgit_sample):
        with pytest.raises(ValueError, match="'both'"):
            sampler(pd, A, 2, L, 2, score='both')
    tok = TokenDenoiser(V, L, n_layer=1, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match='PatternDenoiser'):
        ancestral_sample(tok, A, 2, L, 2, score='vocabulary')


def test_antithetic_bound_pairs_each_time_with_its_mirror():
    """A loss equal to the time drawn averages to exactly 1/2 per sequence (each t meets 1 - t), per block too; the model
    is scored in eval mode and left in the mode it came in; odd n_t is refused."""
    from vtd.diffusion import antithetic_bound
    data = torch.zeros(10, 8, dtype=torch.long)
    model, seen, modes = nn.Linear(1, 1), [], []
    def loss_at(x0, t, g, rows):
        seen.append(t.clone()); modes.append(model.training)
        return t if t.ndim == 1 else t.mean(1)
    for parts in (None, 4):
        r = antithetic_bound(model.train(), loss_at, data, n_t=6, batch_size=4, times_per_seq=parts)
        assert r['n_seqs'] == 10 and r['n_t'] == 6
        assert math.isclose(r['bits_per_token'], 0.5 / math.log(2), rel_tol=1e-6) and r['stderr'] < 1e-6   # times are float32
        assert model.training and modes and not any(modes)   # eval mode inside, training mode restored after
    assert len({round(float(t.flatten()[0]), 6) for t in seen}) > 3   # the times vary: stratified draws, not one fixed t
    with pytest.raises(ValueError, match='even number'): antithetic_bound(model, loss_at, data, n_t=3)
    def failing_loss(x0, t, g, rows): raise RuntimeError('planted')
    with pytest.raises(RuntimeError, match='planted'): antithetic_bound(model.train(), failing_loss, data)
    assert model.training   # restored on an error too


def test_pattern_embedding_is_the_sum_of_its_cells_embeddings_and_saves_only_them():
    "The one-hot product gives, for every word and [MASK], the sum over its cells of the (cell, colour) embedding."
    from vtd.diffusion import PatternEmbedding
    torch.manual_seed(0)
    table = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0], [1, 0, 0, 2]])
    emb = PatternEmbedding(table, 3, 8)
    idx = torch.tensor([[0, 3, 2, 1]])                        # 3 is [MASK]: its own colour in every cell
    full = torch.cat([table, torch.full((1, 4), 3)])
    expected = torch.stack([emb.cells[torch.arange(4), row].sum(0) for row in full])[idx]
    assert torch.allclose(emb(idx), expected, atol=1e-6)
    emb(idx).sum().backward()                                 # every cell embedding a word uses gets its gradient
    assert emb.cells.grad[0, 0].abs().sum() > 0 and emb.cells.grad[0, 3].abs().sum() > 0
    assert set(emb.state_dict()) == {'table', 'cells'}, "the one-hot table is rebuilt, not saved"
