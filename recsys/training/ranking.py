"""The ranking network (`--objective ranking`): the chapter's second stage, stacked on a first stage that leads
two (a retrieval model; or EASE or popularity, fitted in closed form, whose `--holdout` works the same way).

A stacked ranker must learn from labels the retrieval model did not train on (its scores on its own positives
are inflated). A retrieval model trained with `--holdout F` leaves a share F of the training ratings out of its
positives and its users' histories; the ranking network learns to find those held-out ratings of `--positive`
stars or more (positives) among the retrieval model's own top candidates and catalogue samples that the user
never rated in training (negatives, drawn again at every step). It trains on the candidate lists that it will
see at inference: the retrieval model's top N outside each user's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys import threads as recsys_threads
from recsys import topn
from recsys.data import history
from recsys.errors import RecsysError
from recsys.topn import nearest, neighbours
from recsys.topn import registry as topn_registry
from recsys.topn.lists import contains, rating_keys
from recsys.topn.rerank import (
    FEATURE_SETS,
    PairInputs,
    candidate_pool,
    fingerprint,
    latest_columns,
    log_share,
    mean_stars,
    recent_share,
)
from recsys.topn.stages import first_stage
from recsys.training import splits
from recsys.training.candidates import Candidates
from recsys.training.registry import register
from recsys.training.task import D, Task, catalogue, catalogue_columns, phase_count


def check_first(md, data=None):
    """`md` as the first stage a ranker stacks on (`recsys.topn.stage.FirstStage`); one-line error unless it
    leads two stages (and was trained on `data`, when given)."""
    first = topn_registry.first_stage(md)
    topn_registry.check_leads(first, "--candidates-from needs")
    if data is not None and (
        md.meta["sizes"] != data.sizes()
        or md.meta["dataset"] != data.meta.dataset
        or md.meta["split"] != data.split
        or md.meta["title_words"] != data.meta.title_words
    ):
        raise RecsysError(
            f"{md.path} was trained on other data ({md.meta['dataset']} {md.meta['split']}, not "
            f"{data.meta.dataset} {data.split}); train the ranker on its first stage's data"
        )
    return first


def first_queries(md, data, histories):
    """The users' inputs to the first stage (`FirstStage.queries`) as the histories `histories` give them: a
    tower model's unit vectors, None for a model dir with no network (its scores read the histories alone)."""
    if not md.meta.get("network", True):
        return None
    feeds = data.tables.user_features(np.arange(data.sizes()["n_users"]))
    return md.user_vector(feeds, histories=histories if md.history else None)


def pair_inputs(data, idx: np.ndarray, first, users, histories: sp.csr_matrix, movies, item_item: sp.csc_matrix,
                names: tuple[str, ...]) -> PairInputs:  # fmt: skip
    """The pair features' inputs (`recsys.topn.rerank.PairInputs`) of the ratings `idx` alone: the first
    stage `first`, the users' inputs to it `users` (a tower model's unit vectors, or None) and histories
    `histories` (of those ratings), the catalogue's vectors `movies` (or None), the item-item weights, the
    movies' shares, mean stars and recent shares of those ratings, and each user's latest movies among them;
    `names`: the features the head reads."""
    movies_of = catalogue(data)
    cols, n_cols = np.searchsorted(movies_of, data.movie[idx]), len(movies_of)
    genres = data.tables.genres(movies_of)
    stamps = None if data.timestamp is None else data.timestamp[idx]
    stars, recent = mean_stars(cols, data.stars[idx], n_cols), recent_share(cols, stamps, n_cols)
    reads_latest = "latest_item_item" in names  # each user's latest movies: a sort of the ratings, or none
    latest = latest_columns(data.user[idx], cols, stamps, histories.shape[0]) if reads_latest else None
    return PairInputs(users, histories, movies, item_item, log_share(histories), genres, stars, recent, names, first,
                      latest)  # fmt: skip


@dataclass
class Stack:
    """What a ranking network learns from: the candidates of the users' training histories (`fit_candidates`,
    histories of the ratings `fit_idx`) and of every training rating (`candidates`, as the saved model and the
    evaluation read them), the saved item-item weights, the parameters its towers start from (`start`; `beta`:
    the first stage's, which the untrained head starts from), and its training, validation and test ratings."""

    fit_candidates: Candidates
    candidates: Candidates
    item_item: sp.csr_matrix | None = None
    fit_idx: np.ndarray | None = None
    idx: tuple = ()  # training, validation and test rating indices
    start: dict = field(default_factory=dict)
    beta: float | None = None
    recorded: dict = field(default_factory=dict)  # what the model dir records of the retrieval model


