"""The exercises (issue 31): every checker passes its reference solution and fails a planted wrong answer with a
helpful message; every solutions notebook runs in smoke mode and survives nbdev's docs processing; the lessons'
exercise sections, the solutions and `vtd.exercises.EXERCISES` agree.

The reference solutions are read from the solutions notebooks themselves (the cell defining the answer), so the
test checks what the reader will find there. A new solutions notebook or checker is picked up by itself."""
import json, math, os, re, time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vtd.exercises as E

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / 'nbs' / 'solutions').glob('*_solutions.ipynb'))
CHECKERS = sorted(n for n in E.__all__ if n.startswith('check_'))
CELL_TIMEOUT = int(os.environ.get('VTD_CELL_TIMEOUT', '300'))


# --- Planted wrong answers: one per checker, with a piece of the message it must give -------------------------

def _ignores_drop_last(n, batch_size, generator, drop_last=False):
    return list(torch.randperm(n, generator=generator).split(batch_size))

def _empty_cluster_nan(x, centroids):
    labels = torch.cdist(x, centroids).argmin(1)
    return torch.stack([x[labels == j].mean(0) for j in range(len(centroids))]), labels

def _codebook_loss_on_z_q(z, codebook):          # lesson 03's bug 1
    idx = torch.cdist(z.detach(), codebook.detach()).argmin(1); hard = codebook[idx]
    z_q = z + (hard - z).detach()
    return z_q, F.mse_loss(z.detach(), z_q), F.mse_loss(z, z_q.detach())

def _kl_without_half(mu, logvar): return mu ** 2 + logvar.exp() - 1 - logvar

def _medoid_by_plain_sum(D, medoids):
    labels = D[:, medoids].argmin(1); new = medoids.clone()
    for j in range(len(medoids)):
        members = (labels == j).nonzero().flatten(); new[j] = members[D[members][:, members].sum(1).argmin()]
    return labels, new

def _attention_without_mask(q, k, v): return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v

def _fd_means_only(a, b): return float(((a.mean(0) - b.mean(0)) ** 2).sum())

def _bits_in_nats(logits, codes):
    return F.cross_entropy(logits.flatten(0, 1), codes.flatten(), reduction='none').view(codes.shape).sum(1)

def _hamming_with_self(t): return int((t[:, None, :] != t[None, :, :]).sum(-1).min())

class _CosineWithLogLinearWeight:
    def alpha(self, t): return torch.cos(math.pi / 2 * t)
    def weight(self, t): return 1 / t

def _renoising_reveal(x, x0_pred, mask_id, p_reveal, generator):   # lesson 08's re-noising bug
    return torch.where(torch.rand(x.shape, generator=generator) < p_reveal, x0_pred, x)

def _no_top_k(logits, k, temperature, generator):
    if temperature == 0: return logits.argmax(-1)
    return torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]

PLANTED = {
    'check_batch_indices': (_ignores_drop_last, 'drop_last=True) gave batches of sizes'),
    'check_lloyd_step': (_empty_cluster_nan, 'a mean of no rows is NaN'),
    'check_codebook_loss': (_codebook_loss_on_z_q, 'sends no gradient to the codebook'),
    'check_kl_divergence': (_kl_without_half, 'twice the right value'),
    'check_kmedoids_step': (_medoid_by_plain_sum, "new medoid should be point"),
    'check_causal_attention': (_attention_without_mask, 'a position sees the future'),
    'check_frechet_distance': (_fd_means_only, 'the mean term alone'),
    'check_bits_per_image': (_bits_in_nats, 'that is nats'),
    'check_min_hamming': (_hamming_with_self, 'skip i == j'),
    'check_schedule': (_CosineWithLogLinearWeight(), 'weight(t) should be'),
    'check_reveal_step': (_renoising_reveal, 'the re-noising bug'),
    'check_top_k_sample': (_no_top_k, 'outside the 3 likeliest'),
}


def _checker_exercise(checker: str) -> tuple[str, int]:
    "The lesson and exercise number (1-based) whose checker is `checker`."
    for lesson, exs in E.EXERCISES.items():
        for i, (_, _, c) in enumerate(exs, 1):
            if c == checker: return lesson, i
    raise AssertionError(f"no exercise uses {checker}")


