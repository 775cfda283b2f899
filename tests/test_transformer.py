"""vtd.transformer: causal masking, the key/value cache (logits and sampling), rotary positions, the input-embedding
hook, the one sampling loop `generate`, bad input, and every forward pass on the meta device."""
from dataclasses import asdict

import pytest
import torch
from torch import nn

from vtd.transformer import Transformer, TransformerConfig, generate, rotate, sample_logits, timestep_embedding


def gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return Transformer(TransformerConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize('i', [0, 5, 15])
@pytest.mark.parametrize('rope', [False, True])
def test_causal_mask_change_at_i_never_moves_earlier_logits(i, rope):
    model = gpt(rope=rope)
    x = torch.randint(0, 30, (3, 16)); x2 = x.clone(); x2[:, i] = (x2[:, i] + 1) % 30
    with torch.no_grad(): a, b = model(x), model(x2)
    assert torch.allclose(a[:, :i], b[:, :i], atol=1e-6)
    assert not torch.allclose(a[:, i:], b[:, i:])


def test_bidirectional_switch_sees_the_future():
    bi = gpt(causal=False, n_out=29, time_cond=True)
    x = torch.randint(0, 30, (2, 16)); x2 = x.clone(); x2[:, 9] = (x2[:, 9] + 1) % 30
    t = torch.rand(2)
    with torch.no_grad(): a, b = bi(x, t=t), bi(x2, t=t)
    assert a.shape == (2, 16, 29) and not torch.allclose(a[:, :9], b[:, :9])
    with pytest.raises(ValueError, match='causal'): bi.new_cache()


@pytest.mark.parametrize('rope', [False, True])
def test_kv_cache_gives_the_same_logits(rope):
    model = gpt(1, vocab_size=20, n_layer=3, n_head=4, rope=rope)
    x = torch.randint(0, 20, (2, 16))
    with torch.no_grad():
        full = model(x); cache = model.new_cache()
        steps = torch.cat([model(x[:, i:i + 1], cache=cache, pos_offset=i) for i in range(16)], 1)
        cache2 = model.new_cache()  # a prefix in one go, then one token at a time
        mixed = torch.cat([model(x[:, :5], cache=cache2), *[model(x[:, i:i + 1], cache=cache2, pos_offset=i) for i in range(5, 16)]], 1)
    assert torch.allclose(steps, full, atol=1e-5) and torch.allclose(mixed, full, atol=1e-5)


def test_rotary_positions_are_relative():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    dot = lambda i, j: (rotate(q, torch.tensor([i])) * rotate(k, torch.tensor([j]))).sum().item()
    assert abs(dot(3, 1) - dot(10, 8)) < 1e-4 and abs(dot(3, 1) - dot(3, 2)) > 1e-4
    assert gpt(rope=True).wpe is None
    with pytest.raises(ValueError, match='even head size'):
        TransformerConfig(vocab_size=30, block_size=16, n_head=4, n_embd=12, rope=True)


class Patterns(nn.Module):
    "Each id is a fixed vector: an input-embedding hook with no weight matrix."
    def __init__(self, vocab_size=30, n_embd=32):
        super().__init__(); self.register_buffer('table', torch.randn(vocab_size, n_embd, generator=torch.Generator().manual_seed(0)))
    def forward(self, idx): return self.table[idx]


def test_embed_hook_is_what_the_network_reads():
    torch.manual_seed(0)
    hook = Patterns()
    model = Transformer(TransformerConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=32, tie_weights=False), embed=hook).eval()
    assert model.wte is hook and not isinstance(model.wte, nn.Embedding)
    hook.table[4] = hook.table[3]
    a = torch.full((1, 8), 3); b = a.clone(); b[0, 1::2] = 4
    with torch.no_grad(): assert torch.equal(model(a), model(b))            # ids 3 and 4 read the same pattern
    hook.table[4] = -hook.table[3]     # (a constant shift would not do: LayerNorm removes it)
    with torch.no_grad(): assert not torch.allclose(model(a), model(b))     # and the pattern is what matters
    with pytest.raises(ValueError, match='tie_weights=False'):
        Transformer(TransformerConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=32), embed=Patterns())


