"Unit tests for vtd.lm: config, tokenizers, the model's fit/score/generate/infill/save/load, resume, sharding, devices."
import math, warnings

import pytest
import torch.nn.functional as F
import torch

from vtd.core import CheckpointError, save_checkpoint
from vtd.data import DataFileError, read_corpus
from vtd.lm import (LMConfig, VisualTokenLM, WordTokenizer, BPETokenizer, split_corpus, as_sequences,
                    train_lm, _Objective, lr_factor)

TEXT = ("first citizen : before we proceed any further , hear me speak . all : speak , speak . "
        "first citizen : you are all resolved rather to die than to famish ? all : resolved . resolved . ") * 12
TINY = LMConfig(seq_len=8, vocab_size=60, n_layer=1, n_head=2, n_embd=16, batch_size=8, epochs=1, n_valid=8, warmup=2)


def tiny(**kw):
    torch.manual_seed(0)
    return VisualTokenLM.build(TEXT, TINY.replace(**kw))


def quiet_fit(lm, **kw):
    return lm.fit(TEXT, show_progress=False, log=lambda *a: None, **kw)


def test_config_checks_names_and_fills_defaults_by_kind():
    with pytest.raises(ValueError, match='model must be one of'): LMConfig(model='gpt')
    with pytest.raises(ValueError, match='patterns must be one of'): LMConfig(patterns='fancy')
    with pytest.raises(ValueError, match='autoregressive baseline reads token embeddings'): LMConfig(model='ar', patterns='arbitrary')
    with pytest.raises(ValueError, match='byte-level BPE needs'): LMConfig(tokenizer='bpe', vocab_size=100)
    assert (LMConfig().lr, LMConfig().dropout, LMConfig(model='ar').lr, LMConfig(model='ar').dropout) == (3e-3, 0.0, 1e-3, 0.1)
    assert LMConfig(lr=5e-4).lr == 5e-4
    assert lr_factor(0.0, 0, 10) == pytest.approx(0.1) and lr_factor(1.0, 100, 10) == pytest.approx(0.1)


def test_word_tokenizer_round_trip_and_unknown_words_are_named():
    tok = WordTokenizer.train(TEXT, 40)
    assert tok.decode(tok.encode("you are all resolved .")) == "you are all resolved."
    with pytest.warns(UserWarning, match=r"\['zyzzyva'\]"):
        ids = tok.encode("you are zyzzyva", warn=True)
    assert ids[-1].item() == tok.unk_id


def test_bpe_tokenizer_encodes_anything_without_unk():
    tok = BPETokenizer.train(TEXT, 300)
    s = "Coriolanus wrote C++ at 3am: naïve café ☃"
    assert tok.decode(tok.encode(s)) == s and tok.unk_id is None and len(tok) <= 300


