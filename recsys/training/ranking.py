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

from recsys.errors import RecsysError
from recsys.topn.rerank import candidate_pool, fingerprint, log_share

ITEM_ITEM_LAMBDA = 500.0  # the item-item weights' L2 penalty (EASE's, as the baseline in `recsys.topn`)


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
    as computed from the users' histories; `item_scores` [U, M] the item-item score of each user's history
    for every movie and `log_share` [M] each movie's log share of the ratings (both from those histories);
    `rated` [U, M] is every training rating (the held-out ones too), which no negative may be; `pool` [U, N]
    holds each user's top-N catalogue columns among the movies outside their history (-1: none)."""

    user_vectors: np.ndarray
    movie_vectors: np.ndarray
    item_scores: np.ndarray
    log_share: np.ndarray
    rated: np.ndarray
    pool: np.ndarray

    def features(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The ranking features of aligned (user, catalogue column) pairs, [N, 3] float32: the retrieval
        model's cosine, the movie's log share of the ratings, the item-item score of the user's history."""
        cosine = np.einsum("nd,nd->n", self.user_vectors[user], self.movie_vectors[col])
        return np.stack([cosine, self.log_share[col], self.item_scores[user, col]], axis=1).astype(np.float32)

    def negatives(self, user: np.ndarray, per: int, hard: float, rng: np.random.RandomState) -> np.ndarray:
        """`per` negative catalogue columns for each user in `user` ([len(user) * per], user-major): a share
        `hard` from the user's candidates, the rest uniform over the catalogue; never a movie the user rated in
        training. A draw that lands on a rated movie is drawn again (uniformly); -1 where none was found."""
        users = np.repeat(user, per)
        n_cols = self.rated.shape[1]
        cols = rng.randint(n_cols, size=len(users))
        from_pool = rng.random_sample(len(users)) < hard
        if from_pool.any():
            pick = self.pool[users[from_pool], rng.randint(self.pool.shape[1], size=int(from_pool.sum()))]
            cols[from_pool] = np.where(pick >= 0, pick, cols[from_pool])
        for _ in range(8):
            bad = self.rated[users, cols]
            if not bad.any():
                break
            cols[bad] = rng.randint(n_cols, size=int(bad.sum()))
        cols[self.rated[users, cols]] = -1
        return cols


def _columns(data, catalogue: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[U, M] bool over catalogue columns: the movies each user rated in the ratings `idx`."""
    out = np.zeros((data.sizes()["n_users"], len(catalogue)), bool)
    out[data.user[idx], np.searchsorted(catalogue, data.movie[idx])] = True
    return out


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


MAX_CELLS = 250_000_000  # users x catalogue cells of the ranking network's tables (ml-1m: 22 million)


def prepare(t, args, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set up trainer `t` to train a ranking network on the candidates of the retrieval model
    `args.candidates_from`: its held-out ratings are the ranker's labels, its training ratings the histories,
    and the ranker's towers start from its towers. Returns the ranker's training, validation (carved from the
    held-out ratings by `args.val_ratio`) and test rating indices."""
    from recsys.modeldir import ModelDir
    from recsys.topn.baselines import ease_weights

    retrieval = ModelDir.load(args.candidates_from)
    check_retrieval(retrieval, data)
    cells = data.sizes()["n_users"] * len(t.catalogue)
    if cells > MAX_CELLS:  # the candidates' tables below are users x catalogue matrices
        raise RecsysError(
            f"the ranking network's candidate tables are users x movies matrices: {cells:,} cells "
            f"({cells * 4 / 2**30:.0f} GB each) for {data.meta.dataset}, above the {MAX_CELLS:,} recsys builds; "
            "rank this data's candidates with the retrieval model alone (or --rerank a rating model)"
        )
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
    movies = retrieval.catalogue_vectors
    rated, fit_history = _columns(data, t.catalogue, np.flatnonzero(~data.is_test)), _columns(data, t.catalogue, fit)
    fit_pool = candidate_pool(fit_users, movies, fit_history, args.candidates)
    in_pool = np.zeros_like(rated)  # the ranker learns to order the lists it will see: positives among them
    in_pool[np.repeat(np.arange(len(fit_pool)), fit_pool.shape[1]), fit_pool.ravel()] = True
    in_pool[:, -1] &= (fit_pool == len(movies) - 1).any(axis=1)  # -1 (no candidate) wrote the last column
    labels = labels[in_pool[data.user[labels], np.searchsorted(t.catalogue, data.movie[labels])]]
    n_val = int(round(len(labels) * args.val_ratio))
    carve = np.random.RandomState(args.seed + 1).permutation(labels)
    full_users = retrieval.arrays["user_vectors"]
    fit_weights = ease_weights(fit_history, ITEM_ITEM_LAMBDA)
    t.fit_candidates = Candidates(
        fit_users, movies, fit_history.astype(np.float32) @ fit_weights, log_share(fit_history), rated, fit_pool
    )
    t.item_item = ease_weights(rated, ITEM_ITEM_LAMBDA)  # what the saved model scores with: every training rating
    full_pool = candidate_pool(full_users, movies, rated, args.candidates)
    t.candidates = Candidates(
        full_users, movies, rated.astype(np.float32) @ t.item_item, log_share(rated), rated, full_pool
    )
    t.negatives_per_positive, t.hard_negatives = args.negatives_per_positive, args.hard_negatives
    t.positive_weight = args.positive_weight
    t.retrieval_fingerprint = fingerprint(retrieval)
    current = t.params()  # the ranker's towers start as the retrieval model's, where their shapes agree
    towers = {k: v for k, v in retrieval.params().items() if k in current and v.shape == current[k].shape}
    t.set_params(current | towers)
    if not args.train_towers:  # only the head learns: the towers stay the retrieval model's
        for name, p in t.net.named_parameters():
            p.stop_gradient = not name.startswith("head.")
    return np.sort(carve[n_val:]), np.sort(carve[:n_val]), test_idx
