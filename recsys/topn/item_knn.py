"""Item-kNN: a first stage fitted in closed form (`python -m recsys.train --objective item-knn`).

Two movies are alike by the cosine of their columns in the 0/1 training matrix X [users, movies] (who rated
them): S[i, j] = (X'X)[i, j] / sqrt((X'X)[i, i] (X'X)[j, j]), S[i, i] = 0. Each movie keeps its `NEIGHBOURS`
most alike movies (S's largest entries of its column; ties: the smaller movie), the rest are 0. A user's score
of a movie is the sum of its similarities to the movies the user rated:

    score(u, j) = sum over i in history(u) of S[i, j]

so a user's rated movies (a new user's too) change their list at once. The model dir keeps S as a sparse
matrix over catalogue columns (`knn_indptr`, `knn_indices`, `knn_data`: CSR by the rated movie).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from recsys.topn.closed_form import ScoredStage
from recsys.topn.metrics import Interactions

NEIGHBOURS = 100  # each movie's most alike movies kept


def similarities(x: sp.csr_matrix, neighbours: int = NEIGHBOURS) -> sp.csr_matrix:
    """S (above) of the 0/1 rows `x` [users, movies], each column cut to its `neighbours` largest entries."""
    gram = (x.T @ x).tocsc().astype(np.float64)
    norms = np.sqrt(gram.diagonal())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    s = sp.diags(inverse) @ gram @ sp.diags(inverse)
    s.setdiag(0.0)
    s = s.tocsc()
    s.eliminate_zeros()
    s.sort_indices()
    keep = np.zeros(s.nnz, bool)
    for j in range(s.shape[1]):
        lo, hi = s.indptr[j], s.indptr[j + 1]
        best = np.lexsort((s.indices[lo:hi], -s.data[lo:hi]))[:neighbours]  # ties: the smaller movie
        keep[lo + best] = True
    s.data[~keep] = 0.0
    s.eliminate_zeros()
    return s.tocsr()


class ItemKnnStage(ScoredStage):
    """Item-kNN (above): a user's score of a movie is the sum of its cosines to the movies they rated."""

    label = "item-kNN"
    describe = "item-kNN, score = summed cosines to the rated movies"
    score = "sum of the movie's cosine similarities (columns of the 0/1 training matrix) to the user's rated movies"

    @classmethod
    def fit(cls, data: Interactions, **settings) -> dict[str, np.ndarray]:
        n = len(data.catalogue)
        x = sp.csr_matrix((np.ones(len(data.train_col)), (data.train_user, data.train_col)), shape=(data.n_users, n))
        x.data[:] = 1.0  # a movie rated twice counts once
        s = similarities(x)
        return {"knn_indptr": s.indptr.astype(np.int64), "knn_indices": s.indices.astype(np.int64),
                "knn_data": s.data.astype(np.float64)}  # fmt: skip

    @functools.cached_property
    def weights(self) -> sp.csr_matrix:
        a, n = self.md.arrays, len(self.md.movie_ids)
        return sp.csr_matrix((a["knn_data"], a["knn_indices"], a["knn_indptr"]), shape=(n, n))

    def scores(self, history: sp.csr_matrix) -> np.ndarray:
        return (history @ self.weights).toarray()