def test_split_holds_out_the_end_at_a_space():
    a, b = split_corpus("one two three four five six seven eight nine ten", 0.3)
    assert a + b == "one two three four five six seven eight nine ten" and b.startswith(' ') and len(b) < len(a)
    assert as_sequences(torch.arange(10), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_corpus_errors_are_clear(tmp_path):
    with pytest.raises(DataFileError, match='does not exist'): read_corpus(tmp_path / 'nope.txt')
    with pytest.raises(DataFileError, match='is a directory'): read_corpus(tmp_path)
    (tmp_path / 'e.txt').write_text(' \n'); (tmp_path / 'b.txt').write_bytes(b'\xff\xfe\x00bad')
    with pytest.raises(DataFileError, match='is empty'): read_corpus(tmp_path / 'e.txt')
    with pytest.raises(DataFileError, match='not UTF-8'): read_corpus(tmp_path / 'b.txt')
    with pytest.raises(DataFileError, match='fewer than one sequence'): VisualTokenLM.build("to be or not", TINY)


@pytest.mark.parametrize('kw', [dict(), dict(model='ar'), dict(patterns='arbitrary'), dict(tokenizer='bpe', vocab_size=280),
                                dict(model='block', block_size=2)], ids=['diffusion', 'ar', 'patterns', 'bpe', 'block'])
def test_fit_score_generate_keep_the_prompt(kw):
    lm = quiet_fit(tiny(**kw))
    h = lm.history
    assert h['steps'] > 0 and len(h['valid_bits']) == 1 and math.isfinite(h['best_bits'])
    s = lm.score(TEXT[-400:], n_t=2)
    assert math.isfinite(s['bits_per_word']) and s['uniform_bits_per_token'] == pytest.approx(math.log2(lm.vocab_size))
    assert s['measure'].startswith({'ar': 'exact', 'block': 'block diffusion'}.get(lm.cfg.model, 'diffusion'))
    prompt = "first citizen : you" if lm.cfg.tokenizer == 'word' else "first"
    p = lm.encode_prompt(prompt)
    for sampler in ('ancestral', 'maskgit'):
        r = lm.sample(prompt, length=8, steps=4, sampler=sampler, num_samples=5, seed=1)
        assert r['tokens'].shape == (5, 8) and (r['tokens'][:, :len(p)] == p).all()
        assert (r['tokens'] < lm.vocab_size).all() and len(r['texts']) == 5
    assert lm.generate(prompt, length=8, seed=3) == lm.generate(prompt, length=8, seed=3)


def test_prompt_errors_and_infill():
    lm = quiet_fit(tiny())
    with pytest.raises(ValueError, match='more than the 8 to generate'): lm.generate("speak " * 9)
    for kw, msg in ((dict(length=0), 'length must be a positive'), (dict(length=-3), 'length must be a positive'),
                    (dict(block=8), r'block must be in \[1, 7\]'), (dict(block=0), 'block must be'),
                    (dict(temperature=-1.0), 'temperature must be >= 0'), (dict(top_k=0), 'top_k must be'),
                    (dict(num_samples=0), 'num_samples')):
        with pytest.raises(ValueError, match=msg): lm.generate(**kw)
    with pytest.raises(ValueError, match="sampler must be"): lm.generate(sampler='beam')
    with pytest.warns(UserWarning, match='zyzzyva'): lm.generate("zyzzyva speak", length=8)
    r = lm.infill("you are ___ resolved ___ to die", num_samples=3)
    x = lm.tokenizer.encode("you are all resolved rather to die")
    keep = torch.ones(len(x), dtype=torch.bool); keep[r['holes']] = False
    assert r['holes'] == [2, 4] and (r['tokens'][:, keep] == x[keep]).all() and len(r['filled'][0]) == 2
    assert (r['tokens'] != lm.process.mask_id).all()
    with pytest.raises(ValueError, match='no blank'): lm.infill("no blank here")
    with pytest.raises(ValueError, match='cannot infill'): tiny(model='ar').infill("you ___ all")


@pytest.mark.parametrize('model', ['diffusion', 'ar'])
def test_any_length_keeps_the_prompt_and_conditions_each_block_on_the_last_tokens(model, monkeypatch):
    lm = tiny(model=model)                                              # context 8
    prompt = "first citizen : you are all resolved rather to die"       # 10 tokens: longer than the context
    p = lm.encode_prompt(prompt)
    r = lm.sample(prompt, length=40, steps=3, num_samples=2, block=3, seed=2)
    assert r['tokens'].shape == (2, 40) and (r['tokens'][:, :len(p)] == p).all() and (r['tokens'] < lm.vocab_size).all()
    assert r['texts'][0].startswith('first citizen: you are all resolved rather to die')
    if model == 'ar':
        # block 1 is nanoGPT's window: each token the argmax given <bos> and the 7 tokens before it
        g = lm.sample(prompt, length=30, temperature=0, block=1, seed=0)['tokens'][0]
        with torch.no_grad():
            for i in range(len(p), 30):
                ctx = torch.cat([torch.tensor([lm.vocab_size]), g[max(0, i - 7):i]])[None]
                assert lm.net(ctx)[0, -1].argmax().item() == g[i].item(), i
        return
    import vtd.lm as vlm
    windows, real = [], vlm.ancestral_sample
    monkeypatch.setattr(vlm, 'ancestral_sample', lambda *a, **k: windows.append(k['x_init'].clone()) or real(*a, **k))
    r = lm.sample(prompt, length=24, steps=3, num_samples=2, block=3, seed=2)
    x, M = r['tokens'], lm.process.mask_id
    # 10 prompt tokens then blocks of 3 new ones, each window the 5 tokens before it, and a last block of 2 beside 6
    assert [int((w == M).sum(1)[0]) for w in windows] == [3, 3, 3, 3, 2] and all(w.shape[1] == 8 for w in windows)
    at = len(p)
    for w in windows:
        n_new = int((w == M).sum(1)[0])
        assert (w[:, -n_new:] == M).all() and torch.equal(w[:, :-n_new], x[:, at - (8 - n_new):at]); at += n_new
    h = lm.sample(prompt, length=20, steps=2, record=True, block=4)['history']
    assert h[-1]['tokens'].shape == (1, 20) and [e['step'] for e in h] == list(range(1, len(h) + 1))
    assert all(e['tokens'].shape == e['confidence'].shape for e in h) and len({e['tokens'].shape[1] for e in h}) > 1


@pytest.mark.parametrize('model', ['diffusion', 'ar', 'block'])
def test_greedy_at_temperature_zero_and_top_k(model):
    lm = quiet_fit(tiny(model=model))
    kw = dict(length=20, steps=4, sampler='maskgit', num_samples=3, block=4)
    greedy = [lm.sample("first citizen", temperature=0, seed=s, **kw)['tokens'] for s in (0, 1)]
    assert torch.equal(*greedy) and (greedy[0][0] == greedy[0][1]).all()          # no draw is left to chance
    top1 = [lm.sample("first citizen", top_k=1, seed=s, **kw)['tokens'] for s in (0, 1)]
    assert torch.equal(*top1)
    if model == 'ar': assert torch.equal(top1[0], greedy[0])
    drawn = lm.sample("first citizen", seed=0, **kw)['tokens']
    assert not torch.equal(drawn, greedy[0]) and torch.equal(drawn, lm.sample("first citizen", seed=0, **kw)['tokens'])


def test_save_load_round_trip_and_refusals(tmp_path):
    lm = quiet_fit(tiny(patterns='arbitrary'))
    lm.save(tmp_path / 'lm.pt')
    back = VisualTokenLM.load(tmp_path / 'lm.pt', device='cpu')
    assert back.cfg == lm.cfg and torch.equal(back.pattern_table, lm.pattern_table)
    assert back.generate("you are", length=8, seed=2) == lm.generate("you are", length=8, seed=2)
    with pytest.raises(CheckpointError, match='n_layer'): VisualTokenLM.load(tmp_path / 'lm.pt', expected_config=lm.cfg.replace(n_layer=2))
    save_checkpoint(tmp_path / 'other.pt', torch.nn.Linear(2, 2), {'a': 1}, kind='codebook')
    with pytest.raises(CheckpointError, match="'codebook' checkpoint, expected 'vtd-lm'"): VisualTokenLM.load(tmp_path / 'other.pt')
    torch.save({'config': {'hidden_dim': None}, 'model': torch.nn.Linear(2, 2)}, tmp_path / 'seed.pt')
    with pytest.raises(CheckpointError): VisualTokenLM.load(tmp_path / 'seed.pt')
    with pytest.raises(CheckpointError, match='no checkpoint'): VisualTokenLM.load(tmp_path / 'none.pt')
    with pytest.raises(ValueError, match='unknown device'): VisualTokenLM.load(tmp_path / 'lm.pt', device='tpu')


@pytest.mark.parametrize('model', ['diffusion', 'ar', 'block'])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, model):
    cfg = dict(model=model, epochs=3)
    whole = quiet_fit(tiny(**cfg), out=tmp_path / 'whole', keep_best=False)
    part = quiet_fit(tiny(**cfg), out=tmp_path / 'part', keep_best=False, stop_at_step=whole.history['steps'] // 2 + 1)
    assert part.history['interrupted'] and part.history['steps'] < whole.history['steps']
    again = VisualTokenLM.load(tmp_path / 'part' / 'last.pt')
    assert again.run_state['step'] == part.history['steps']
    quiet_fit(again, out=tmp_path / 'part', resume=again.run_state, keep_best=False)
    assert again.history['steps'] == whole.history['steps'] and not again.history['interrupted']
    for (k, a), b in zip(whole.net.state_dict().items(), again.net.state_dict().values()): assert torch.equal(a, b), k
    assert again.history['valid_bits'] == whole.history['valid_bits']
    assert {p.name for p in (tmp_path / 'whole').iterdir()} >= {'best.pt', 'last.pt', 'history.json', 'loss.png', 'samples.txt'}


@pytest.mark.parametrize('kw', [dict(), dict(model='ar'), dict(patterns='arbitrary'), dict(model='block', block_size=2)],
                         ids=['diffusion', 'ar', 'patterns', 'block'])
def test_sharded_objective_sums_to_the_global_batch(kw):
    "What DDP relies on: the mean over 2 ranks of each rank's loss on its rows is the 1-process loss, and so is the gradient."
    lm = tiny(dropout=0.0, **kw)
    x0 = as_sequences(lm.tokenizer.encode(TEXT), 8)[:8]
    obj = _Objective(lm)
    def loss_and_grad(rank, world):
        lm.net.zero_grad(); loss = obj(x0, 123, rank, world); loss.backward()
        return loss.item(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in lm.net.parameters()]
    l1, g1 = loss_and_grad(0, 1)
    (la, ga), (lb, gb) = loss_and_grad(0, 2), loss_and_grad(1, 2)
    assert (la + lb) / 2 == pytest.approx(l1, rel=1e-5)
    for a, b, c in zip(ga, gb, g1): assert torch.allclose((a + b) / 2, c, atol=1e-6)


@pytest.mark.parametrize('kw', [dict(), dict(model='ar'), dict(patterns='arbitrary'), dict(model='block', block_size=2)],
                         ids=['diffusion', 'ar', 'patterns', 'block'])
def test_forward_and_loss_on_the_meta_device(kw):
    "A tensor the model's loss or forward creates on the CPU fails loudly on meta."
    lm = tiny(**kw)
    table = lm.pattern_table
    with torch.device('meta'):
        meta = VisualTokenLM(lm.cfg, lm.tokenizer, torch.zeros(lm.vocab_size), None if table is None else table.to('meta'))
    x0 = torch.zeros(4, 8, dtype=torch.long, device='meta')
    loss = _Objective(meta)(x0, 0)
    assert loss.device.type == 'meta' and loss.shape == ()


# --- Issue 28's training items: random windows, decay on matrices, no unused parameters, eval_every, SIGTERM ---
from vtd.lm import random_windows


def test_random_windows_differ_between_epochs_and_repeat_with_the_seed():
    ids = torch.arange(103)
    draw = lambda epoch: random_windows(ids, 8, torch.Generator().manual_seed(7919 + epoch))
    firsts = {int(draw(e)[0, 0]) for e in range(6)}
    assert len(firsts) > 1                                        # other offsets, so other windows, across epochs
    for e in range(6):
        w = draw(e)
        assert torch.equal(w, draw(e)) and w.shape == (12, 8)      # the same with the seed; as many windows every epoch
        assert torch.equal(w.flatten(), torch.arange(int(w[0, 0]), int(w[0, 0]) + 96))   # consecutive, non-overlapping
    assert random_windows(torch.arange(8), 8).tolist() == [list(range(8))]
    with pytest.raises(DataFileError, match='fewer than one sequence'): random_windows(torch.arange(5), 8)


@pytest.mark.parametrize('kw', [dict(), dict(model='ar'), dict(patterns='arbitrary'), dict(model='block', block_size=2)],
                         ids=['diffusion', 'ar', 'patterns', 'block'])
def test_every_trained_parameter_gets_a_gradient_so_ddp_needs_no_unused_search(kw):
    lm = tiny(**kw)
    x0 = as_sequences(lm.tokenizer.encode(TEXT), 8)[:8]
    _Objective(lm)(x0, 1).backward()
    assert [n for n, p in lm.net.named_parameters() if p.requires_grad and p.grad is None] == []


def test_the_optimiser_is_nanogpts_adamw():
    "Decay on matrices only, and beta2 = 0.95: with 0.999 the default diffusion run jumped from 6.0 to 12.6 nats at step 165 (09)."
    from vtd.core import Callback
    seen = []
    class Spy(Callback):
        def before_fit(self, learn):
            seen.extend((g['weight_decay'], g['betas'], {p.dim() for p in g['params']}) for g in learn.opt.param_groups)
    quiet_fit(tiny(model='ar', weight_decay=0.1), cbs=[Spy()], stop_at_step=1)
    assert seen == [(0.1, (0.9, 0.95), {2}), (0.0, (0.9, 0.95), {1})]


def test_eval_every_scores_and_checkpoints_every_n_steps(tmp_path):
    lm = quiet_fit(tiny(eval_every=4, epochs=2), out=tmp_path / 'run', keep_best=False)
    h, steps = lm.history, lm.history['steps']
    assert h['valid_step'] == list(range(4, steps + 1, 4)) + ([steps] if steps % 4 else [])
    assert VisualTokenLM.load(tmp_path / 'run' / 'last.pt').run_state['step'] == steps
    with pytest.raises(ValueError, match='eval_every must be >= 1'): LMConfig(eval_every=0)


def test_a_run_saved_with_other_optimiser_groups_is_refused_with_the_reason(tmp_path):
    lm = quiet_fit(tiny(), out=tmp_path / 'run', keep_best=False, stop_at_step=2)
    run = VisualTokenLM.load(tmp_path / 'run' / 'last.pt').run_state
    opt = run['optimizer']
    old = {**run, 'optimizer': {'state': opt['state'], 'param_groups': [{**opt['param_groups'][0],
                                'params': [i for g in opt['param_groups'] for i in g['params']]}]}}
    with pytest.raises(CheckpointError, match='older vtd'): quiet_fit(tiny(), resume=old)


def test_sigterm_leaves_a_resumable_last_pt_and_the_resumed_run_ends_with_the_same_weights(tmp_path):
    import os, signal, subprocess, sys, time
    from pathlib import Path
    corpus = tmp_path / 'c.txt'; corpus.write_text(TEXT)
    args = ['train', str(corpus), '--seq-len', '8', '--vocab-size', '60', '--n-layer', '1', '--n-head', '2', '--n-embd', '16',
            '--batch-size', '8', '--epochs', '12', '--no-progress', '--samples', '0']
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': str(Path(__file__).resolve().parent.parent) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    whole = subprocess.run([sys.executable, '-m', 'vtd.cli', *args, '--out', str(tmp_path / 'whole')], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([sys.executable, '-m', 'vtd.cli', *args, '--out', str(tmp_path / 'cut')], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (tmp_path / 'cut' / 'history.json').exists() and proc.poll() is None and time.time() - t0 < 120: time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)                          # what a cluster's scheduler sends before it kills a job
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and 'SIGTERM' in out and 'resumable' in out, out
    cut = VisualTokenLM.load(tmp_path / 'cut' / 'last.pt')
    assert 0 < cut.run_state['step'] < 12 * 7
    again = subprocess.run([sys.executable, '-m', 'vtd.cli', 'train', str(corpus), '--out', str(tmp_path / 'cut'), '--resume',
                            '--no-progress'], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = (VisualTokenLM.load(tmp_path / d / 'last.pt') for d in ('whole', 'cut'))
    assert a.run_state['step'] == b.run_state['step']
    for (k, x), y in zip(a.net.state_dict().items(), b.net.state_dict().values()): assert torch.equal(x, y), k

def test_diffusion_draws_keep_the_top_k_and_greedy_takes_the_argmax():
    from vtd.diffusion import _sharpen, _draw_x0
    p = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    assert torch.allclose(_sharpen(p, 1.0, 2), torch.tensor([[0.0, 0.625, 0.375, 0.0]]))
    assert torch.equal(_sharpen(p, 0.0), p) and torch.equal(_sharpen(p, 1.0), p)
    with pytest.raises(ValueError, match='temperature'): _sharpen(p, -1.0)
    lm = tiny()
    x = torch.full((6, 8), lm.process.mask_id)
    probs = lm.net.x0_probs(x, torch.ones(6))
    ids, conf, _ = _draw_x0(lm.net, x, torch.ones(6), torch.Generator().manual_seed(0), temperature=0)
    assert torch.equal(ids, probs.argmax(-1)) and torch.allclose(conf, probs.max(-1).values)
    top3 = probs.topk(3, -1).indices
    for s in range(5):
        ids, _, _ = _draw_x0(lm.net, x, torch.ones(6), torch.Generator().manual_seed(s), top_k=3)
        assert (ids[..., None] == top3).any(-1).all()


# --- Issue 29: block diffusion ---
from vtd.lm import BlockDenoiser, block_causal_mask, block_diffusion_loss, block_heldout_bound, _CachedBlock


def test_block_causal_mask_is_bd3lms():
    m = block_causal_mask(4, 2).int().tolist()
    assert m == [[1, 1, 0, 0, 0, 0, 0, 0],     # noised block 0: itself only
                 [1, 1, 0, 0, 0, 0, 0, 0],
                 [0, 0, 1, 1, 1, 1, 0, 0],     # noised block 1: itself and clean block 0
                 [0, 0, 1, 1, 1, 1, 0, 0],
                 [0, 0, 0, 0, 1, 1, 0, 0],     # clean block 0: itself
                 [0, 0, 0, 0, 1, 1, 0, 0],
                 [0, 0, 0, 0, 1, 1, 1, 1],     # clean block 1: clean blocks 0 and 1, never a noised token
                 [0, 0, 0, 0, 1, 1, 1, 1]]
    assert torch.equal(block_causal_mask(4, 1, noised=False), torch.ones(4, 4, dtype=torch.bool).tril())   # 1: causal
    assert block_causal_mask(4, 4, noised=False).all() and block_causal_mask(4, 4)[:4, 4:].sum() == 0     # L: no left context


def test_bad_block_sizes_are_clear_errors():
    with pytest.raises(ValueError, match=r'block_size 3 does not divide seq_len 8.*\[1, 2, 4, 8\]'): LMConfig(model='block', seq_len=8, block_size=3)
    for bad in (0, -2):
        with pytest.raises(ValueError, match='block_size must be a positive'): LMConfig(model='block', block_size=bad)
    with pytest.raises(ValueError, match='block diffusion model reads token embeddings'): LMConfig(model='block', patterns='arbitrary')
    with pytest.raises(ValueError, match='dividing seq_len'): BlockDenoiser(10, 8, 3)
    assert LMConfig(model='block', seq_len=8, block_size=8).lr == 3e-3 and LMConfig(seq_len=6).block_size == 4   # only 'block' needs it to divide
    with pytest.raises(ValueError, match='cannot infill'): tiny(model='block').infill("you ___ all")


def _cached_logits(lm, x0, x_t, b):
    "Block b's logits from the sampler's path: the clean blocks before it fed to the cache one block at a time, then b read beside them."
    den, K = lm.net, lm.cfg.block_size
    cache = den.net.new_cache(blockwise=True)
    for j in range(b): den.net(x0[:, j * K:(j + 1) * K], cache=cache, pos_offset=j * K)
    return _CachedBlock(den, cache, b * K).x0_probs(x_t[:, b * K:(b + 1) * K], None).log()


@pytest.mark.parametrize('K', [1, 2, 4])
def test_the_cache_path_sees_what_training_saw(K):
    "Each noised block's prediction in training's one pass over [x_t ; x0] equals the sampler's, from the key/value cache."
    lm = tiny(model='block', block_size=K).eval()
    x0 = as_sequences(lm.tokenizer.encode(TEXT), 8)[:3]
    x_t = torch.where(torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)) < 0.5, x0, lm.process.mask_id)
    with torch.no_grad():
        train = F.log_softmax(lm.net.logits(x_t, x0).double(), -1)
        for b in range(8 // K):
            assert torch.allclose(train[:, b * K:(b + 1) * K], _cached_logits(lm, x0, x_t, b), atol=1e-5), b


def test_block_size_1_bound_is_the_autoregressive_cross_entropy_on_the_same_weights():
    """One-token blocks: at t = 1 every block is masked and its weight 1/t is 1, so the bound is the mean over positions of
    -log p(x_i | x_<i), here computed directly, token by token, from the key/value cache of the tokens before each
    (for t < 1 a token is masked with probability t and weighted 1/t: the same cross-entropy in expectation)."""
    lm = quiet_fit(tiny(model='block', block_size=1)).eval()
    x0 = as_sequences(lm.tokenizer.encode(TEXT), 8)[:5]
    M = lm.process.mask_id
    with torch.no_grad():
        bound = block_diffusion_loss(lm.net, lm.process, x0, t=torch.ones(5, 8), reduction='none')
        direct = torch.stack([-_cached_logits(lm, x0, torch.full_like(x0, M), i)[:, 0].gather(-1, x0[:, i:i + 1])[:, 0]
                              for i in range(8)], 1).mean(1)
    assert torch.allclose(bound.double(), direct, atol=1e-5) and (direct > 0).all()
    # a left-to-right model: changing a later token never changes an earlier token's bound
    x1 = x0.clone(); x1[:, 5] = (x1[:, 5] + 1) % lm.vocab_size
    with torch.no_grad():
        lp0, lp1 = (lm.net.x0_log_prob(torch.full_like(x, M), x) for x in (x0, x1))
    assert torch.allclose(lp0[:, :5], lp1[:, :5], atol=1e-6) and not torch.allclose(lp0[:, 6:], lp1[:, 6:])   # (5: its own target)


def test_block_size_seq_len_is_masked_diffusion_on_the_same_weights():
    "One block of the whole sequence: the same masks, the same logits, the same bound as 08's masked diffusion (TokenDenoiser)."
    from vtd.diffusion import TokenDenoiser, masked_diffusion_loss
    lm = quiet_fit(tiny(model='block', block_size=8)).eval()
    c = lm.cfg
    md = TokenDenoiser(lm.vocab_size, c.seq_len, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, rope=True).eval()
    md.net.load_state_dict(lm.net.net.state_dict())
    x0 = as_sequences(lm.tokenizer.encode(TEXT), 8)[:6]
    t = torch.rand(6, generator=torch.Generator().manual_seed(1)).clamp_min(0.05)
    with torch.no_grad():
        a = block_diffusion_loss(lm.net, lm.process, x0, t=t[:, None], generator=torch.Generator().manual_seed(5), reduction='none')
        b = masked_diffusion_loss(md, lm.process, x0, t=t, generator=torch.Generator().manual_seed(5), reduction='none')
        x_t = lm.process.q_sample(x0, 0.5, torch.Generator().manual_seed(2))
        assert torch.allclose(lm.net.logits(x_t, x0), md.logits(x_t, 0.5), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5) and (a > 0).all()


def test_block_heldout_bound_is_stratified_and_seeded():
    lm = quiet_fit(tiny(model='block', block_size=2))
    seqs = as_sequences(lm.tokenizer.encode(TEXT), 8)[:16]
    r = block_heldout_bound(lm.net, lm.process, seqs, n_t=4, seed=3)
    assert r == block_heldout_bound(lm.net, lm.process, seqs, n_t=4, seed=3) and r['n_seqs'] == 16 and 0 < r['stderr'] < r['bits_per_token']
    with pytest.raises(ValueError, match='n_t'): block_heldout_bound(lm.net, lm.process, seqs, n_t=3)
    assert lm.heldout_bits(seqs, n_t=4, seed=3) == r


def test_block_sampling_any_length_prompts_and_the_cache(monkeypatch):
    "Blocks of 2 after a 5-token prompt: its whole blocks go to the cache, its last token is kept in the first block, any length."
    lm = quiet_fit(tiny(model='block', block_size=2))
    prompt = "first citizen : you are"
    p = lm.encode_prompt(prompt)
    calls, real = [], type(lm.net.net).forward
    monkeypatch.setattr(type(lm.net.net), 'forward', lambda self, idx, *a, **k: calls.append((idx.shape[1], k.get('extend_cache', True),
                        k.get('pos_offset', 0))) or real(self, idx, *a, **k))
    for sampler in ('ancestral', 'maskgit'):
        calls.clear()
        r = lm.sample(prompt, length=21, steps=2, sampler=sampler, num_samples=3, seed=1, block=4)
        assert r['tokens'].shape == (3, 21) and (r['tokens'][:, :5] == p).all() and (r['tokens'] < lm.vocab_size).all()
        denoise = [c for c in calls if not c[1]]
        assert all(n <= 2 for n, *_ in denoise) and max(pos for *_, pos in denoise) <= 6   # a block at a time, inside the context of 8
        assert calls[0] == (4, True, 0)                                                  # the prompt's two whole blocks, one pass
    assert lm.generate(prompt, length=13, seed=4) == lm.generate(prompt, length=13, seed=4)
    h = lm.sample(prompt, length=12, steps=2, record=True)['history']
    assert [e['step'] for e in h] == list(range(1, len(h) + 1)) and h[-1]['tokens'].shape == (1, 12)


def test_data_limited_study_chooses_on_validation_and_scores_the_test_half():
    from vtd.lm import data_limited_study, data_limited_summary, plot_data_limited, train_flops_per_step
    grid = ((0.0, 0.0), (0.2, 0.1))
    study = data_limited_study(TEXT, TINY.replace(valid_fraction=0.3), models=('ar', 'block'), epochs=2, grid=grid, log=lambda *a: None)
    runs = study['runs']
    assert [(r['model'], r['dropout'], r['weight_decay']) for r in runs] == [(m, *g) for m in ('ar', 'block') for g in grid]
    for r in runs:
        assert len(r['valid']) == len(r['test']) == len(r['epoch']) == 2 and r['flops'][1] > r['flops'][0] > 0
        assert r['valid'] != r['test']                                    # two halves, two scores
    for m in ('ar', 'block'):
        assert study['chosen'][m] == min((i for i, r in enumerate(runs) if r['model'] == m), key=lambda i: min(runs[i]['valid']))
    s = data_limited_summary(study)
    assert set(s) == {'ar', 'block'} and s['block']['gap_to_ar_at_best'] == pytest.approx(s['block']['test_at_best'] - s['ar']['test_at_best'])
    assert train_flops_per_step(tiny(model='block')) > 2 * train_flops_per_step(tiny())   # block diffusion reads 2L tokens per sequence
    assert len(plot_data_limited(study).axes) == 2