def _reference_answer(checker: str):
    "The reader-facing solution: the answer defined in the solutions notebook's cell that calls `checker`."
    lesson, _ = _checker_exercise(checker)
    nb = json.loads((REPO / 'nbs' / 'solutions' / f'{lesson}_solutions.ipynb').read_text())
    for c in nb['cells']:
        s = ''.join(c['source'])
        m = re.search(rf'^verdict = {checker}\((.+)\)$', s, re.M)
        if c['cell_type'] == 'code' and m:
            ns = {}
            exec(compile(s, f'{lesson}_solutions', 'exec'), ns)   # the cell asserts its own verdict too
            return eval(m.group(1), ns)
    raise AssertionError(f"{lesson}_solutions.ipynb has no cell `verdict = {checker}(...)`")


def test_every_checker_has_a_planted_wrong_answer_and_an_exercise():
    assert set(PLANTED) == set(CHECKERS), f"planted answers for {sorted(PLANTED)}, checkers {CHECKERS}"
    used = sorted(c for exs in E.EXERCISES.values() for _, _, c in exs if c)
    assert used == CHECKERS, f"checkers used by the exercises {used} vs defined {CHECKERS}"


@pytest.mark.parametrize('checker', CHECKERS)
def test_checker_passes_the_reference_solution(checker):
    answer, check = _reference_answer(checker), getattr(E, checker)
    for seed in (None, 1, 2):   # fresh data each time: a new random seed, then two fixed ones
        v = check(answer, seed=seed, quiet=True)
        assert v.ok and v.status == 'right' and bool(v), f"{checker} rejects the solution: {v}"


@pytest.mark.parametrize('checker', CHECKERS)
def test_checker_fails_a_planted_wrong_answer_with_a_helpful_message(checker, capsys):
    wrong, says = PLANTED[checker]
    check = getattr(E, checker)
    v = check(wrong, seed=0)
    assert v.status == 'wrong' and not v and says in v.message, v
    assert 'seed=0' in v.message, "a failure names its seed, so the reader can reproduce it"
    assert len(v.message) < 400, f"the message should be a sentence or two: {v.message}"
    assert 'not yet right' in capsys.readouterr().out, 'the verdict is printed'
    with pytest.raises(E.ExerciseError, match=re.escape(says)): check(wrong, seed=0, quiet=True, strict=True)


class _StubSchedule:
    def alpha(self, t): ...
    def weight(self, t): ...

def _stub(*args, **kwargs): raise NotImplementedError

@pytest.mark.parametrize('checker', CHECKERS)
def test_checker_reports_a_stub_as_not_answered_and_never_raises(checker, capsys):
    check = getattr(E, checker)
    stubs = [None, _StubSchedule()] if checker == 'check_schedule' else [None, _stub, lambda *a, **k: None]
    for stub in stubs:
        v = check(stub, strict=True)                       # not even strict mode raises for a stub
        assert v.status == 'unanswered' and not v, v
    assert 'not answered yet' in capsys.readouterr().out


def test_a_crashing_answer_is_wrong_and_names_the_call():
    def crashes(z, codebook): return z @ codebook            # shapes do not fit
    v = E.check_codebook_loss(crashes, seed=0, quiet=True)
    assert v.status == 'wrong' and 'raised RuntimeError' in v.message and 'tensor of shape (64, 4)' in v.message, v


def test_checkers_run_fast():
    t0 = time.perf_counter()
    for checker in CHECKERS: getattr(E, checker)(PLANTED[checker][0], seed=0, quiet=True)
    assert time.perf_counter() - t0 < 60, "the checkers together should take seconds"


# --- Solutions notebooks -------------------------------------------------------------------------------------

def test_every_lesson_with_exercises_has_a_solutions_notebook_and_no_other():
    assert [p.name for p in SOLUTIONS] == [f'{lesson}_solutions.ipynb' for lesson in sorted(E.EXERCISES)]


