"""vtd.core (seeding, devices, batches, the training loop, the cache, checkpoints, metrics, results) and vtd.tour."""
import json, os
from pathlib import Path

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from vtd.core import (CheckpointError, Config, batches, cached, fingerprint, fit, get_device, load_checkpoint,
                      record_results, save_checkpoint, seed_everything)
from vtd.tour import format_results_table, run_notebook


def test_seed_everything_reproduces():
    seed_everything(3); a = torch.randn(5)
    seed_everything(3); assert torch.equal(a, torch.randn(5))
    with pytest.raises(ValueError): seed_everything(-1)


def test_fit_lowers_loss_and_keeps_best():
    seed_everything(0)
    X = torch.randn(256, 3); Y = X @ torch.tensor([1., 2., 3.])
    m = nn.Linear(3, 1)
    loss = lambda m, b: ((m(b[0]).squeeze(-1) - b[1])**2).mean()
    h = fit(m, loss, lambda: [(X[i:i+32], Y[i:i+32]) for i in range(0, 256, 32)], epochs=10, lr=0.1,
            valid_fn=lambda m: loss(m, (X, Y)).item(), progress=False)
    assert h['train'][-1] < 0.05 * h['train'][0]
    assert h['valid'][h['best_epoch']] == min(h['valid'])


def test_fit_stops_on_nan():
    m = nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match='loss became nan'):
        fit(m, lambda m, b: m(b).sum() * float('nan'), [torch.ones(1, 2)], progress=False)


def test_checkpoint_round_trip_and_errors(tmp_path):
    m = nn.Linear(4, 2); cfg = {'in_features': 4, 'out_features': 2}
    p = save_checkpoint(tmp_path / 'm.pt', m, cfg, kind='linear', extra={'note': 'x'})
    m2 = nn.Linear(4, 2); ck = load_checkpoint(p, m2, expected_config=cfg, kind='linear')
    assert torch.equal(m.weight, m2.weight) and ck['extra'] == {'note': 'x'}
    with pytest.raises(CheckpointError, match='in_features'):
        load_checkpoint(p, expected_config={'in_features': 5, 'out_features': 2})
    with pytest.raises(CheckpointError, match="expected 'prior'"):
        load_checkpoint(p, kind='prior')
    with pytest.raises(CheckpointError, match='does not fit this model'):
        load_checkpoint(p, nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match='no checkpoint'):
        load_checkpoint(tmp_path / 'missing.pt')


def test_corrupt_and_truncated_checkpoints_are_named(tmp_path):
    m = nn.Linear(4, 2)
    p = save_checkpoint(tmp_path / 'm.pt', m, {'a': 1})
    data = p.read_bytes()
    (tmp_path / 'cut.pt').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        load_checkpoint(tmp_path / 'cut.pt')
    (tmp_path / 'junk.pt').write_bytes(b'\x00' * 100)
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        load_checkpoint(tmp_path / 'junk.pt')


class Evil:
    def __reduce__(self): return (print, ('pwned',))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    torch.save({'format': 1, 'kind': 'model', 'config': {}, 'state_dict': {}, 'extra': {'obj': Evil()}}, tmp_path / 'evil.pt')
    with pytest.raises(CheckpointError, match='weights_only'):
        load_checkpoint(tmp_path / 'evil.pt')
    torch.save({'weights': torch.ones(2)}, tmp_path / 'plain.pt')
    with pytest.raises(CheckpointError, match='not a vtd checkpoint'):
        load_checkpoint(tmp_path / 'plain.pt')


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    m = nn.Linear(4, 2)
    p = save_checkpoint(tmp_path / 'm.pt', m, {'a': 1})
    before = p.read_bytes()
    with pytest.raises(TypeError, match='plain data'):
        save_checkpoint(p, m, {'a': object()})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ['m.pt'], "a temporary file was left behind"


def test_record_results_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv('VTD_RESULTS_DIR', str(tmp_path))
    assert record_results('xx_demo', {'psnr': torch.tensor(21.5), 'n': 3}, show=False) is None  # a cell ending with it shows the table once
    record_results('xx_demo', {'more': 'yes'}, show=False)
    assert json.loads((tmp_path / 'xx_demo.json').read_text()) == {'psnr': 21.5, 'n': 3, 'more': 'yes'}


