"""The fused step (`recsys.fused.step`) equals the plain layers under autograd: each piece's values and gradients,
and whole training steps. "Equal" is to 1e-6 of the array's scale (its largest entry, at least 1): float32
sums taken in another order differ in their last bits."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from recsys import movielens
from recsys.data import history
from recsys.fused import layers
from recsys.fused import loops as kernels
from recsys.fused import step as fused
from recsys.model import (
    History,
    MovieTower,
    RankingNet,
    RecommenderNet,
    UserTower,
    cos_sim_score,
    rating_loss,
    softmax_loss,
)
from recsys.training.ranking import RankingTask, Stack
from recsys.training.rating import RatingTask
from recsys.training.task import catalogue
from recsys.training.tasks import Task, task_class

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


def _fused_dense(grad, shape) -> np.ndarray:
    """A fused gradient as a dense array (`layers.Rows` summed into their rows)."""
    if not isinstance(grad, layers.Rows):
        return np.asarray(grad)
    out = np.zeros(shape, np.float32)
    grad = grad.plain()
    np.add.at(out, grad.ids, grad.values)
    return out


def _fused_grads(layer, grads: list) -> dict[str, np.ndarray]:
    names = {id(p): k for k, p in layer.named_parameters()}
    return {names[id(p.p)]: _fused_dense(g, p.p.shape) for p, g in grads}


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


def _history(rng, n: int) -> np.ndarray:
    """History weights of n users: random sets of rated movies (row 1 empty, row 2 a single movie), 1/count each."""
    rows = (rng.random_sample((n, N_MOVIES)) < 0.3).astype(np.float32)
    rows[1] = 0.0
    rows[2] = 0.0
    rows[2, 7] = 1.0
    return history.history_weights(rows)


def _net(seed: int = 0, sparse: bool = True, with_history: bool = False) -> RecommenderNet:
    paddle.seed(seed)
    net = RecommenderNet(N_USERS, N_AGES, N_JOBS, N_MOVIES, N_CATS, N_WORDS, sparse=sparse, history=with_history)
    rng = np.random.RandomState(seed)
    with paddle.no_grad():  # non-zero biases, so that their handling is checked too
        for k, p in net.named_parameters():
            if k.endswith("bias"):
                p.set_value(rng.normal(0, 0.3, p.shape).astype("float32"))
    return net


@pytest.mark.parametrize("with_history", [False, True])
@pytest.mark.parametrize("sparse", [True, False])
def test_user_tower_values_and_gradients_equal_the_plain_tower(sparse, with_history):
    rng = np.random.RandomState(1)
    net = _net(1, sparse, with_history)
    f = _user_feeds(rng, 16)
    if with_history:  # rows 0..2 are the unknown user; row 1 has an empty history
        f["history"] = _history(rng, 16)
    tower = net.user_tower
    history_tensor = [paddle.to_tensor(f["history"])] if with_history else []
    want = tower(*[paddle.to_tensor(f[k]) for k in movielens.FEED_NAMES[:4]], *history_tensor)
    d_out = paddle.to_tensor(rng.normal(size=want.shape).astype("float32"))
    want_grads = _autograd(tower, [want], [d_out])
    step = fused.FusedStep(net, None)
    history_weights = [step.history(f)] if with_history else []
    got, saved = layers.user_tower(layers.plan(tower), *step.arrays(f), *history_weights)
    grads: list = []
    layers.user_tower_grad(saved, d_out.numpy(), grads)
    _close(got, want.numpy())
    _assert_same(_fused_grads(tower, grads), want_grads)
    assert len(want_grads) == len(tower.parameters()) == 14 + 3 * with_history  # every table and fc, the history's
    tables = [g for p, g in grads if p.p.shape[0] in (N_USERS, 2, N_AGES, N_JOBS)]
    assert len(tables) == 4 and all(isinstance(g, layers.Rows) == sparse for g in tables)
    if with_history:
        emb = [g for p, g in grads if p.p is tower.history.emb]
        assert len(emb) == 1 and not isinstance(emb[0], layers.Rows) and emb[0].shape == (N_MOVIES, 32)


def test_user_tower_with_history_needs_its_weights():
    net = _net(1, with_history=True)
    f = _user_feeds(np.random.RandomState(1), 4)
    with pytest.raises(ValueError, match="history"):
        layers.user_tower(layers.plan(net.user_tower), *fused.FusedStep(net, None).arrays(f))


@pytest.mark.parametrize("sparse", [True, False])
def test_movie_tower_values_and_gradients_equal_the_plain_tower(sparse):
    rng = np.random.RandomState(2)
    net = _net(2, sparse)
    f = _movie_feeds(rng, 16)
    tower = net.movie_tower
    want = tower(*[paddle.to_tensor(f[k]) for k in movielens.FEED_NAMES[4:]])
    d_out = paddle.to_tensor(rng.normal(size=want.shape).astype("float32"))
    want_grads = _autograd(tower, [want], [d_out])
    x = fused.FusedStep(net, None).arrays(f)
    np.testing.assert_array_equal(x[0], np.unique(f["movie_id"]))  # the distinct movies, in order
    np.testing.assert_array_equal(x[0][x[4]], f["movie_id"])  # and each rating's among them
    got, saved = layers.movie_tower(layers.plan(tower), *x[:4])
    grads: list = []
    layers.movie_tower_grad(saved, kernels.segment_sum(d_out.numpy(), x[4], len(x[0])), grads)
    _close(got[x[4]], want.numpy())
    _assert_same(_fused_grads(tower, grads), want_grads)


def test_title_windows_are_the_text_cnn_windows():
    title = np.array([[4, 5, 6, 9], [7, 9, 9, 9], [9, 9, 9, 9], [1, 2, 3, 8]])
    windows, rows = layers.title_windows(title, 9)
    want = [[9, 4, 5], [4, 5, 6], [5, 6, 9], [9, 7, 9], [9, 1, 2], [1, 2, 3], [2, 3, 8], [3, 8, 9]]
    np.testing.assert_array_equal(windows, want)
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 3, 3, 3, 3])  # a title of no word has no window


def test_kernels_equal_their_numpy_forms():
    rng = np.random.RandomState(7)
    ids = rng.randint(0, 6, 40)
    np.testing.assert_equal(kernels.distinct(ids), np.unique(ids, return_index=True, return_inverse=True))
    table, values = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(40, 3)).astype(np.float32)
    want = np.zeros((6, 3), np.float32)
    np.add.at(want, ids, values)
    _close(kernels.segment_sum(values, ids, 6), want)
    got, lr = table.copy(), np.float32(0.5)
    kernels.sgd_rows(got, ids, values, lr)
    step = table.copy()
    for i, v in zip(ids, values):  # Paddle's sparse SGD: each row of the gradient in turn
        step[i] -= lr * v
    np.testing.assert_array_equal(got, step)
    bags = np.array([[0, 5, 5], [5, 5, 5], [2, 2, 1]])  # 5 pads
    np.testing.assert_allclose(kernels.bag_sum(table, bags, 5), [table[0], np.zeros(3), 2 * table[2] + table[1]])
    out = np.empty((4, 3), np.float32)
    kernels.gather(table, np.array([1, 5, 0, 5]), 5, out)
    np.testing.assert_array_equal(out, [table[1], np.zeros(3), table[0], np.zeros(3)])


def _towers(rng, n: int, d: int = 200):
    u, m = (paddle.to_tensor(np.tanh(rng.normal(size=(n, d))).astype("float32")) for _ in range(2))
    for x in (u, m):
        x.stop_gradient = False
    return u, m


def test_cos_mse_value_and_gradients_equal_the_plain_head_and_loss():
    """Ratings of 64 users on 10 movies (most rated several times): each movie's gradient sums its ratings'."""
    rng = np.random.RandomState(3)
    u, table = _towers(rng, 64)
    rows = rng.randint(0, 10, 64)
    label = rng.choice([-3.0, -1.0, 1.0, 3.0, 5.0], (64, 1)).astype("float32")
    want = rating_loss(cos_sim_score(u, paddle.gather(table, paddle.to_tensor(rows))), paddle.to_tensor(label))
    want.backward()
    got, saved = layers.cos_mse(u.numpy(), table.numpy(), rows, label)
    d_u, d_m = layers.cos_mse_grad(saved)
    _close(got, want.numpy())
    _close(d_u, u.grad.numpy())
    _close(d_m, table.grad.numpy())


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
        candidates, extra = paddle.gather(table, paddle.to_tensor(np.unique(movies))), [add]
    else:
        target = rng.randint(0, 32, 32)
        want = softmax_loss(u, table, paddle.to_tensor(target), 0.25)
        candidates, extra = table, []
    want.backward()
    got, saved = layers.softmax_xent(u.numpy(), candidates.numpy(), target, 0.25, *extra)
    d_u, d_m = layers.softmax_xent_grad(saved)
    want_d_m = table.grad.numpy()
    if negatives == "in-batch":
        want_d_m = want_d_m[np.unique(movies)]
    _close(got, want.numpy())
    _close(d_u, u.grad.numpy())
    _close(d_m, want_d_m)


def test_covers_only_the_chapter_network():
    assert fused.FusedStep.covers(_net())
    assert fused.FusedStep.covers(_net(with_history=True))
    assert fused.FusedStep.covers(RankingNet(N_USERS, N_AGES, N_JOBS, N_MOVIES, N_CATS, N_WORDS))

    class OtherTower(UserTower):
        pass

    other = _net()
    other.user_tower = OtherTower(N_USERS, N_AGES, N_JOBS)
    assert not fused.FusedStep.covers(other)
    assert not fused.FusedStep.covers(MovieTower(N_MOVIES, N_CATS, N_WORDS))
    ranker = RankingNet(N_USERS, N_AGES, N_JOBS, N_MOVIES, N_CATS, N_WORDS)
    ranker.head.gate = paddle.nn.Linear(3, 1)  # a head with a layer the fused step does not know
    assert not fused.FusedStep.covers(ranker)
    extra = _net()  # the same classes with one more layer: its parameter is not one the fused step knows
    extra.user_tower.history_fc = paddle.nn.Linear(32, 32)
    assert not fused.FusedStep.covers(extra)
    extra = _net(with_history=True)  # the history part with one more layer
    extra.user_tower.history.gate = paddle.nn.Linear(32, 1)
    assert not fused.FusedStep.covers(extra)

    class OtherHistory(History):
        pass

    other = _net(with_history=True)
    other.user_tower.history = OtherHistory(N_MOVIES)
    assert not fused.FusedStep.covers(other)


def _task(data, objective: str = "rating", **kw) -> Task:
    """The objective's task (a training example reads its whole history unless `history_cap` says otherwise); a
    ranking network's on stand-in candidates (`_candidates`)."""
    kw.setdefault("history_cap", 0)
    if objective == "ranking":
        cand = _candidates(data)
        return RankingTask(data, Stack(cand, cand), **kw)
    return task_class(objective)(data, **kw)


