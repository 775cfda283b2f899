"DDP under torchrun: 2 gloo processes on the CPU reach the weights 1 process reaches with the same global batch."
import os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch

from vtd.cli import main
from vtd.lm import VisualTokenLM

REPO = Path(__file__).resolve().parent.parent
TEXT = ("first citizen : before we proceed any further , hear me speak . all : speak , speak . "
        "first citizen : you are all resolved rather to die than to famish ? all : resolved . resolved . ") * 15
ARGS = ['--seq-len', '8', '--vocab-size', '60', '--n-layer', '1', '--n-head', '2', '--n-embd', '16', '--batch-size', '8',
        '--epochs', '2', '--no-progress', '--samples', '0', '--device', 'cpu']


def torchrun(*cmd, env=None):
    "Run `cmd` in 2 gloo processes under torchrun (one thread each), capturing its output."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *cmd],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('extra', [['--patterns', 'arbitrary'], ['--model', 'block', '--block-size', '2']], ids=['patterns', 'block'])
def test_two_gloo_processes_equal_one(tmp_path, extra):
    corpus = tmp_path / 'c.txt'; corpus.write_text(TEXT)
    args = [*ARGS, *extra]
    assert main(['train', str(corpus), '--out', str(tmp_path / 'one'), *args]) == 0
    r = torchrun('-m', 'vtd.cli', 'train', str(corpus), '--out', str(tmp_path / 'two'), *args,
                 env={'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', '')})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count('training VisualTokenLM') == 1 and 'x 2 processes' in r.stdout   # only rank 0 speaks
    one, two = (VisualTokenLM.load(tmp_path / d / 'last.pt', device='cpu') for d in ('one', 'two'))
    assert one.run_state['step'] == two.run_state['step'] > 0
    for (k, a), b in zip(one.net.state_dict().items(), two.net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (k, (a - b).abs().max().item())
    best = VisualTokenLM.load(tmp_path / 'two' / 'best.pt', device='cpu')   # a DDP checkpoint, in one CPU process
    p = best.encode_prompt('first citizen')
    r = best.sample('first citizen', length=8, steps=4, num_samples=2)
    assert (r['tokens'][:, :len(p)] == p).all()


def test_vtd_console_script_under_torchrun(tmp_path):
    "`torchrun --no-python vtd train ...`: the console script itself recognises torchrun's environment and joins the group."
    vtd = shutil.which('vtd')
    if vtd is None: pytest.fail("the vtd console script is not on PATH: install the package (pip install -e .)")
    corpus = tmp_path / 'c.txt'; corpus.write_text(TEXT)
    r = torchrun('--no-python', vtd, 'train', str(corpus), '--out', str(tmp_path / 'two'), *ARGS, '--epochs', '1')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count('training VisualTokenLM') == 1 and 'x 2 processes' in r.stdout
    assert VisualTokenLM.load(tmp_path / 'two' / 'last.pt', device='cpu').run_state['step'] > 0