def _write_nb(path, code):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    p = nbformat.v4.new_code_cell('smoke = False'); p.metadata['tags'] = ['parameters']
    nb.cells = [p, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_tour_reports_a_failing_notebook_and_runs_the_others(tmp_path):
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    _write_nb(nbs / '01_ok.ipynb', "from vtd.core import record_results\nrecord_results('01_ok', {'smoke': smoke})")
    _write_nb(nbs / '02_bad.ipynb', "raise ValueError('deliberate failure')")
    from vtd.tour import tour_main
    rc = tour_main(['--nbs', str(nbs), '--out', str(tmp_path / 'out')])
    assert rc == 1
    table = (tmp_path / 'out' / 'summary.txt').read_text()
    ok = next(l for l in table.splitlines() if l.startswith('01_ok'))
    assert ' ok ' in ok and 'smoke' in ok and 'True' in ok          # the clean lesson ran, with its figure shown
    assert '02_bad' in table and 'FAILED' in table and 'deliberate failure' in table


@pytest.mark.notebook
def test_a_finished_run_leaves_one_line_of_text_in_the_saved_notebook(tmp_path):
    "A closed bar collapses to its last text (the run's total, not the '0it' it was drawn with), and no widget stays."
    import nbformat, papermill as pm
    _write_nb(tmp_path / 'bar.ipynb', "import torch\nfrom vtd.core import fit, batches\nm = torch.nn.Linear(3, 1)\n"
              "fit(m, lambda m, b: m(b).pow(2).mean(), batches(torch.randn(64, 3), batch_size=8), epochs=2, desc='demo')")
    pm.execute_notebook(str(tmp_path / 'bar.ipynb'), str(tmp_path / 'out.ipynb'), kernel_name='python3', progress_bar=False)
    outs = nbformat.read(str(tmp_path / 'out.ipynb'), as_version=4).cells[-1].outputs
    bars = [o for o in outs if 'demo' in str(o.get('data', {}).get('text/plain', ''))]
    assert len(bars) == 1, outs
    assert set(bars[0]['data']) == {'text/plain'} and '16/16' in bars[0]['data']['text/plain'], bars[0]


def test_get_device_auto_and_errors():
    assert get_device('auto') == get_device(None) == get_device()
    assert get_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match="unknown device 'gpu'"): get_device('gpu')
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA is not available'): get_device('cuda')


def test_batches_cover_every_row_and_repeat_with_a_seed():
    x, y = torch.arange(10.), torch.arange(10) * 2
    order = lambda seed: [b[0].tolist() for b in batches(x, y, batch_size=4, generator=torch.Generator().manual_seed(seed))]
    assert order(0) == order(0) and order(0) != order(1)
    assert sorted(sum(order(0), [])) == list(range(10)) and [len(b) for b in order(0)] == [4, 4, 2]
    (b,) = list(batches(x, batch_size=10, shuffle=False)); assert torch.equal(b, x)  # one tensor: batches are tensors
    # the order of the hand-written loop, pass after pass: randperm(n, generator=g).split(batch_size)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loader = batches(x, batch_size=3, generator=g1)
    for _ in range(3):
        assert [b.tolist() for b in loader] == [x[i].tolist() for i in torch.randperm(10, generator=g2).split(3)]
    with pytest.raises(ValueError, match='differ in length'): batches(x, y[:3], batch_size=2)


def test_fingerprint_is_by_value():
    a = torch.arange(6.).view(2, 3)
    assert fingerprint(a) == fingerprint(a.clone()) != fingerprint(a.view(3, 2)) != fingerprint(a.double())
    assert fingerprint({'b': 1, 'a': 2}) == fingerprint({'a': 2, 'b': 1}) != fingerprint({'a': 2, 'b': 3})
    m = nn.Linear(2, 2); f = fingerprint(m)
    with torch.no_grad(): m.weight[0, 0] += 1
    assert fingerprint(m) != f
    with pytest.raises(TypeError, match='cannot hash'): fingerprint(object())


@dataclass(frozen=True)
class _Cfg(Config):
    width: int = 3
    @classmethod
    def smoke(cls): return cls(width=2)