def _trainers(data, **kw) -> tuple[Task, Task]:
    fast, plain = _task(data, **kw), _task(data, fused=False, **kw)
    assert fast.fused is not None and plain.fused is None
    np.testing.assert_equal(fast.params(), plain.params())  # same seed, same initial parameters
    return fast, plain


def _assert_params_close(a: Task, b: Task, tol: float = 1e-6) -> None:
    pa, pb = a.params(), b.params()
    for k in pa:
        _close(pa[k], pb[k], tol, k)


@pytest.mark.parametrize(
    "kw",
    [{}, {"sparse": False}, {"cold_start_rate": 0.3}, {"with_history": True}, {"with_history": True, "sparse": False}],
)
def test_fused_training_steps_equal_plain_steps(small_dir, kw):
    data = movielens.load(data_dir=small_dir)
    fast, plain = _trainers(data, **kw)
    order = np.random.RandomState(0).permutation(np.flatnonzero(~data.is_test))
    for b in range(5):
        idx = order[b * 256 : (b + 1) * 256]
        _close(float(fast.step(idx)), float(plain.step(idx)))
    _assert_params_close(fast, plain)
    assert not np.array_equal(fast.params()["user_tower.fc.weight"], RatingTask(data).params()["user_tower.fc.weight"])


@pytest.mark.parametrize("with_history", [False, True])
@pytest.mark.parametrize("negatives", ["in-batch", "full"])
def test_fused_retrieval_steps_equal_plain_steps(small_dir, negatives, with_history):
    data = movielens.load(data_dir=small_dir)
    positives = np.flatnonzero(~data.is_test & (data.stars >= 4))
    # plain SGD keeps the comparison at the gradients' precision (Adam divides by their running size)
    kw = {"temperature": 0.25, "negatives": negatives, "optimizer": "sgd", "lr": 0.05, "with_history": with_history}
    fast, plain = _trainers(data, objective="retrieval", **kw)
    for t in (fast, plain):
        t.positives(positives)
        t.use_history(np.flatnonzero(~data.is_test))
    order = np.random.RandomState(0).permutation(positives)
    for b in range(4):
        idx = order[b * 128 : (b + 1) * 128]
        _close(float(fast.step(idx)), float(plain.step(idx)))
    _assert_params_close(fast, plain)


