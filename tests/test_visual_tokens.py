"""vtd.visual_tokens: every codec's round trip, bad inputs, diagnostics, and both text-feature backends (offline)."""
import json

import pytest
import torch
import torch.nn.functional as F

from vtd.visual_tokens import (DeterministicPatterns, GroundedPatterns, LearnedPatterns, PatternDecoder, PatternFitConfig,
                               cached_text_features, cells_to_patterns, detect_mode_collapse, fit_patterns, flip_cells,
                               nearest_pattern_log_probs, pattern_uniqueness, prediction_entropy, random_distinct_patterns,
                               space_utilisation, text_features)

META = torch.device('meta')


def check_interface(codec, V, G=5, C=3):
    ids = torch.arange(V)
    pats = codec.encode(ids)
    assert pats.shape == (V, G, G, C) and pats.dtype == torch.float32
    assert torch.all(pats.sum(-1) == 1), "hard patterns are one-hot"
    lp = codec.decode(pats)
    assert lp.shape == (V, V)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(V), atol=1e-4), "decode returns log-probs"
    table = codec.cell_table()
    assert table.shape == (V, G * G) and table.dtype == torch.long and table.min() >= 0 and table.max() < C
    assert torch.equal(pats.argmax(-1).flatten(1), table)
    assert torch.equal(lp.argmax(-1), ids), "round trip"
    assert torch.equal(codec.predict(table.view(V, G, G)), ids), "integer colour ids decode too"
    assert pattern_uniqueness(table)['unique_fraction'] == 1.0


def test_deterministic_round_trip():
    codec = DeterministicPatterns(300, seed=1)
    check_interface(codec, 300)
    assert torch.equal(codec.cell_table(), DeterministicPatterns(300, seed=1).cell_table()), "seeded"
    assert codec.accuracy(n_flip=1) == 1.0, "nearest pattern survives one flipped cell (min distance >= 3)"


def test_random_distinct_patterns_is_injective_when_crowded():
    t = random_distinct_patterns(80, 4, 3, seed=0)  # 80 of the 81 possible patterns
    assert len(set(map(tuple, t.tolist()))) == 80


@pytest.mark.parametrize('mode', ['gumbel', 'continuous'])
def test_learned_round_trip(mode):
    codec = LearnedPatterns(40, mode=mode, seed=0)
    hist = fit_patterns(codec, steps=400, batch_size=64, eval_every=20, progress=False)
    assert hist['final_acc'] == 1.0 and hist['steps_to_100'] is not None
    check_interface(codec, 40)


def test_grounded_round_trip_and_unseen_features():
    feats = torch.randn(30, 16, generator=torch.Generator().manual_seed(0))
    codec = GroundedPatterns(feats, seed=0)
    hist = fit_patterns(codec, steps=400, batch_size=64, eval_every=20, progress=False)
    assert hist['final_acc'] == 1.0 and hist['freeze']['unique_fraction_after'] == 1.0
    check_interface(codec, 30)
    assert codec.patterns_for_features(torch.randn(3, 16)).shape == (3, 5, 5, 3)


def test_grounded_freeze_repairs_collisions():
    feats = torch.randn(5, 8).repeat(2, 1)          # 10 tokens, pairs with identical features -> identical patterns
    codec = GroundedPatterns(feats)
    rep = codec.freeze()
    assert rep['collisions_before'] == 5 and len(rep['tokens_moved']) == 5 and rep['unique_fraction_after'] == 1.0
    assert pattern_uniqueness(codec.cell_table())['unique_fraction'] == 1.0


@pytest.mark.parametrize('make', [lambda: DeterministicPatterns(10), lambda: LearnedPatterns(10),
                                  lambda: GroundedPatterns(torch.randn(10, 8))])
def test_bad_inputs(make):
    codec = make()
    with pytest.raises(IndexError, match='outside the vocabulary'): codec.encode(torch.tensor([0, 10]))
    with pytest.raises(IndexError, match='outside the vocabulary'): codec.encode(torch.tensor([-1]))
    with pytest.raises(TypeError, match='integers'): codec.encode(torch.tensor([0.5]))
    with pytest.raises(ValueError, match='grid'): codec.decode(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match='colours'): codec.decode(torch.zeros(2, 5, 5, 4))
    with pytest.raises(ValueError, match=r'colour ids must lie in \[0, 3\)'): codec.decode(torch.full((2, 5, 5), 3))
    with pytest.raises(ValueError, match='NaN'): codec.decode(torch.full((1, 5, 5, 3), float('nan')))


