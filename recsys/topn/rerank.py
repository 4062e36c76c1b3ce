"""The second stage's pieces that serving shares with training: a retrieval model's candidate pools, the
ranking network's pair features and its head in NumPy, and what identifies the retrieval model it reorders."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class PairInputs:
    """Everything the ranking network's pair features read, all of it from the training split: the users'
    retrieval unit vectors `user_vectors` [U, D] and their histories `history` [U, M] (sparse 0/1 over catalogue
    columns: their training ratings, or a served request's with the ratings it brings); the movies' retrieval
    unit vectors `movie_vectors` [M, D] (catalogue order), the ranker's sparse item-item weights `item_item`
    [M, M] (`recsys.topn.neighbours`; CSC is fastest) and each movie's log share of the ratings `log_share` [M].
    Training, evaluation and serving build one of these and call `pair_features` on it."""

    user_vectors: np.ndarray
    history: sp.csr_matrix
    movie_vectors: np.ndarray
    item_item: sp.spmatrix
    log_share: np.ndarray


def pair_features(inputs: PairInputs, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ranking features of aligned (user, catalogue column) pairs, [N, 3] float32: the retrieval model's
    cosine, the movie's log share of the ratings, the item-item score of the user's history (the ranker's own
    weights). `users` index the rows of `inputs.user_vectors` and `inputs.history`."""
    cosine = np.einsum("nd,nd->n", inputs.user_vectors[users], inputs.movie_vectors[cols])
    item = neighbours.scores(inputs.history, inputs.item_item, users, cols)
    return np.stack([cosine, inputs.log_share[cols], item], axis=1).astype(np.float32)


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


def served_features(md, rerank, first: np.ndarray, seen, pool: np.ndarray) -> np.ndarray:
    """The pair features [n, N, F] of a batch of served users' candidate columns `pool` [n, N] (-1: none), from
    the retrieval model dir `md`, the ranking model dir `rerank`, the users' retrieval unit vectors `first`
    [n, D] and their histories `seen` [n, M] (catalogue columns: their training ratings and those a request
    brings): `pair_features` on the same inputs as training builds them."""
    cols = np.maximum(pool, 0)
    inputs = PairInputs(first, sp.csr_matrix(seen, dtype=np.float32), md.catalogue_vectors, rerank.item_item,
                        rerank.arrays["log_share"])  # fmt: skip
    rows = np.repeat(np.arange(len(cols)), cols.shape[1])
    return pair_features(inputs, rows, cols.ravel()).reshape(*cols.shape, -1)