def stack(data, candidates_from: str, n_candidates: int, n_neighbours: int, exact: bool, val_ratio: float,
          seed: int, names: tuple[str, ...] = FEATURE_SETS["basic"]) -> Stack:  # fmt: skip
    """The `Stack` of a ranking network on the candidates of the first stage `candidates_from` (a model dir
    that leads two stages): its held-out ratings are the ranker's labels (those among the fit candidates;
    validation carved from them by `val_ratio`), its training ratings the histories, and the ranker's towers
    start from its towers, where it has them; `names`: the pair features the head reads."""
    from recsys.modeldir import ModelDir

    md = ModelDir.load(candidates_from)
    first = check_first(md, data)
    rs = md.meta["settings"]
    if not rs.get("holdout"):
        raise RecsysError(
            f"{md.path} held no training ratings out for a ranker to learn from; "
            "train it with --holdout 0.1 (the default)"
        )
    train_idx = splits.carve(np.flatnonzero(~data.is_test), rs["val_ratio"], rs["seed"])[0]  # its own slice
    held = splits.holdout_mask(data, train_idx, rs["holdout"], rs["seed"], rs.get("holdout_by") or "random")
    fit, labels = train_idx[~held[train_idx]], train_idx[held[train_idx]]
    sizes, movies_of = data.sizes(), catalogue(data)
    histories = history.Histories.of(sizes["n_users"], sizes["n_movies"], data.user[fit], data.movie[fit])
    fit_users, n_cols = first_queries(md, data, histories), len(movies_of)
    movies = md.catalogue_vectors if fit_users is not None else None
    trained = np.flatnonzero(~data.is_test)
    rated, fit_history = catalogue_columns(data, movies_of, trained), catalogue_columns(data, movies_of, fit)
    rated_keys = rating_keys(data.user[trained], np.searchsorted(movies_of, data.movie[trained]), n_cols)
    search = nearest.search_for(exact)
    fit_pool = candidate_pool(first, fit_users, fit_history, n_candidates, search)
    # the ranker learns to order the lists it will see: its positives are the held-out ratings among them
    sorted_pool = np.sort(fit_pool, axis=1).ravel()  # a row's candidates are distinct: its keys, ascending
    rows = np.repeat(np.arange(len(fit_pool), dtype=np.int64), fit_pool.shape[1])
    in_pool = (rows * n_cols + sorted_pool)[sorted_pool >= 0]
    keys = data.user[labels].astype(np.int64) * n_cols + np.searchsorted(movies_of, data.movie[labels])
    labels = labels[contains(in_pool, keys)]
    fit_weights = neighbours.fit(fit_history, n_neighbours).tocsc()
    fit_inputs = pair_inputs(data, fit, first, fit_users, fit_history, movies, fit_weights, names)
    fit_candidates = Candidates(fit_inputs, rated_keys, fit_pool)
    item_item = neighbours.fit(rated, n_neighbours)  # what the saved model scores with: every training rating
    users = first.queries(np.arange(sizes["n_users"]))
    full_pool = candidate_pool(first, users, rated, n_candidates, search)
    full_inputs = pair_inputs(data, trained, first, users, rated, movies, item_item.tocsc(), names)
    candidates = Candidates(full_inputs, rated_keys, full_pool)
    recorded = {"candidates_params_sha256": fingerprint(md), "candidates_settings": rs}  # refit: `is_refit`
    stage = first_stage(md) if movies is not None else None  # a tower model's item-item part: the head's start
    return Stack(fit_candidates, candidates, item_item, fit, (*splits.carve(labels, val_ratio, seed),
                 np.flatnonzero(data.is_test)), md.params() if movies is not None else {},
                 None if stage is None else stage.beta, recorded)  # fmt: skip