def test_cached_retrains_exactly_when_its_key_changes(tmp_path, capsys):
    """The one cache-invalidation test: same key loads; a changed config, data or upstream model retrains;
    a corrupt file retrains and says so; a dict artefact round-trips."""
    made = []
    def run(cfg, data=1, upstream=()):
        def make():
            made.append(cfg); torch.manual_seed(len(made)); return nn.Linear(2, cfg.width)
        return cached('lin', cfg, make, lambda: nn.Linear(2, cfg.width), data=data, upstream=upstream, cache_dir=tmp_path)
    assert _Cfg.preset(True) == _Cfg(width=2) and _Cfg.preset(False) == _Cfg()
    a = run(_Cfg()); b = run(_Cfg())
    assert len(made) == 1 and torch.equal(a.weight, b.weight)
    run(_Cfg(width=4)); assert len(made) == 2            # config
    run(_Cfg(), data=2); assert len(made) == 3           # data
    up = nn.Linear(1, 1); run(_Cfg(), upstream=up); run(_Cfg(), upstream=up); assert len(made) == 4
    with torch.no_grad(): up.weight += 1
    run(_Cfg(), upstream=up); assert len(made) == 5      # upstream model
    for f in (tmp_path / 'lin').glob('*.pt'): f.write_bytes(b'not a checkpoint')
    capsys.readouterr(); run(_Cfg()); assert len(made) == 6
    said = capsys.readouterr().out
    assert 'cannot be used' in said and 'made in' in said
    run(_Cfg()); said += capsys.readouterr().out
    assert 'loaded from the cache (lin/' in said
    # the messages name the entry (kind/key.pt), never the machine's cache directory
    assert str(tmp_path) not in said, said
    d = cached('table', _Cfg(), lambda: {'codes': torch.arange(3), 'K': 3}, cache_dir=tmp_path)
    e = cached('table', _Cfg(), lambda: 1 / 0, cache_dir=tmp_path)  # loads: make() is never called
    assert torch.equal(d['codes'], e['codes']) and e['K'] == 3
    with pytest.raises(TypeError, match='pass build='): cached('nobuild', _Cfg(), lambda: nn.Linear(1, 1), cache_dir=tmp_path)
    # a tensor (or module) and its fingerprint are the same key, as the docstring promises
    x = torch.arange(4.)
    f = cached('same', _Cfg(), lambda: {'v': x}, data=x, upstream=up, cache_dir=tmp_path)
    g = cached('same', _Cfg(), lambda: 1 / 0, data=fingerprint(x), upstream=fingerprint(up), cache_dir=tmp_path)
    assert torch.equal(f['v'], g['v'])



def test_cached_module_keeps_its_history_and_comes_back_the_same_either_way(tmp_path):
    "A module's kept attributes (its history, by default) are stored beside its weights, not packed into them."
    def make():
        torch.manual_seed(0); m = nn.Linear(3, 2); m.history = {'train': [0.5, 0.25], 'best_epoch': 1}; m.score = 0.9
        return m
    a = cached('hist', _Cfg(), make, lambda: nn.Linear(3, 2), cache_dir=tmp_path, keep=('history', 'score'))
    b = cached('hist', _Cfg(), lambda: 1 / 0, lambda: nn.Linear(3, 2), cache_dir=tmp_path, keep=('history', 'score'))
    for m in (a, b):
        assert m.history == {'train': [0.5, 0.25], 'best_epoch': 1} and m.score == 0.9
    assert torch.equal(a.weight, b.weight) and type(a) is type(b)
    ckpt = load_checkpoint(next((tmp_path / 'hist').glob('*.pt')))
    assert set(ckpt['state_dict']) == {'weight', 'bias'} and set(ckpt['extra']) == {'history', 'score'}   # no packed keys
    plain = cached('plain', _Cfg(), lambda: nn.Linear(3, 2), lambda: nn.Linear(3, 2), cache_dir=tmp_path)   # nothing to keep
    assert not hasattr(plain, 'history')
    with pytest.raises(TypeError, match='plain data'):   # a kept attribute must load with weights_only=True
        cached('bad', _Cfg(), lambda: setattr(m := nn.Linear(1, 1), 'history', object()) or m, lambda: nn.Linear(1, 1),
               cache_dir=tmp_path)

def test_batches_leave_the_global_random_stream_alone():
    "Training through batches must draw the same noise as the hand-written loop did."
    torch.manual_seed(0); list(batches(torch.arange(8.), batch_size=3, generator=torch.Generator().manual_seed(1))); a = torch.rand(3)
    torch.manual_seed(0); b = torch.rand(3)
    assert torch.equal(a, b)


# --- The Learner and its callbacks (issue 27: one training loop; issue 28: checkpoints every N steps, SIGTERM) ---
import math, time
from vtd.core import (Callback, CheckpointCB, InterruptCB, Learner, TimeBudgetCB, ValidCB, decay_groups, warmup_cosine)


def _line(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g); return X, X @ torch.tensor([1., -1., 2.])


def _mse(m, b): return ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean()


def test_callbacks_run_in_order_and_every_event_is_seen():
    calls = []
    class Note(Callback):
        def __init__(self, name, order): self.name, self.order = name, order
        def before_fit(self, learn): calls.append((self.name, 'before_fit'))
        def after_backward(self, learn): calls.append((self.name, 'after_backward'))
        def after_fit(self, learn): calls.append((self.name, 'after_fit'))
    X, Y = _line(16)
    Learner(nn.Linear(3, 1), _mse, [(X, Y)] * 2, cbs=[Note('late', 5), Note('early', -5), Note('middle', 0)]).fit(1)
    assert calls[:3] == [('early', 'before_fit'), ('middle', 'before_fit'), ('late', 'before_fit')]
    assert [c for c in calls if c[1] == 'after_backward'] == [('early', 'after_backward'), ('middle', 'after_backward'), ('late', 'after_backward')] * 2
    with pytest.raises(TypeError, match='not events'):
        class Typo(Callback):
            def after_bacward(self, learn): pass
        Learner(nn.Linear(3, 1), _mse, [(X, Y)], cbs=[Typo()])