def test_fused_steps_feed_paddles_own_optimizers(small_dir):
    """Adam (lazy rows; with history, its dense movie embeddings) and SGD with L2 update from the fused gradients
    as from autograd's."""
    data = movielens.load(data_dir=small_dir)
    order = np.random.RandomState(1).permutation(np.flatnonzero(~data.is_test))
    for kw in (
        {"optimizer": "adam", "lr": 1e-3},
        {"weight_decay": 1e-3},
        {"optimizer": "adam", "lr": 1e-3, "with_history": True},
    ):
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


def test_feeds_it_does_not_know_take_the_plain_layers(small_dir):
    data = movielens.load(data_dir=small_dir)
    t = RatingTask(data)
    idx = np.flatnonzero(~data.is_test)[:64]
    f = t.features(idx)
    assert t.fused_loss(idx, dict(f, history=np.zeros((64, 3), np.int64))) is None  # no history part to feed
    h = RatingTask(data, with_history=True)
    assert h.fused is not None
    assert h.fused_loss(idx, f) is None  # a history network without its history feed
    assert h.fused_loss(idx, dict(h.features(idx), extra=np.zeros(64))) is None


@pytest.mark.parametrize("objective", ["rating", "retrieval"])
def test_fused_gradients_with_history_equal_autograds(small_dir, objective):
    """One batch's gradients of every parameter, each to 1e-4 of its own largest entry (float32 sums of terms
    that cancel, like a bias's, lose more than 1e-6 of the result): the history embeddings' gradients are small
    (each movie gets a share of its raters' rows), too small for the comparisons of whole steps' parameters to
    see an error in them."""
    data = movielens.load(data_dir=small_dir)
    t = _task(data, objective, with_history=True)  # retrieval: temperature 0.25
    idx = np.flatnonzero(~data.is_test & (data.stars >= 4))[:256]
    t.positives(idx)
    f = t.features(idx, training=True)
    want = _autograd(t.net, [t.loss(idx, f)], [paddle.to_tensor(1.0)])
    step, x, h = t.fused, t.fused.arrays(f), t.fused.history(f)
    if objective == "rating":
        grads = step.rating_grads(step.rating_loss(x, t.label[idx], h)[1])
    else:
        target, add = fused.in_batch(data.movie[idx], t.log_q)
        u, m, saved = step.forward(x[:4], x[4:], h)
        grads = step.backward(saved, *layers.softmax_xent_grad(layers.softmax_xent(u, m, target, 0.25, add)[1]))
    got = _fused_grads(t.net, grads)
    assert sorted(got) == sorted(want) == sorted(k for k, _ in t.net.named_parameters())
    for k in want:
        scale = float(np.abs(want[k]).max())
        assert scale > 0, k
        _close(got[k] / scale, want[k] / scale, 1e-4, k)