def test_bad_input_is_named():
    model = gpt(n_classes=3)
    with pytest.raises(TypeError, match='torch.long'): model(torch.zeros(1, 4), class_label=0)
    with pytest.raises(ValueError, match=r'\[batch, time\]'): model(torch.zeros(4, dtype=torch.long), class_label=0)
    with pytest.raises(ValueError, match='exceeds the context'): model(torch.zeros(1, 17, dtype=torch.long), class_label=0)
    with pytest.raises(IndexError, match=r'\[30\]'): model(torch.full((1, 4), 30), class_label=0)
    with pytest.raises(IndexError, match='class labels'): model(torch.zeros(1, 4, dtype=torch.long), class_label=3)
    with pytest.raises(ValueError, match='pass class_label'): model(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='divisible'): TransformerConfig(vocab_size=3, block_size=4, n_head=3, n_embd=16)


def test_generate_keeps_the_prompt_and_each_step_sees_exactly_its_past():
    model = gpt(2, block_size=24)
    prompt = torch.randint(0, 30, (3, 4))
    greedy = generate(model, prompt, 12, pick=lambda l: l.argmax(-1))
    assert greedy.shape == (3, 16) and torch.equal(greedy[:, :4], prompt) and greedy.dtype == torch.long
    with torch.no_grad(): assert torch.equal(model(greedy[:, :-1])[:, 3:].argmax(-1), greedy[:, 4:])
    assert torch.equal(generate(model, prompt, 12, pick=lambda l: l.argmax(-1), use_cache=False), greedy)
    assert torch.equal(generate(model, prompt, 12, pick=lambda l: sample_logits(l, top_k=1)), greedy)
    assert torch.equal(generate(model, prompt, 0), prompt)
    assert model.training is False


def test_generate_with_and_without_cache_draws_the_same_tokens():
    model = gpt(3)
    draw = lambda c: generate(model, torch.zeros(20, 1, dtype=torch.long), 15,
                              pick=lambda l, g=torch.Generator().manual_seed(7): sample_logits(l, 1.3, generator=g), use_cache=c)
    a, b = draw(True), draw(False)
    assert (a == b).float().mean() > 0.95 and not (a[:, 1:] == a[0, 1:]).all()
    # conditioning goes to every pass: a class-conditional network gives other draws for other classes
    cond = gpt(3, n_classes=4)
    g = lambda: torch.Generator().manual_seed(0)
    x0 = generate(cond, torch.zeros(30, 1, dtype=torch.long), 8, pick=lambda l, gg=g(): sample_logits(l, generator=gg), class_label=0)
    x1 = generate(cond, torch.zeros(30, 1, dtype=torch.long), 8, pick=lambda l, gg=g(): sample_logits(l, generator=gg), class_label=3)
    assert not torch.equal(x0, x1)


@pytest.mark.parametrize('rope', [False, True])
def test_generate_slides_its_window_past_the_context(rope):
    "Any length: each token past the context is the pick of the window the docstring names, with and without the cache."
    model, W = gpt(4, rope=rope), 16
    greedy = lambda l: l.argmax(-1)
    prompt = torch.randint(0, 30, (3, 5))
    def reference(x, n, sink, window_of):
        "One full pass per token over the window `window_of(length)` (start of its recent part) says."
        for _ in range(n):
            start = window_of(x.shape[1])
            ctx = x if x.shape[1] <= W else torch.cat([x[:, :sink], x[:, start:]], 1)
            with torch.no_grad(): x = torch.cat([x, model(ctx)[:, -1].argmax(-1, keepdim=True)], 1)
        return x
    fullest = reference(prompt, 40, 1, lambda n: n - (W - 1))
    for use_cache in (False, True):
        out = generate(model, prompt, 40, pick=greedy, use_cache=use_cache, sink=1)
        assert out.shape == (3, 45) and torch.equal(out[:, :5], prompt) and torch.equal(out, fullest), use_cache
    # keep=10: the cache is re-primed from the sink and the last 10 tokens, then filled to 16 positions token by token
    state = {}
    def primed_at(n, keep=10, sink=1):
        if n <= W: return 0
        if state.get('pos', W) >= W: state['start'], state['pos'] = n - keep, sink + keep
        else: state['pos'] += 1
        return state['start']
    assert torch.equal(generate(model, prompt, 40, pick=greedy, keep=10, sink=1), reference(prompt, 40, 1, primed_at))
    long_prompt = torch.randint(0, 30, (2, 30))                  # a prompt longer than the context is kept whole
    out = generate(model, long_prompt, 5, pick=greedy)
    assert out.shape == (2, 35) and torch.equal(out[:, :30], long_prompt)