def test_time_budget_stops_training_and_the_epoch_is_still_scored():
    X, Y = _line(256)
    hist = {'valid': [], 'best_epoch': None}
    def slow(m, b): time.sleep(0.005); return _mse(m, b)
    learn = Learner(nn.Linear(3, 1), slow, batches(X, Y, batch_size=8, generator=torch.Generator().manual_seed(0)),
                    cbs=[TimeBudgetCB(0.15), ValidCB(lambda m: _mse(m, (X, Y)), hist)]).fit()
    assert learn.stop == 'budget' and not learn.interrupted and 0.15 <= learn.elapsed < 5
    assert 0 < learn.step < 1000 and len(hist['valid']) == learn.epoch + (not learn.epoch_done)


def test_checkpoint_every_n_steps_and_at_the_end():
    X, Y = _line(40)
    saved = []
    learn = Learner(nn.Linear(3, 1), _mse, batches(X, Y, batch_size=4, generator=torch.Generator().manual_seed(0)),
                    cbs=[CheckpointCB(lambda l, final: saved.append((l.step, final)), every=3)]).fit(2)
    assert learn.step == 20 and saved == [(s, False) for s in range(3, 21, 3)] + [(20, True)]
    with pytest.raises(ValueError, match='every must be >= 1'): CheckpointCB(lambda l, f: None, every=0)


def test_an_interrupt_stops_after_the_step_and_resuming_gives_the_uninterrupted_weights():
    X, Y = _line(64)
    def run(stop_at=None, resume_from=None):
        torch.manual_seed(0); m = nn.Linear(3, 1); opt = torch.optim.Adam(m.parameters(), lr=0.05)
        learn = Learner(m, _mse, lambda epoch: batches(X, Y, batch_size=8, generator=torch.Generator().manual_seed(epoch)),
                        opt=opt, cbs=[InterruptCB(at_step=stop_at)])
        if resume_from is not None:
            m.load_state_dict(resume_from['model']); opt.load_state_dict(resume_from['opt'])
            learn.step, learn.epoch, learn.batch_i = resume_from['pos']
        learn.fit(3)
        return learn, {'model': {k: v.clone() for k, v in m.state_dict().items()}, 'opt': opt.state_dict(),
                       'pos': (learn.step, learn.epoch, learn.batch_i)}
    whole, w = run()
    cut, c = run(stop_at=11)
    assert cut.interrupted and cut.step == 11 and (cut.epoch, cut.batch_i) == (1, 3)
    again, a = run(resume_from=c)
    assert not again.interrupted and again.step == whole.step == 24
    for k in w['model']: assert torch.equal(w['model'][k], a['model'][k]), k


def test_sigterm_stops_training_after_the_step_and_restores_the_handler():
    import signal, os
    X, Y = _line(64)
    before = signal.getsignal(signal.SIGTERM)
    class SendTerm(Callback):
        def after_batch(self, learn):
            if learn.step == 5: os.kill(os.getpid(), signal.SIGTERM)
    learn = Learner(nn.Linear(3, 1), _mse, batches(X, Y, batch_size=8, generator=torch.Generator().manual_seed(0)),
                    cbs=[InterruptCB(say=lambda s: None), SendTerm()]).fit(5)
    assert learn.interrupted and learn.step in (5, 6) and signal.getsignal(signal.SIGTERM) == before


def test_weight_decay_falls_on_matrices_only():
    from vtd.transformer import Transformer, TransformerConfig
    net = Transformer(TransformerConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
    decay, plain = decay_groups(net, 0.1)
    assert decay['weight_decay'] == 0.1 and plain['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in plain['params'])
    trained = [p for p in net.parameters() if p.requires_grad]
    assert len(decay['params']) + len(plain['params']) == len(trained) and not net.head.weight.requires_grad   # tied: unused
    assert any(p is net.blocks[0].ln1.weight for p in plain['params']) and any(p is net.wte.weight for p in decay['params'])


def test_warmup_cosine_is_the_schedule_lessons_08_and_09_used():
    for total, warm in ((100, 10), (37, 50)):
        for s in range(0, total + 5):
            old = min(1, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, total) / total)))
            assert warmup_cosine(s, warm, total=total) == old   # bit for bit: seeded runs keep their numbers