def test_ranking_xent_value_and_gradients_equal_the_plain_head_and_loss():
    """The ranking head and its weighted logistic loss on 48 pairs of 12 movies (labels 0/1, weights 0..5, one
    pair weighing nothing), with a non-zero correction so that every head parameter is checked."""
    from recsys.model import RANK_FEATURES, RankingHead, weighted_logistic_loss

    rng = np.random.RandomState(5)
    paddle.seed(5)
    head = RankingHead()
    with paddle.no_grad():
        for p in head.parameters():
            p.set_value(rng.normal(0, 0.5, p.shape).astype("float32"))
    u, table = _towers(rng, 48)
    table = table[:12].detach()
    table.stop_gradient = False
    rows = rng.randint(0, 12, 48)
    features = rng.normal(size=(48, RANK_FEATURES)).astype("float32")
    label = (rng.random_sample(48) < 0.3).astype("float32")
    weight = rng.randint(0, 6, 48).astype("float32")
    weight[0] = 0.0
    logit = head(u, paddle.gather(table, paddle.to_tensor(rows)), paddle.to_tensor(features))
    want = weighted_logistic_loss(logit, paddle.to_tensor(label[:, None]), paddle.to_tensor(weight[:, None]))
    want.backward()
    want_grads = {k: _dense(p._grad_ivar(), p.shape) for k, p in head.named_parameters()}
    got, saved = layers.ranking_xent(layers.plan(head), u.numpy(), table.numpy(), rows, features, label, weight)
    grads: list = []
    d_u, d_m = layers.ranking_xent_grad(saved, grads)
    _close(got, want.numpy())
    _close(d_u, u.grad.numpy())
    _close(d_m, table.grad.numpy())
    _assert_same(_fused_grads(head, grads), want_grads)