def test_empty_vocabulary_and_impossible_sizes():
    with pytest.raises(ValueError, match='empty'): DeterministicPatterns(0)
    with pytest.raises(ValueError, match='empty'): LearnedPatterns(0)
    with pytest.raises(ValueError, match='empty'): GroundedPatterns(torch.zeros(0, 8))
    with pytest.raises(ValueError, match='empty'): text_features([])
    with pytest.raises(ValueError, match='distinct patterns'): DeterministicPatterns(17, grid=2, colors=2)
    with pytest.raises(ValueError, match='backend'): text_features(['a'], backend='word2vec')


def test_flip_cells_changes_exactly_n():
    cells = torch.randint(0, 3, (50, 25), generator=torch.Generator().manual_seed(0))
    for n in (0, 1, 7, 25):
        assert ((flip_cells(cells, n) != cells).sum(1) == n).all()
    with pytest.raises(ValueError): flip_cells(cells, 26)
    with pytest.raises(ValueError): cells_to_patterns(torch.zeros(2, 24, dtype=torch.long))


def test_diagnostics():
    table = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 0], [1, 1, 1, 1]])
    u = pattern_uniqueness(table)
    assert u['collisions'] == [[0, 1]] and u['unique_fraction'] == pytest.approx(2 / 3)
    s = space_utilisation(table)
    assert s['min_hamming_distance'] == 0 and s['occupied_fraction'] == pytest.approx(2 / 81)
    collapsed = detect_mode_collapse(torch.tensor([3, 3, 3, 1]))
    assert collapsed['collapsed'] and collapsed['dominant_token'] == 3 and collapsed['dominant_share'] == 0.75
    assert not detect_mode_collapse(torch.arange(10))['collapsed']
    e = prediction_entropy(torch.log_softmax(torch.zeros(4, 8), -1))
    assert e['mean_entropy_bits'] == pytest.approx(3.0) and e['max_bits'] == pytest.approx(3.0)


def test_minilm_features_offline(tmp_path):
    f = text_features(['king', 'queen', 'apple'])
    assert f.shape == (3, 384) and torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert f[0] @ f[1] > f[0] @ f[2], "king is nearer queen than apple"
    g = cached_text_features(['king', 'queen', 'apple'], cache_dir=tmp_path)
    assert torch.allclose(f, g, atol=1e-5) and len(list((tmp_path / 'text_features').iterdir())) == 1
    assert torch.allclose(cached_text_features(['king', 'queen', 'apple'], cache_dir=tmp_path), g)


def test_loading_the_encoder_draws_no_bar_and_leaves_transformers_bars_as_they_were(capfd):
    "transformers 5 draws a 'Loading weights' bar for every model it loads: in a lesson it was a stray bar in the output."
    from transformers.utils import logging as hf_logging
    import vtd.visual_tokens as vt
    path = str(vt.minilm_model_dir())
    vt._TEXT_MODELS.pop(path, None)                      # load it afresh, as a new process would
    assert hf_logging.is_progress_bar_enabled()
    text_features(['king'])
    out, err = capfd.readouterr()
    assert 'Loading weights' not in out + err, err[-500:]
    assert hf_logging.is_progress_bar_enabled(), "the loader must restore transformers' bars for the user's own loads"


