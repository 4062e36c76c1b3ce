"""The ranking network's training data: the chapter's second stage, stacked on a retrieval model.

A stacked ranker must learn from labels the retrieval model did not train on (its scores on its own positives
are inflated). A retrieval model trained with `--holdout F` leaves a share F of the training ratings out of its
positives and its users' histories; the ranking network learns to find those held-out ratings of `--positive`
stars or more (positives) among the retrieval model's own top candidates and catalogue samples that the user
never rated in training (negatives, drawn again at every step). It trains on the candidate lists that it will
see at inference: the retrieval model's top N outside each user's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.errors import RecsysError
from recsys.topn import nearest, neighbours
from recsys.topn.lists import contains, rating_keys
from recsys.topn.rerank import candidate_pool, fingerprint, log_share
from recsys.topn.stages import first_stage, movie_index


def holdout_mask(n: int, train_idx: np.ndarray, share: float, seed: int) -> np.ndarray:
    """[n] bool: the training ratings held out for the ranker (a seeded `share` of `train_idx`)."""
    mask = np.zeros(n, bool)
    if share > 0:
        pick = np.random.RandomState(seed + 2).random_sample(len(train_idx)) < share
        mask[train_idx[pick]] = True
    return mask


@dataclass
class Candidates:
    """What the ranking network reads, per user: the retrieval model's top candidates and the pair features.

    `user_vectors` [U, D] and `movie_vectors` [M, D] (catalogue order) are the retrieval model's unit vectors
    as computed from the users' histories; `history` [U, M] (sparse 0/1) those histories, whose item-item score
    of a movie is their product with its column of the sparse neighbour weights `item_item` [M, M]
    (`recsys.topn.neighbours`); `log_share` [M] each movie's log share of the ratings (from the same histories);
    `rated` the sorted keys `user * M + column` of every training rating (the held-out ones too), which no
    negative may be; `pool` [U, N] each user's top-N catalogue columns outside their history (-1: none). Nothing
    here is a users x movies array."""

    user_vectors: np.ndarray
    movie_vectors: np.ndarray
    history: sp.csr_matrix
    item_item: sp.csc_matrix
    log_share: np.ndarray
    rated: np.ndarray
    pool: np.ndarray

    def features(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The ranking features of aligned (user, catalogue column) pairs, [N, 3] float32: the retrieval
        model's cosine, the movie's log share of the ratings, the item-item score of the user's history (the
        ranker's own weights)."""
        cosine = np.einsum("nd,nd->n", self.user_vectors[user], self.movie_vectors[col])
        item = neighbours.scores(self.history, self.item_item, user, col)
        return np.stack([cosine, self.log_share[col], item], axis=1).astype(np.float32)

    def is_rated(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """[n] bool: the user rated the column's movie in training."""
        return contains(self.rated, user.astype(np.int64) * len(self.movie_vectors) + col)

    def negatives(self, user: np.ndarray, per: int, hard: float, rng: np.random.RandomState) -> np.ndarray:
        """`per` negative catalogue columns for each user in `user` ([len(user) * per], user-major): a share
        `hard` from the user's candidates, the rest uniform over the catalogue; never a movie the user rated in
        training. A draw that lands on a rated movie is drawn again (uniformly); -1 where none was found."""
        users = np.repeat(user, per)
        n_cols = len(self.movie_vectors)
        cols = rng.randint(n_cols, size=len(users))
        from_pool = rng.random_sample(len(users)) < hard
        if from_pool.any():
            pick = self.pool[users[from_pool], rng.randint(self.pool.shape[1], size=int(from_pool.sum()))]
            cols[from_pool] = np.where(pick >= 0, pick, cols[from_pool])
        for _ in range(8):
            bad = self.is_rated(users, cols)
            if not bad.any():
                break
            cols[bad] = rng.randint(n_cols, size=int(bad.sum()))
        cols[self.is_rated(users, cols)] = -1
        return cols


def check_retrieval(md, data=None, what: str = "--candidates-from") -> None:
    """One-line error unless `md` is a retrieval model (of `data`, when given)."""
    if md.objective != "retrieval":
        raise RecsysError(
            f"{what} needs a retrieval model: {md.path} is a {md.objective} model "
            "(train one with --objective retrieval)"
        )
    if data is not None and (
        md.meta["sizes"] != data.sizes()
        or md.meta["dataset"] != data.meta.dataset
        or md.meta["split"] != data.split
        or md.meta["title_words"] != data.meta.title_words
    ):
        raise RecsysError(
            f"{md.path} was trained on other data ({md.meta['dataset']} {md.meta['split']}, not "
            f"{data.meta.dataset} {data.split}); train the ranker on the retrieval model's data"
        )


def prepare(t, args, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set up trainer `t` to train a ranking network on the candidates of the retrieval model
    `args.candidates_from`: its held-out ratings are the ranker's labels, its training ratings the histories,
    and the ranker's towers start from its towers. Returns the ranker's training, validation (carved from the
    held-out ratings by `args.val_ratio`) and test rating indices."""
    from recsys.modeldir import ModelDir

    retrieval = ModelDir.load(args.candidates_from)
    check_retrieval(retrieval, data)
    rs = retrieval.meta["settings"]
    if not rs.get("holdout"):
        raise RecsysError(
            f"{retrieval.path} held no training ratings out for a ranker to learn from; "
            "train the retrieval model with --holdout 0.1 (its default)"
        )
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    n_val = int(round(len(train_idx) * rs["val_ratio"]))  # the retrieval model's own validation slice
    train_idx = np.sort(np.random.RandomState(rs["seed"] + 1).permutation(train_idx)[n_val:])
    held = holdout_mask(len(data.user), train_idx, rs["holdout"], rs["seed"])
    fit, labels = train_idx[~held[train_idx]], train_idx[held[train_idx]]
    t.use_history(fit)
    feeds = data.tables.user_features(np.arange(data.sizes()["n_users"]))
    fit_users = retrieval.user_vector(feeds, histories=t.fit_history if retrieval.history else None)
    movies, n_cols = retrieval.catalogue_vectors, len(t.catalogue)
    trained = np.flatnonzero(~data.is_test)
    rated, fit_history = t.columns(trained), t.columns(fit)
    rated_keys = rating_keys(data.user[trained], np.searchsorted(t.catalogue, data.movie[trained]), n_cols)
    ix, stage = movie_index(retrieval, nearest.search_for(args.exact)), first_stage(retrieval)
    fit_pool = candidate_pool(fit_users, movies, fit_history, args.candidates, ix, stage)
    # the ranker learns to order the lists it will see: its positives are the held-out ratings among them
    sorted_pool = np.sort(fit_pool, axis=1).ravel()  # a row's candidates are distinct: its keys, ascending
    rows = np.repeat(np.arange(len(fit_pool), dtype=np.int64), fit_pool.shape[1])
    in_pool = (rows * n_cols + sorted_pool)[sorted_pool >= 0]
    keys = data.user[labels].astype(np.int64) * n_cols + np.searchsorted(t.catalogue, data.movie[labels])
    labels = labels[contains(in_pool, keys)]
    n_val = int(round(len(labels) * args.val_ratio))
    carve = np.random.RandomState(args.seed + 1).permutation(labels)
    n_neighbours = args.item_neighbours
    t.fit_candidates = Candidates(
        fit_users,
        movies,
        fit_history,
        neighbours.fit(fit_history, n_neighbours).tocsc(),
        log_share(fit_history),
        rated_keys,
        fit_pool,
    )
    t.item_item = neighbours.fit(rated, n_neighbours)  # what the saved model scores with: every training rating
    full_pool = candidate_pool(retrieval.arrays["user_vectors"], movies, rated, args.candidates, ix, stage)
    users = retrieval.arrays["user_vectors"]
    t.candidates = Candidates(users, movies, rated, t.item_item.tocsc(), log_share(rated), rated_keys, full_pool)
    t.negatives_per_positive, t.hard_negatives = args.negatives_per_positive, args.hard_negatives
    t.positive_weight = args.positive_weight
    t.retrieval_fingerprint, t.retrieval_settings = fingerprint(retrieval), rs
    current = t.params()  # the ranker's towers start as the retrieval model's, where their shapes agree
    towers = {k: v for k, v in retrieval.params().items() if k in current and v.shape == current[k].shape}
    if stage is not None:  # the untrained head orders candidates by the first stage's score, cos + beta * item
        towers["head.linear"] = np.array([[4.0], [0.0], [4.0 * stage.beta]], np.float32)
    t.set_params(current | towers)
    if not args.train_towers:  # only the head learns: the towers stay the retrieval model's
        t.freeze_towers()
    return np.sort(carve[n_val:]), np.sort(carve[:n_val]), test_idx
