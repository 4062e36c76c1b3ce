"""The fused step (`recsys.fused`) equals the plain layers under autograd: each piece's values and gradients,
and whole training steps. "Equal" is to 1e-6 of the array's scale (its largest entry, at least 1): float32
sums taken in another order differ in their last bits."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from recsys import fused, movielens
from recsys.model import MovieTower, RecommenderNet, UserTower, cos_sim_score, rating_loss, softmax_loss
from recsys.trainer import Trainer

N_USERS, N_AGES, N_JOBS, N_MOVIES, N_CATS, N_WORDS = 30, 7, 21, 25, 18, 40


def _close(got, want, tol: float = 1e-6, what: str = "") -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    assert np.abs(got - want).max(initial=0) <= tol * scale, (what, np.abs(got - want).max(), scale)


def _dense(grad, shape) -> np.ndarray:
    """A parameter's gradient as a dense array (sparse row gradients summed into their rows)."""
    if not grad.is_selected_rows():
        return grad.numpy()
    out = np.zeros(shape, np.float32)
    np.add.at(out, np.array(grad.rows()), grad.numpy())
    return out


def _autograd(layer, outputs, d_outputs) -> dict[str, np.ndarray]:
    for p in layer.parameters():
        p.clear_gradient(False)
    sum((o * d).sum() for o, d in zip(outputs, d_outputs)).backward()
    return {k: _dense(p._grad_ivar(), p.shape) for k, p in layer.named_parameters() if p._grad_ivar() is not None}


def _fused_grads(layer, grads: list) -> dict[str, np.ndarray]:
    names = {id(p): k for k, p in layer.named_parameters()}
    return {names[id(p)]: _dense(g, p.shape) for p, g in grads}


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        _close(got[k], want[k], what=k)


def _titles(rng, n: int) -> np.ndarray:
    """Padded title ids: lengths 1..6 (one title word only, one at full width), padding id N_WORDS."""
    lens = rng.randint(1, 7, n)
    lens[0], lens[1] = 1, 6
    out = np.full((n, 6), N_WORDS, np.int64)
    for i, k in enumerate(lens):
        out[i, :k] = rng.randint(0, N_WORDS, k)
    return out


def _categories(rng, n: int) -> np.ndarray:
    out = np.full((n, 3), N_CATS, np.int64)
    for i, k in enumerate(rng.randint(1, 4, n)):
        out[i, :k] = rng.choice(N_CATS, k, replace=False)
    return out


def _movie_feeds(rng, n: int) -> dict[str, np.ndarray]:
    """Feeds of n ratings of movies whose categories and titles are drawn once per movie."""
    categories, titles = _categories(rng, N_MOVIES), _titles(rng, N_MOVIES)
    movie = rng.randint(1, N_MOVIES, n)
    movie[:3] = [0, 1, 0]  # a movie more than once, the one-word and the full-width title
    return {"movie_id": movie, "category_id": categories[movie], "movie_title": titles[movie]}


def _user_feeds(rng, n: int) -> dict[str, np.ndarray]:
    user = rng.randint(0, N_USERS, n)
    user[:3] = 0  # the unknown user
    return {"user_id": user, "gender_id": rng.randint(0, 2, n), "age_id": rng.randint(0, N_AGES, n),
            "job_id": rng.randint(0, N_JOBS, n)}  # fmt: skip


def _net(seed: int = 0, sparse: bool = True) -> RecommenderNet:
    paddle.seed(seed)
    net = RecommenderNet(N_USERS, N_AGES, N_JOBS, N_MOVIES, N_CATS, N_WORDS, sparse=sparse)
    rng = np.random.RandomState(seed)
    with paddle.no_grad():  # non-zero biases, so that their handling is checked too
        for k, p in net.named_parameters():
            if k.endswith("bias"):
                p.set_value(rng.normal(0, 0.3, p.shape).astype("float32"))
    return net


def _tensors(step: fused.FusedStep, f: dict) -> list:
    return step.tensors(f)


@pytest.mark.parametrize("sparse", [True, False])
def test_user_tower_values_and_gradients_equal_the_plain_tower(sparse):
    rng = np.random.RandomState(1)
    net = _net(1, sparse)
    f = _user_feeds(rng, 16)
    tower = net.user_tower
    want = tower(*[paddle.to_tensor(f[k]) for k in movielens.FEED_NAMES[:4]])
    d_out = paddle.to_tensor(rng.normal(size=want.shape).astype("float32"))
    want_grads = _autograd(tower, [want], [d_out])
    with paddle.no_grad():
        got, saved = fused.user_tower(tower, *_tensors(fused.FusedStep(net, None), f))
        grads: list = []
        fused.user_tower_grad(tower, saved, d_out, grads)
    _close(got.numpy(), want.numpy())
    _assert_same(_fused_grads(tower, grads), want_grads)
    assert len(want_grads) == len(tower.parameters())  # every parameter, each feature's own table and fc
    assert all(g.is_selected_rows() == sparse for p, g in grads if p.shape[0] in (N_USERS, 2, N_AGES, N_JOBS))