def test_clip_backend_save_pretrained_round_trip(tmp_path):
    "A tiny random CLIP text model and tokenizer saved with save_pretrained and loaded back by the real loading code."
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    letters = 'abcdefghijklmnopqrstuvwxyz'
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + '</w>': len(letters) + i for i, c in enumerate(letters)})
    vocab.update({'<|startoftext|>': 52, '<|endoftext|>': 53})
    (tmp_path / 'vocab.json').write_text(json.dumps(vocab)); (tmp_path / 'merges.txt').write_text('#version: 0.2\n')
    tok = CLIPTokenizer(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt'))
    cfg = CLIPTextConfig(vocab_size=54, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=24, bos_token_id=52, eos_token_id=53, pad_token_id=53)
    torch.manual_seed(0)
    saved = tmp_path / 'tiny-clip'
    CLIPTextModel(cfg).save_pretrained(saved); tok.save_pretrained(saved)
    f = text_features(['cat', 'dog', 'king'], backend='clip', model=str(saved))
    assert f.shape == (3, 32) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1]), "different words, different features"
    with pytest.raises(OSError, match='cannot load a CLIP text model'):
        text_features(['cat'], backend='clip', model=str(tmp_path / 'missing'))


def test_fit_config_budget_and_keyword_changes():
    small, big = PatternFitConfig.for_vocab(192), PatternFitConfig.for_vocab(10000)
    assert (small.steps, small.decoder_steps, small.batch_size, small.lr, small.eval_every) == (400, 1100, 256, 1e-2, 25)
    assert (big.batch_size, big.eval_every) == (1024, 100)
    codec = LearnedPatterns(300, seed=0)              # too many tokens for 10 steps: the joint phase runs to its end
    h = fit_patterns(codec, PatternFitConfig(steps=50, decoder_steps=0, batch_size=32, eval_every=10), progress=False, steps=10)
    assert max(s for s, ph in zip(h['step'], h['phase']) if ph == 'joint') == 10, "a keyword replaces one field of cfg"
    with pytest.raises(ValueError, match='steps must be >= 1'): fit_patterns(codec, steps=0, progress=False)


def test_cached_text_features_goes_through_core_cache(tmp_path):
    feats = cached_text_features(['king', 'queen'], cache_dir=tmp_path)
    files = list((tmp_path / 'text_features').iterdir())
    assert len(files) == 1
    files[0].write_bytes(b'not a checkpoint')          # a damaged file is recomputed, not trusted
    assert torch.allclose(cached_text_features(['king', 'queen'], cache_dir=tmp_path), feats, atol=1e-5)
    cached_text_features(['king', 'apple'], cache_dir=tmp_path)
    assert len(list((tmp_path / 'text_features').iterdir())) == 2, "other words, another entry"


@pytest.mark.parametrize('mode', ['gumbel', 'continuous'])
def test_trainable_codecs_on_the_meta_device(mode):
    "Forward pass, loss, encode, decode built and run on `meta`: any tensor made on the CPU inside them fails loudly."
    with META:
        codecs = [LearnedPatterns(12, mode=mode, decoder_hidden=16), GroundedPatterns(torch.randn(12, 16), mode=mode)]
    ids = torch.randint(0, 12, (6,), device=META)
    for codec in codecs:
        log_probs = codec(ids, tau=0.7)
        assert log_probs.is_meta and log_probs.shape == (6, 12)
        loss = F.nll_loss(log_probs, ids)
        assert loss.is_meta and loss.shape == ()
        pats = codec.encode(ids)
        assert pats.is_meta and pats.shape == (6, 5, 5, 3)
        assert codec.decode(pats).is_meta and codec.predict(torch.zeros(6, 25, dtype=torch.long, device=META)).is_meta
        assert codec.cell_table().is_meta
    assert codecs[1].patterns_for_features(torch.randn(3, 16, device=META)).shape == (3, 5, 5, 3)


def test_fixed_codec_and_helpers_on_the_meta_device():
    det = DeterministicPatterns(12).to(META)          # its table is drawn on the CPU (seeded, duplicates redrawn), then moved
    ids = torch.arange(12, device=META)
    assert det.encode(ids).is_meta and det.decode(det.encode(ids)).shape == (12, 12)
    with META: dec = PatternDecoder(12, hidden=16)
    assert dec(torch.zeros(4, 5, 5, 3, device=META)).shape == (4, 12)
    cells = torch.zeros(4, 25, dtype=torch.long, device=META)
    assert flip_cells(cells, 3).is_meta and cells_to_patterns(cells).is_meta
    table = F.one_hot(torch.zeros(12, 25, dtype=torch.long, device=META), 3).float()
    assert nearest_pattern_log_probs(torch.zeros(2, 5, 5, 3, device=META), table).shape == (2, 12)