def _candidates(data, seed: int = 0):
    """Stand-in retrieval candidates for a ranking trainer: random unit vectors, scores and shares."""
    import scipy.sparse as sp

    from recsys.topn import neighbours
    from recsys.topn.lists import rating_keys
    from recsys.topn.rerank import PairInputs
    from recsys.training.candidates import Candidates

    rng = np.random.RandomState(seed)
    n_users, n_movies = data.sizes()["n_users"], len(catalogue(data))
    users, movies = (rng.normal(size=(n, 8)).astype(np.float32) for n in (n_users, n_movies))
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    movies /= np.linalg.norm(movies, axis=1, keepdims=True)
    train = ~data.is_test
    user, col = data.user[train], np.searchsorted(catalogue(data), data.movie[train])
    history = neighbours.history_matrix(n_users, n_movies, user, col)
    weights = sp.random(n_movies, n_movies, density=0.1, format="csr", dtype=np.float32, random_state=seed)
    pool = np.argsort(-(users @ movies.T), axis=1)[:, :10]
    share = np.log(rng.dirichlet(np.ones(n_movies))).astype(np.float32)
    genres = (rng.random_sample((n_movies, 5)) < 0.3).astype(np.float32)
    stars, recent = rng.normal(size=n_movies).astype(np.float32), share[rng.permutation(n_movies)]
    inputs = PairInputs(users, history, movies, weights, share, genres, stars, recent)
    return Candidates(inputs, rating_keys(user, col, n_movies), pool)