@pytest.mark.parametrize("sparse", [True, False])
def test_movie_tower_values_and_gradients_equal_the_plain_tower(sparse):
    rng = np.random.RandomState(2)
    net = _net(2, sparse)
    f = _movie_feeds(rng, 16)
    tower = net.movie_tower
    want = tower(*[paddle.to_tensor(f[k]) for k in movielens.FEED_NAMES[4:]])
    d_out = paddle.to_tensor(rng.normal(size=want.shape).astype("float32"))
    want_grads = _autograd(tower, [want], [d_out])
    with paddle.no_grad():
        x = _tensors(fused.FusedStep(net, None), f)
        got, saved = fused.movie_tower(tower, *x[:5])  # the distinct movies, in order
        got = fused._gather_rows(got, x[5])
        grads: list = []
        fused.movie_tower_grad(tower, saved, fused._scatter_rows(x[5], d_out, len(np.unique(f["movie_id"]))), grads)
    _close(got.numpy(), want.numpy())
    _assert_same(_fused_grads(tower, grads), want_grads)


def test_title_windows_are_the_text_cnn_windows():
    title = np.array([[4, 5, 6, 9], [7, 9, 9, 9]])
    windows, rows = fused.title_windows(title, 9)
    np.testing.assert_array_equal(windows, [[9, 4, 5], [4, 5, 6], [5, 6, 9], [9, 7, 9]])
    np.testing.assert_array_equal(rows, [0, 0, 0, 1])


def _towers(rng, n: int, d: int = 200):
    u, m = (paddle.to_tensor(np.tanh(rng.normal(size=(n, d))).astype("float32")) for _ in range(2))
    for x in (u, m):
        x.stop_gradient = False
    return u, m


def test_cos_mse_value_and_gradients_equal_the_plain_head_and_loss():
    rng = np.random.RandomState(3)
    u, m = _towers(rng, 64)
    label = paddle.to_tensor(rng.choice([-3.0, -1.0, 1.0, 3.0, 5.0], (64, 1)).astype("float32"))
    want = rating_loss(cos_sim_score(u, m), label)
    want.backward()
    with paddle.no_grad():
        got, saved = fused.cos_mse(u, m, label)
        d_u, d_m = fused.cos_mse_grad(saved)
    _close(got.numpy(), want.numpy())
    _close(d_u.numpy(), u.grad.numpy())
    _close(d_m.numpy(), m.grad.numpy())


@pytest.mark.parametrize("negatives", ["in-batch", "full"])
def test_softmax_xent_value_and_gradients_equal_the_plain_loss(negatives):
    from recsys.model import in_batch_softmax_loss

    rng = np.random.RandomState(4)
    u, table = _towers(rng, 32, 16)
    if negatives == "in-batch":  # the batch's movies, some more than once; the fused loss takes each once
        movies = rng.randint(0, 10, 32)
        movies[:3] = [4, 4, 4]
        log_freq = np.log(rng.dirichlet(np.ones(10))).astype(np.float32)
        m = paddle.gather(table, paddle.to_tensor(movies))
        want = in_batch_softmax_loss(u, m, movies, log_freq, 0.25)
        target, add = fused.in_batch(movies, log_freq)
        candidates, extra = paddle.gather(table, paddle.to_tensor(np.unique(movies))), [paddle.to_tensor(add)]
    else:
        target = rng.randint(0, 32, 32)
        want = softmax_loss(u, table, paddle.to_tensor(target), 0.25)
        candidates, extra = table, []
    want.backward()
    with paddle.no_grad():
        got, saved = fused.softmax_xent(u, candidates, paddle.to_tensor(target[:, None]), 0.25, *extra)
        d_u, d_m = fused.softmax_xent_grad(saved)
    want_d_m = table.grad.numpy()
    if negatives == "in-batch":
        want_d_m = want_d_m[np.unique(movies)]
    _close(got.numpy(), want.numpy())
    _close(d_u.numpy(), u.grad.numpy())
    _close(d_m.numpy(), want_d_m)


def test_covers_only_the_chapter_network():
    assert fused.FusedStep.covers(_net())

    class WithHistory(UserTower):
        pass

    other = _net()
    other.user_tower = WithHistory(N_USERS, N_AGES, N_JOBS)
    assert not fused.FusedStep.covers(other)
    assert not fused.FusedStep.covers(MovieTower(N_MOVIES, N_CATS, N_WORDS))
    extra = _net()  # the same classes with one more layer: its parameter is not one the fused step knows
    extra.user_tower.history_fc = paddle.nn.Linear(32, 32)
    assert not fused.FusedStep.covers(extra)