@register("ranking")
class RankingTask(Task):
    """The ranking network: its head scores the retrieval model's candidates from both towers' outputs and the
    pair features (`Candidates.features`); its loss is a weighted logistic loss of each positive against
    `negatives_per_positive` drawn negatives (a share `hard_negatives` from the user's candidates)."""

    legend = (
        "Test Loss: the weighted logistic loss of liked test movies against sampled negatives; NDCG@10: the "
        "reordered top-10 lists (higher is better; the loss can rise while the lists improve)"
    )
    ranks = True
    ranking_head = True
    reads_histories = True

    def __init__(self, data, stacked: Stack, negatives_per_positive: int = D.negatives_per_positive,
                 hard_negatives: float = D.hard_negatives, positive_weight: str = D.positive_weight,
                 train_towers: bool = D.train_towers, **settings):  # fmt: skip
        self.pair_width = stacked.candidates.inputs.width  # the head's (`network_options`)
        super().__init__(data, **settings)
        self.stack = stacked
        self.fit_candidates, self.candidates = stacked.fit_candidates, stacked.candidates
        self.item_item = stacked.item_item  # what the saved model scores with (`saved_arrays`)
        self.negatives_per_positive, self.hard_negatives = negatives_per_positive, hard_negatives
        self.positive_weight = positive_weight
        if stacked.fit_idx is not None:
            self.use_history(stacked.fit_idx)
        current = self.params()  # the towers start as the retrieval model's, where their shapes agree
        towers = {k: v for k, v in stacked.start.items() if k in current and v.shape == current[k].shape}
        from recsys.model import head_start  # with the network: Paddle

        if stacked.beta is not None:  # the untrained head orders candidates by the first stage's score
            towers["head.linear"] = head_start(stacked.beta, self.pair_width)
        self.set_params(current | towers)
        if not train_towers:  # only the head learns: the towers stay the retrieval model's
            self.freeze_towers()

    @classmethod
    def of(cls, config, data, world: int = 1) -> RankingTask:
        """The ranking network of a run's settings, on the candidates of `config.candidates_from`."""
        with recsys_threads.phase(phase_count(config)):  # candidate pools and item-item weights: large products
            stacked = stack(data, config.candidates_from, config.candidates, config.item_neighbours, config.exact,
                            config.val_ratio, config.seed, FEATURE_SETS[config.pair_features])  # fmt: skip
        return cls(data, stacked, config.negatives_per_positive, config.hard_negatives, config.positive_weight,
                   config.train_towers, world=world, **cls.settings(config))  # fmt: skip

    def splits(self, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The held-out ratings among the fit candidates (less the validation slice), and the test ratings."""
        return self.stack.idx

    def recorded(self) -> dict:
        """The retrieval model it reorders: its parameters' hash, and its settings."""
        return self.stack.recorded

    def pairs_per_epoch(self, config, n_train: int) -> tuple[int, int]:
        """Each positive and its negatives; each user's candidates."""
        return n_train * (1 + self.negatives_per_positive), config.candidates

    def network_options(self) -> dict:
        """The ranking head's width: the pair features it reads."""
        return {"n_features": self.pair_width}

    def freeze_towers(self) -> None:
        """From now on only the head learns: the towers (and their vectors) stay as they are."""
        for name, p in self.net.named_parameters():
            p.stop_gradient = not name.startswith("head.")
        self.towers_learn = False
        self.vectors(unit=False)  # what every evaluation's pairs read, computed once, before the first epoch

    def step_feeds(self, idx: np.ndarray) -> None:
        return None  # the pairs are drawn in the step

    def fused_loss(self, idx: np.ndarray, f: None):
        pairs = self.ranking_pairs(idx, self.fit_candidates, self.rng, training=True)
        return self.fused.ranking(*pairs, towers=self.towers_learn)

    def loss(self, idx: np.ndarray, f: None):
        return self.ranking_loss(idx, self.fit_candidates, self.rng, training=True)

    def ranking_loss(self, idx: np.ndarray, cand: Candidates, rng, training: bool = False):
        """The weighted logistic loss of the positives `idx` against `negatives_per_positive` drawn negatives
        each, scored with the candidates' retrieval scores (`cand`: training or evaluation histories)."""
        import paddle

        from recsys.model import weighted_logistic_loss

        f, features, label, weight = self.ranking_pairs(idx, cand, rng, training)
        logit = self.model(*self.tensors(f), paddle.to_tensor(features))
        return weighted_logistic_loss(logit, paddle.to_tensor(label[:, None]), paddle.to_tensor(weight[:, None]))

    def ranking_pairs(self, idx: np.ndarray, cand: Candidates, rng, training: bool = False):
        """The pairs `ranking_loss` scores: each positive of `idx`, then `negatives_per_positive` negatives drawn
        for each; returns their feeds, pair features [N, F], 0/1 labels and weights [N]."""
        users, cols, features, label, weight = self.ranking_draws(idx, cand, rng)
        f = self.pair_features(users, self.catalogue[cols], training, full=cand is self.candidates)
        return f, features, label, weight

    def ranking_draws(self, idx: np.ndarray, cand: Candidates, rng):
        """`ranking_pairs`' users, catalogue columns, pair features, labels and weights (no feeds)."""
        user, per = self.data.user[idx], self.negatives_per_positive
        neg = cand.negatives(user, per, self.hard_negatives, rng)
        cols = np.concatenate([self.column[self.data.movie[idx]], np.maximum(neg, 0)])
        users = np.concatenate([user, np.repeat(user, per)])
        pos_w = self.data.stars[idx].astype(np.float32) if self.positive_weight == "stars" else np.ones(len(idx))
        weight = np.concatenate([pos_w, (neg >= 0).astype(np.float32)]).astype(np.float32)
        label = np.concatenate([np.ones(len(idx)), np.zeros(len(neg))]).astype(np.float32)
        return users, cols, cand.features(users, cols), label, weight

    def _pairs_loss(self, draw: tuple, full: bool) -> float:
        """The ranking loss of drawn pairs (see `ranking_draws`): with frozen towers, the head over the tower
        vectors of every user and movie (a pair's history is the user's whole one: neither a held-out or test
        positive nor a negative is in it); else through the fused towers, pair by pair."""
        from recsys.fused import layers  # with the network: Paddle

        users, cols, features, label, weight = draw
        if self.towers_learn:
            f = self.pair_features(users, self.catalogue[cols], full=full)
            return float(self.fused.ranking_loss(f, features, label, weight)[0])
        user_out, movie_out = self.vectors(unit=False, full=full)
        head = layers.plan(self.net.head)
        return float(layers.ranking_xent(head, user_out[users], movie_out, cols, features, label, weight)[0])

    def evaluate(self, idx: np.ndarray, full: bool = True) -> dict[str, float]:
        """The weighted logistic loss with negatives drawn by a fixed seed (the same every time)."""
        import paddle

        rng, cand = np.random.RandomState(12345), self.candidates if full else self.fit_candidates
        parts = [idx[s : s + 4096] for s in range(0, len(idx), 4096)]
        if self.fused is None and self.towers_learn:
            with paddle.no_grad():
                losses = [float(self.ranking_loss(part, cand, rng)) for part in parts]
        else:  # the same loss in NumPy (far faster on the histories), on draws kept
            size = len(idx) * (1 + self.negatives_per_positive) * 36  # bytes of the users, columns, features...
            key = ("pairs", id(cand), hash(idx.tobytes()))
            draws = self._unchanging(key, lambda: [self.ranking_draws(p, cand, rng) for p in parts], size)
            losses = [self._pairs_loss(draw, full=cand is self.candidates) for draw in draws]
        total = sum(loss * len(part) for loss, part in zip(losses, parts))
        return {"cost": total / max(len(idx), 1)}

    def top_n(self, data: topn.Interactions, k: int = 10, full: bool = True) -> dict[str, float]:
        """Top-k metrics of the retrieval model's candidates, reordered by the network (the two stages)."""
        users, movies = self.vectors(unit=False, full=full)
        cand = self.candidates if full else self.fit_candidates
        params = {f"head.{k}": v.numpy() for k, v in self.net.head.state_dict().items()}  # all `head_scores` reads

        def rank(u, _seen, k):
            pool = cand.pool[u]

            def features():
                return cand.features(np.repeat(u, pool.shape[1]), np.maximum(pool, 0).ravel()).reshape(*pool.shape, -1)

            f = self._unchanging(("pool", id(cand), hash(u.tobytes())), features, pool.size * 12)
            return topn.rerank_pool(pool, topn.head_scores(params, users[u][:, None], movies[pool], f), k)

        return topn.evaluate(rank, data, k)

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """The pair features' item-item weights and the movies' log shares of the ratings, mean stars and
        shares of the latest ratings, all from every training rating (catalogue order)."""
        w, inputs = self.item_item, self.candidates.inputs
        out = {"item_item_indptr": w.indptr, "item_item_indices": w.indices, "item_item_data": w.data,
               "log_share": inputs.log_share}  # fmt: skip
        if "mean_stars" in inputs.names:  # `--pair-features all` reads them
            out |= {"movie_stars": inputs.stars, "recent_share": inputs.recent}
        if "latest_item_item" in inputs.names:  # each user's latest training movies, oldest first
            out["latest_movies"] = inputs.latest
        return out