@pytest.mark.parametrize("train_towers", [False, True])
def test_fused_ranking_steps_equal_plain_steps(small_dir, train_towers):
    """The ranking network's steps (by default only the head learns; the towers stay as they are)."""
    data = movielens.load(data_dir=small_dir)
    fast, plain = _trainers(data, objective="ranking", optimizer="sgd", with_history=False, train_towers=True)
    for t in (fast, plain):
        for name, p in t.net.named_parameters():
            p.stop_gradient = not (train_towers or name.startswith("head."))
    start = fast.params()
    order = np.random.RandomState(0).permutation(np.flatnonzero(~data.is_test & (data.stars >= 4)))
    for b in range(4):
        idx = order[b * 64 : (b + 1) * 64]
        _close(float(fast.step(idx)), float(plain.step(idx)))
    _assert_params_close(fast, plain)
    test = np.flatnonzero(data.is_test & (data.stars >= 4))  # the evaluation's loss, through the fused pieces too
    _close(fast.evaluate(test)["cost"], plain.evaluate(test)["cost"])
    if not train_towers:  # frozen, as training leaves them: the head alone over the towers' vectors
        fast.freeze_towers()
        _close(fast.evaluate(test)["cost"], plain.evaluate(test)["cost"])
    moved = {k for k, v in fast.params().items() if not np.array_equal(v, start[k])}
    assert {k for k in start if k.startswith("head.")} <= moved
    towers = {k for k in start if not k.startswith("head.")}
    assert moved & towers == (towers if train_towers else set())


@pytest.mark.parametrize("form", ["rows", "scaled rows", "dense"])
def test_adam_kernels_equal_paddles_adam(form):
    """Three steps of `kernels.lazy_adam` (rows that repeat; rows absent from a step keep their moments; the
    gradient's rows given, or as scaled rows of a smaller array, as a history mean's are) or `kernels.adam`
    against `paddle.optimizer.Adam` on the same gradients, from the state its first step made."""
    rng = np.random.RandomState(6)
    paddle.seed(6)
    sparse = form != "dense"
    emb = paddle.nn.Embedding(7, 3, sparse=sparse)
    opt = paddle.optimizer.Adam(0.01, parameters=emb.parameters(), lazy_mode=sparse)
    names = ("moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc")
    for step in range(4):
        ids = rng.randint(0, 5, 9)  # rows 5 and 6 never get a gradient
        x, rows, weight = rng.normal(size=(4, 3)).astype("float32"), rng.randint(0, 4, 9), rng.random_sample(9)
        weight = weight.astype("float32")
        d = weight[:, None] * x[rows] if form == "scaled rows" else rng.normal(size=(9, 3)).astype("float32")
        before = emb.weight.numpy().copy()
        state = [opt._accumulators[n][emb.weight.name].numpy().copy() for n in names] if step else None
        (emb(paddle.to_tensor(ids)) * paddle.to_tensor(d)).sum().backward()
        opt.step()
        opt.clear_grad()
        if state is None:
            continue
        m1, m2, b1_pow, b2_pow = state
        lr, b1, b2, eps = (np.float32(v) for v in (0.01, 0.9, 0.999, 1e-8))
        if sparse:
            slot = np.full(7, -1, np.int64)
            g = (rows, weight, x) if form == "scaled rows" else (np.empty(0, np.int64), np.empty(0, np.float32), d)
            kernels.lazy_adam(before, ids, *g, m1, m2, lr, b1, b2, eps, b1_pow, b2_pow, slot)
            assert np.all(slot == -1)  # the scratch is left as it was found
        else:
            grad = kernels.segment_sum(d, ids, 7)
            kernels.adam(before.ravel(), grad.ravel(), m1.ravel(), m2.ravel(), lr, b1, b2, eps, b1_pow, b2_pow)
        _close(before, emb.weight.numpy())
        _close(m1, opt._accumulators["moment1"][emb.weight.name].numpy())
        _close(m2, opt._accumulators["moment2"][emb.weight.name].numpy())
        for name, power in (("beta1_pow_acc", b1_pow), ("beta2_pow_acc", b2_pow)):  # the kernels advance them
            assert power[0] == opt._accumulators[name][emb.weight.name].numpy()[0]
