"""The network: text-CNN and category pooling equal the chapter's LoD ops; the head is 5 * cos_sim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F

from recsys.model import MovieTower, RecommenderNet, cos_sim_score

N_WORDS, N_CATS = 50, 18


def _padded(seqs: list[list[int]], pad: int) -> np.ndarray:
    out = np.full((len(seqs), max(map(len, seqs))), pad, np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def test_movie_tower_parts_equal_legacy_lod_ops(tmp_path):
    rng = np.random.RandomState(0)
    titles = [rng.randint(0, N_WORDS, n).tolist() for n in (1, 2, 5, 12)]
    cats = [rng.choice(N_CATS, n, replace=False).tolist() for n in (1, 3, 2, 6)]
    paddle.seed(1)
    tower = MovieTower(n_movies=10, n_categories=N_CATS, n_title_words=N_WORDS)
    with paddle.no_grad():  # non-zero bias so that its handling is checked too
        tower.title_cnn.bias.set_value(paddle.to_tensor(rng.normal(0, 0.3, 32).astype("float32")))
    np.savez(
        tmp_path / "in.npz",
        title_emb=tower.title_cnn.embedding.weight.numpy()[:N_WORDS],
        cat_emb=tower.category_emb.weight.numpy()[:N_CATS],
        conv_w=tower.title_cnn.weight.numpy(),
        conv_b=tower.title_cnn.bias.numpy(),
        titles=np.concatenate(titles),
        title_lens=np.array(list(map(len, titles))),
        cats=np.concatenate(cats),
        cat_lens=np.array(list(map(len, cats))),
    )
    oracle = Path(__file__).with_name("legacy_oracle.py")
    subprocess.run([sys.executable, str(oracle), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], check=True)
    want = np.load(tmp_path / "out.npz")

    title_ids = paddle.to_tensor(_padded(titles, N_WORDS))
    got_title = tower.title_cnn(title_ids).numpy()
    got_cats = tower.category_emb(paddle.to_tensor(_padded(cats, N_CATS))).sum(axis=1).numpy()
    np.testing.assert_allclose(got_title, want["title"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_cats, want["category"], rtol=1e-5, atol=1e-6)


def test_extra_padding_changes_nothing():
    paddle.seed(2)
    tower = MovieTower(n_movies=10, n_categories=N_CATS, n_title_words=N_WORDS)
    ids = paddle.to_tensor([1, 2])
    cats = _padded([[0, 3], [5]], N_CATS)
    titles = _padded([[4, 8, 15], [16]], N_WORDS)
    a = tower(ids, paddle.to_tensor(cats), paddle.to_tensor(titles)).numpy()
    wide = lambda x, pad: np.pad(x, ((0, 0), (0, 4)), constant_values=pad)  # noqa: E731
    b = tower(ids, paddle.to_tensor(wide(cats, N_CATS)), paddle.to_tensor(wide(titles, N_WORDS))).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_head_is_five_times_cosine_similarity():
    rng = np.random.RandomState(3)
    u, m = (paddle.to_tensor(rng.normal(size=(8, 200)).astype("float32")) for _ in range(2))
    np.testing.assert_allclose(
        cos_sim_score(u, m).numpy()[:, 0], 5 * F.cosine_similarity(u, m, axis=1).numpy(), rtol=1e-5
    )


def test_chapter_sizes_and_shapes():
    net = RecommenderNet(n_users=6041, n_ages=7, n_jobs=21, n_movies=3953, n_categories=18, n_title_words=5174)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["user_tower.user_emb.weight"] == (6041, 32)
    assert shapes["user_tower.gender_emb.weight"] == (2, 16)
    assert shapes["user_tower.age_emb.weight"] == (7, 16)
    assert shapes["user_tower.job_emb.weight"] == (21, 16)
    assert shapes["user_tower.fc.weight"] == (80, 200)
    assert shapes["movie_tower.movie_emb.weight"] == (3953, 32)
    assert shapes["movie_tower.category_emb.weight"] == (19, 32)  # + the padding row
    assert shapes["movie_tower.title_cnn.embedding.weight"] == (5175, 32)
    assert shapes["movie_tower.title_cnn.weight"] == (96, 32)
    assert shapes["movie_tower.fc.weight"] == (96, 200)
    out = net(
        *[paddle.to_tensor(x) for x in ([1, 2], [0, 1], [0, 6], [10, 20], [783, 1])],
        paddle.to_tensor([[2, 3, 11], [0, 18, 18]]),
        paddle.to_tensor([[1, 2, 3, 4, 5], [7, 5174, 5174, 5174, 5174]]),
    )
    assert out.shape == [2, 1] and np.all(np.abs(out.numpy()) <= 5)


def test_trainer_sgd_equals_paddle_optimizer_sgd():
    """recsys.fused.optim.SGD (Paddle's sgd kernel without the optimizer's bookkeeping) updates as paddle's does."""
    from recsys.fused.optim import SGD

    rng = np.random.RandomState(4)
    for sparse in (True, False):
        nets = []
        for _ in range(2):
            paddle.seed(5)
            nets.append(RecommenderNet(50, 7, 21, 40, N_CATS, N_WORDS, sparse=sparse))
        opts = [paddle.optimizer.SGD(0.2, parameters=nets[0].parameters()), SGD(nets[1].parameters(), 0.2)]
        before = nets[1].parameters()[-1].numpy().copy()
        for _ in range(4):
            ids = [paddle.to_tensor(rng.randint(0, n, 64)) for n in (50, 2, 7, 21, 40)]
            cats = paddle.to_tensor(rng.randint(0, N_CATS + 1, (64, 3)))
            titles = paddle.to_tensor(
                _padded([rng.randint(0, N_WORDS, rng.randint(1, 6)).tolist() for _ in range(64)], N_WORDS)
            )
            label = paddle.to_tensor(rng.normal(size=(64, 1)).astype("float32"))
            for net, opt in zip(nets, opts):
                ((net(*ids, cats, titles) - label) ** 2).mean().backward()
                opt.step()
                opt.clear_grad()
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert not np.array_equal(nets[1].parameters()[-1].numpy(), before), "the updates must change parameters"
