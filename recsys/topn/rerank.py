"""The second stage's pieces that serving shares with training: a retrieval model's candidate pools, the
ranking network's pair features and its head in NumPy, and what identifies the retrieval model it reorders."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.topn import first_stage, neighbours
from recsys.topn.lists import chunk_rows


def candidate_pool(
    user_vectors: np.ndarray, movie_vectors: np.ndarray, seen, n: int, ix=None, stage=None, chunk: int | None = None
):
    """Each user's top-n catalogue columns by the first stage's score (`recsys.topn.first_stage`; the cosine
    when `stage` is None), their histories `seen` [U, M] (bool, or sparse 0/1) excluded, a chunk of users at a
    time (only a chunk's rows are ever dense: `lists.chunk_rows` by default), through the faiss index `ix` when
    given."""
    chunk = chunk or chunk_rows(len(movie_vectors))
    parts = [
        first_stage.top_k(stage, ix, movie_vectors, user_vectors[s : s + chunk], seen[s : s + chunk], n)[0]
        for s in range(0, len(user_vectors), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, n), np.int64)


def log_share(history) -> np.ndarray:
    """Each column's log share of the ratings in 0/1 histories [U, M] (dense or sparse; add-one smoothed):
    [M] float32."""
    counts = np.asarray(history.sum(axis=0), np.float64).ravel() + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def pair_features(cosine: np.ndarray, share: np.ndarray, weights: sp.csr_matrix, seen: np.ndarray, pool: np.ndarray):
    """The ranking features [n, N, 3] of each user's candidate columns `pool` [n, N] (-1: none), from the
    retrieval cosines [n, N], the movies' log shares [M], the ranker's sparse item-item weights [M, M]
    (`recsys.topn.neighbours`) and the users' histories as catalogue columns `seen` [n, M] (bool)."""
    cols = np.maximum(pool, 0)
    history = sp.csr_matrix(seen, dtype=np.float32)
    item = neighbours.scores(history, weights, np.repeat(np.arange(len(pool)), pool.shape[1]), cols.ravel())
    return np.stack([cosine, share[cols], item.reshape(cols.shape)], axis=-1).astype(np.float32)


def head_scores(params: dict[str, np.ndarray], user: np.ndarray, movie: np.ndarray, features: np.ndarray):
    """The ranking head (`model.RankingHead`) in numpy: logits for tower outputs `user` [..., D] and `movie`
    [..., D] and pair features [..., 3]. Saves running the network over precomputed tower outputs."""
    x = np.concatenate([np.broadcast_to(user, movie.shape) * movie, features], axis=-1)
    flat = x.reshape(-1, x.shape[-1])  # one 2-D product: NumPy's stacked [..., N, D] @ [D, H] is ten times slower
    h = np.maximum(flat @ params["head.fc.weight"] + params["head.fc.bias"], 0.0)
    linear = features.reshape(-1, features.shape[-1]) @ params["head.linear"]
    return (linear + h @ params["head.out.weight"] + params["head.out.bias"]).reshape(x.shape[:-1])


def fingerprint(md) -> str | None:
    """What identifies a retrieval model's parameters: the SHA-256 of its params.npz (from its manifest)."""
    return (md.files.expected or {}).get("params.npz", {}).get("sha256")