@pytest.mark.notebook
@pytest.mark.parametrize('nb_path', SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_notebook_runs_in_smoke_mode(nb_path, tmp_path):
    import papermill as pm
    pm.execute_notebook(str(nb_path), str(tmp_path / nb_path.name), parameters={'smoke': True}, kernel_name='python3',
                        cwd=str(nb_path.parent), progress_bar=False, execution_timeout=CELL_TIMEOUT)


@pytest.mark.parametrize('nb_path', SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_notebook_passes_nbdev_docs_processing(nb_path, tmp_path):
    from vtd.tour import process_notebook
    err = process_notebook(nb_path, tmp_path / nb_path.name, cwd=REPO / 'nbs')
    assert err is None, f"nbdev's docs processing failed: {err}"


@pytest.mark.parametrize('nb_path', SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_notebook_is_clean_exports_nothing_and_follows_its_lesson(nb_path):
    nb = json.loads(nb_path.read_text())
    lesson = nb_path.stem.removesuffix('_solutions')
    params = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(params) == 1 and 'smoke' in ''.join(params[0]['source']), "one papermill parameters cell with smoke"
    for c in nb['cells']:
        assert set(c.get('metadata', {})) <= {'tags'}, f"cell metadata {c['metadata']}"
        if c['cell_type'] == 'code':
            assert c.get('execution_count') is None and not c.get('outputs'), "outputs left in"
            assert not re.search(r'^#\|\s*(default_exp|export)', ''.join(c['source']), re.M), "a solutions notebook exports nothing"
    headings = [l for c in nb['cells'] if c['cell_type'] == 'markdown' for l in ''.join(c['source']).splitlines() if l.startswith('### Exercise')]
    assert headings == [E.exercise_heading(i, k, t) for i, (k, t, _) in enumerate(E.EXERCISES[lesson], 1)]


def test_nbdev_never_reads_the_solutions(monkeypatch):
    "nbdev (export, clean, docs) lists notebooks with settings.ini's `recursive = False`: nbs/solutions/ is not among them."
    monkeypatch.chdir(REPO)
    from nbdev.doclinks import nbglob
    found = [Path(p).resolve().relative_to(REPO / 'nbs').as_posix() for p in nbglob(REPO / 'nbs')]
    assert '10_exercises.ipynb' in found and not any(p.startswith('solutions/') for p in found), found


# --- The lessons' exercise sections -----------------------------------------------------------------------------

@pytest.mark.parametrize('lesson', sorted(E.EXERCISES))
def test_lesson_ends_with_its_exercises(lesson):
    "The exercise section is the last of the lesson; its headings are EXERCISES'; each implementation calls its checker."
    cells = json.loads((REPO / 'nbs' / f'{lesson}.ipynb').read_text())['cells']
    starts = [i for i, c in enumerate(cells) if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('## Exercises')]
    assert len(starts) == 1, f"{lesson}: {len(starts)} '## Exercises' sections"
    section = cells[starts[0]:]
    assert not any(l.startswith('## ') for c in section[1:] if c['cell_type'] == 'markdown' for l in ''.join(c['source']).splitlines()), \
        "the exercises are the lesson's last section"
    intro = ''.join(section[0]['source'])
    assert E.solutions_path(lesson) in intro and f"{E.SOLUTIONS_URL}/{lesson}_solutions.ipynb" in intro, "the solutions are linked"
    headings = [l for c in section if c['cell_type'] == 'markdown' for l in ''.join(c['source']).splitlines() if l.startswith('### Exercise')]
    assert headings == [E.exercise_heading(i, k, t) for i, (k, t, _) in enumerate(E.EXERCISES[lesson], 1)]
    sources = '\n'.join(''.join(c['source']) for c in section if c['cell_type'] == 'code')
    for kind, title, checker in E.EXERCISES[lesson]:
        if checker: assert re.search(rf'^{checker}\(\w+(\(\))?\);', sources, re.M), f"{lesson}: no cell calls {checker} on the reader's answer"
    assert 3 <= len(E.EXERCISES[lesson]) <= 5


def test_exercise_table_lists_every_exercise_and_links_every_solution():
    table = E.exercise_table()
    for lesson, exs in E.EXERCISES.items():
        assert f"{E.SOLUTIONS_URL}/{lesson}_solutions.ipynb" in table
        for i, (kind, title, checker) in enumerate(exs, 1): assert f"| {i}. {title} | {E.KINDS[kind]} |" in table
    assert len(table.splitlines()) == 2 + sum(len(v) for v in E.EXERCISES.values())


def test_solutions_url_is_the_repository_of_settings():
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(REPO / 'settings.ini')
    assert E.SOLUTIONS_URL == f"{cfg['DEFAULT']['git_url']}/blob/{cfg['DEFAULT']['branch']}/nbs/solutions"