def test_generate_and_sample_logits_refuse_bad_input():
    model = gpt()
    with pytest.raises(ValueError, match='keep'): generate(model, torch.zeros(2, 4, dtype=torch.long), 14, keep=0)
    with pytest.raises(ValueError, match='keep'): generate(model, torch.zeros(2, 4, dtype=torch.long), 14, keep=16, sink=1)
    with pytest.raises(ValueError, match='sink'): generate(model, torch.zeros(2, 4, dtype=torch.long), 14, sink=5)
    with pytest.raises(ValueError, match='prompt'): generate(model, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match='prompt'): generate(model, torch.zeros(2, 1), 3)
    with pytest.raises(ValueError, match='causal'): generate(gpt(causal=False), torch.zeros(2, 1, dtype=torch.long), 3)
    with pytest.raises(ValueError, match='temperature'): sample_logits(torch.zeros(2, 5), temperature=0)
    with pytest.raises(ValueError, match='top_k'): sample_logits(torch.zeros(2, 5), top_k=0)
    probs = torch.tensor([[0.0, 10.0, 9.0, -5.0]])
    picks = torch.stack([sample_logits(probs, top_k=2, generator=torch.Generator().manual_seed(s)) for s in range(50)])
    assert set(picks.flatten().tolist()) == {1, 2}                                   # top-2: only the two likeliest


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0.0, 0.25, 1.0]), 16)
    assert e.shape == (3, 16) and torch.allclose(e[0, :8], torch.ones(8)) and not torch.allclose(e[1], e[2])


@pytest.mark.parametrize('kw', [dict(), dict(rope=True), dict(causal=False, time_cond=True, n_classes=3, n_out=29),
                                dict(tie_weights=False)])
def test_forward_cache_and_generate_on_the_meta_device(kw):
    "Every tensor created inside the network must follow its input's device: on `meta`, a CPU tensor fails loudly."
    with torch.device('meta'):
        model = Transformer(TransformerConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw))
        x = torch.randint(0, 30, (2, 16))
        cond = dict(t=torch.rand(2), class_label=torch.randint(0, 3, (2,))) if kw.get('time_cond') else {}
    out = model(x, **cond)
    assert out.is_meta and out.shape == (2, 16, model.cfg.n_out)
    out.float().mean().backward()                                   # the backward pass too
    if model.cfg.causal:
        cache = model.new_cache()
        assert model(x[:, :4], cache=cache).is_meta and model(x[:, 4:5], cache=cache, pos_offset=4).is_meta
        y = generate(model, x[:, :2], 6)
        assert y.is_meta and y.shape == (2, 8)


def test_meta_test_catches_a_tensor_left_on_the_cpu(monkeypatch):
    "The meta test can fail: plant a device-less torch.arange in the forward pass and it does."
    import vtd.transformer as T
    real = T.SelfAttention.forward
    def planted(self, x, cache=None, pos_offset=0):
        return real(self, x, cache, pos_offset) + torch.arange(x.shape[-1]).float()   # on the CPU
    monkeypatch.setattr(T.SelfAttention, 'forward', planted)
    with torch.device('meta'):
        model = Transformer(TransformerConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=32))
        x = torch.randint(0, 30, (2, 16))
    with pytest.raises((RuntimeError, NotImplementedError)):
        model(x)