def _trainers(data, **kw) -> tuple[Trainer, Trainer]:
    fast, plain = Trainer(data, **kw), Trainer(data, fused=False, **kw)
    assert fast.fused is not None and plain.fused is None
    np.testing.assert_equal(fast.params(), plain.params())  # same seed, same initial parameters
    return fast, plain


def _assert_params_close(a: Trainer, b: Trainer, tol: float = 1e-6) -> None:
    pa, pb = a.params(), b.params()
    for k in pa:
        _close(pa[k], pb[k], tol, k)


@pytest.mark.parametrize("kw", [{}, {"sparse": False}, {"cold_start_rate": 0.3}])
def test_fused_training_steps_equal_plain_steps(small_dir, kw):
    data = movielens.load(data_dir=small_dir)
    fast, plain = _trainers(data, **kw)
    order = np.random.RandomState(0).permutation(np.flatnonzero(~data.is_test))
    for b in range(5):
        idx = order[b * 256 : (b + 1) * 256]
        _close(float(fast.step(idx)), float(plain.step(idx)))
    _assert_params_close(fast, plain)
    assert not np.array_equal(fast.params()["user_tower.fc.weight"], Trainer(data).params()["user_tower.fc.weight"])


@pytest.mark.parametrize("negatives", ["in-batch", "full"])
def test_fused_retrieval_steps_equal_plain_steps(small_dir, negatives):
    data = movielens.load(data_dir=small_dir)
    positives = np.flatnonzero(~data.is_test & (data.stars >= 4))
    # plain SGD keeps the comparison at the gradients' precision (Adam divides by their running size)
    fast, plain = _trainers(data, objective="retrieval", temperature=0.25, negatives=negatives, lr=0.05)
    for t in (fast, plain):
        t.sample_from(positives)
    order = np.random.RandomState(0).permutation(positives)
    for b in range(4):
        idx = order[b * 128 : (b + 1) * 128]
        _close(float(fast.step(idx)), float(plain.step(idx)))
    _assert_params_close(fast, plain)


def test_fused_steps_feed_paddles_own_optimizers(small_dir):
    """Adam (lazy rows) and SGD with L2 update from the fused gradients as from autograd's."""
    data = movielens.load(data_dir=small_dir)
    order = np.random.RandomState(1).permutation(np.flatnonzero(~data.is_test))
    for kw in ({"optimizer": "adam", "lr": 1e-3}, {"weight_decay": 1e-3}):
        fast, plain = _trainers(data, **kw)
        for b in range(3):
            idx = order[b * 256 : (b + 1) * 256]
            _close(float(fast.step(idx)), float(plain.step(idx)))
        _assert_params_close(fast, plain, 1e-5)


def test_cli_costs_with_and_without_the_fused_step(small_dir, tmp_path):
    """Same seed, same batches: `train` and `train --no-fused` log the same costs, save the same parameters."""
    import json

    from conftest import run_cli

    runs = {}
    for flag in ("--fused", "--no-fused"):
        model = tmp_path / flag
        proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", "2",
                       "--eval-every", "60", flag)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        with np.load(model / "params.npz") as z:
            runs[flag] = json.loads((model / "metrics.json").read_text()), {k: z[k] for k in z.files}
    (m_fast, p_fast), (m_plain, p_plain) = runs["--fused"], runs["--no-fused"]
    assert len(m_fast) == len(m_plain) >= 4
    for a, b in zip(m_fast, m_plain):
        for k in ("train_cost", "test_cost", "test_rmse"):
            _close(a[k], b[k], 1e-5, k)
    assert sorted(p_fast) == sorted(p_plain)
    for k in p_fast:
        _close(p_fast[k], p_plain[k], 1e-5, k)


def test_phase_benchmark_runs_both_steps(small_dir):
    """`benchmarks/phases.py` (part of `make bench`) drives the fused step's parts; a smoke run, no timing."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "phases.py"
    cmd = [sys.executable, str(script), "--data-dir", str(small_dir), "--chunks", "1", "--chunk", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["plain", "fused"], out.stdout
    for r in rows:  # feeds, forward, backward, update, total: positive microseconds summing to the total
        us = [float(v) for v in r[-5:]]
        assert min(us) > 0 and abs(sum(us[:4]) - us[4]) <= 2, out.stdout


def test_feeds_or_objectives_it_does_not_know_take_the_plain_layers(small_dir):
    data = movielens.load(data_dir=small_dir)
    t = Trainer(data)
    idx = np.flatnonzero(~data.is_test)[:64]
    f = t.features(idx)
    assert t.fused_loss(idx, dict(f, history=np.zeros((64, 3), np.int64))) is None
    t.objective = "ranking"
    assert t.fused_loss(idx, f) is None
