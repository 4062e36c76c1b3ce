"""What every training objective shares: the network, its optimizer, the data's feeds, the step and the state.

An objective is a subclass (`recsys.training.rating`, `.retrieval`, `.ranking`) that owns its loss, its fused
step, its evaluation and what its model dir keeps besides the network; `recsys.training.loop` runs any of them.
"""

from __future__ import annotations

import numpy as np

from recsys import threads as recsys_threads
from recsys import topn
from recsys.data import history
from recsys.fused.optim import make_optimizer
from recsys.movielens import MovieLens
from recsys.topn import neighbours
from recsys.training import splits
from recsys.training.config import DEFAULTS, TrainConfig

FIXED_BYTES = 1 << 27  # an evaluation keeps at most this much of its unchanging inputs
D = TrainConfig()  # a run's defaults: the constructors' too


def use_cpu_cores(threads: int | None = None) -> int:
    """Fix the number of threads of the math under training, and return it: `threads`, else one (batch 256's
    products are too small to share; see `recsys.threads`). A BLAS matmul's rounding depends on its thread count,
    so the count never comes from the environment or the cores: a checkpoint records it and `--resume` computes
    with the same count, bit for bit."""
    return recsys_threads.use(1 if threads is None else threads)


def phase_count(config: TrainConfig) -> int:
    """The thread count of a run's phases with large products (evaluation's full-catalogue scoring, item-item
    weights, candidate pools, saving): the one a resumed run recorded, else `--threads`, else what pays on this
    machine now (`recsys.threads.wide`; one where several ranks share it). The checkpoint records it too:
    `--resume` computes as the run did."""
    import paddle.distributed as dist

    return config.phase_threads or config.threads or wide_count(dist.get_world_size())


def wide_count(world: int) -> int:
    """The large products' default thread count for a run of `world` ranks: `recsys.threads.wide` alone, one
    for each of several ranks (they share the machine's cores, and each must evaluate alike)."""
    return recsys_threads.wide() if world == 1 else 1


def catalogue(data: MovieLens) -> np.ndarray:
    """The movie ids of the catalogue, ascending: a catalogue column's movie."""
    return np.array(sorted(data.meta.movies), np.int64)


def catalogue_columns(data: MovieLens, catalogue: np.ndarray, idx: np.ndarray):
    """[U, M] sparse 0/1 over catalogue columns: the movies each user rated in the ratings `idx`."""
    cols = np.searchsorted(catalogue, data.movie[idx])
    return neighbours.history_matrix(data.sizes()["n_users"], len(catalogue), data.user[idx], cols)


class Task:
    """The network, its optimizer and the data; one `step` per batch of rating indices.

    The steps' math runs on `threads` threads (default one: `use_cpu_cores`), the phases with large products
    (`phase`) on `phase_threads` (default: `threads` where given, else `recsys.threads.wide`). With `world > 1` (inside
    `paddle.distributed.launch`) the network is wrapped in `paddle.DataParallel`, so gradients are averaged over
    the ranks before every update. A subclass gives `loss` (the plain layers under autograd), `fused_loss` (the
    same step through `recsys.fused.step`), `evaluate` and, for a top-N objective (`ranks`), `top_n`."""

    name = ""  # the objective's name (`recsys.training.registry.register`)
    closed_form = False  # fitted in one pass instead (`recsys.training.closed_form`)
    legend = ""  # what the evaluation lines' figures are, said once before the first of them
    ranks = False  # top-N lists are scored: the positives of each split are the ratings of --positive stars up
    ranking_head = False  # the network is `recsys.model.RankingNet` (else the chapter's `RecommenderNet`)
    reads_histories = False  # keeps the users' histories without a history network (for its pair features)

    def __init__(
        self,
        data: MovieLens,
        lr: float | None = None,
        sparse: bool = True,
        seed: int = D.seed,
        optimizer: str | None = None,
        weight_decay: float = D.weight_decay,
        cold_start_rate: float = D.cold_start_rate,
        world: int = 1,
        with_history: bool | None = None,
        fused: bool = D.fused,
        threads: int | None = D.threads,
        history_cap: int = D.history_cap,
        phase_threads: int | None = None,
    ):
        """`optimizer`, `lr` and `with_history` left out (None) are the objective's defaults (`DEFAULTS`), as
        every other setting is the flags' (`TrainConfig`)."""
        import paddle

        from recsys.fused.step import FusedStep
        from recsys.model import RankingNet, RecommenderNet

        recipe = DEFAULTS[self.name]
        optimizer = optimizer or recipe["optimizer"]
        lr = recipe["lr"][optimizer] if lr is None else lr
        with_history = recipe["history"] if with_history is None else with_history
        self.threads = use_cpu_cores(threads)
        self.phase_threads = phase_threads or threads or wide_count(world)
        paddle.seed(seed)
        self.data = data
        self.label = data.label
        network = RankingNet if self.ranking_head else RecommenderNet
        self.net = network(**data.sizes(), sparse=sparse, history=with_history, **self.network_options())
        self.model = paddle.DataParallel(self.net) if world > 1 else self.net
        self.opt = make_optimizer(optimizer, self.net.parameters(), lr, weight_decay, sparse)
        covered = fused and world == 1 and FusedStep.covers(self.net)
        self.fused = FusedStep(self.net, self.opt) if covered else None  # None: the plain layers' step
        self.rng = np.random.RandomState(seed)
        self.cold_start_rate = cold_start_rate
        self.catalogue = catalogue(data)
        self.column = np.full(data.sizes()["n_movies"], -1, np.int64)
        self.column[self.catalogue] = np.arange(len(self.catalogue))
        self._vectors = None  # tower vectors of the current parameters, until the next change
        self.towers_learn = True  # False: only a ranking network's head learns
        self._fixed: dict = {}  # evaluation inputs that no parameter changes (`_unchanging`)
        self.with_history = with_history
        self.feed_names = self.net.feed_names()
        self.nu, self.nm = self.net.user_tower.n_inputs, self.net.movie_tower.n_inputs
        # the users' histories, kept only where something reads them: those of evaluation and of the saved model
        # (every training rating, never a test rating), and what training reads (`use_history`)
        self.full_history = self.fit_history = None
        if with_history or self.reads_histories:
            self.full_history = self.fit_history = self._rows(np.flatnonzero(~data.is_test))
        self.history_cap = history_cap  # > 0: a training example reads at most this many movies of a longer history

    @classmethod
    def settings(cls, config: TrainConfig) -> dict:
        """The constructor's keywords taken from a run's settings."""
        return {
            "lr": config.lr, "sparse": config.sparse, "seed": config.seed, "optimizer": config.optimizer,
            "weight_decay": config.weight_decay, "cold_start_rate": config.cold_start_rate,
            "with_history": config.history, "fused": config.fused, "threads": config.threads,
            "history_cap": config.history_cap or 0, "phase_threads": phase_count(config),
        }  # fmt: skip

    @classmethod
    def of(cls, config: TrainConfig, data: MovieLens, world: int = 1) -> Task:
        """The task of a run's settings, on `data`, across `world` ranks."""
        return cls(data, world=world, **cls.settings(config))

    def splits(self, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training (less the share `--holdout` keeps for a ranker), validation and test ratings; training
        histories come from the training ones."""
        train_idx, val_idx, test_idx = splits.split_indices(self.data, config.val_ratio, config.seed)
        held = splits.holdout_mask(self.data, train_idx, config.holdout or 0.0, config.seed, config.holdout_by)
        train_idx = train_idx[~held[train_idx]]
        self.use_history(train_idx)
        return train_idx, val_idx, test_idx

    def positives(self, idx: np.ndarray) -> None:
        """A top-N objective's training positives are the ratings `idx`."""

    def recorded(self) -> dict:
        """What the model dir's settings record besides the run's flags."""
        return {}

    def network_options(self) -> dict:
        """The network's options beside the data's sizes (none; a subclass's own)."""
        return {}

    def pairs_per_epoch(self, config: TrainConfig, n_train: int) -> tuple[int, int]:
        """The (user, movie) pairs an epoch's logits hold, and the pairs a user's top-N list scores."""
        per_user = len(self.catalogue)
        return n_train * per_user, per_user

    def _rows(self, idx: np.ndarray) -> history.Histories:
        sizes = self.data.sizes()
        return history.Histories.of(sizes["n_users"], sizes["n_movies"], self.data.user[idx], self.data.movie[idx])

    def use_history(self, idx: np.ndarray) -> None:
        """Training histories come only from the ratings `idx` (not the held-out or validation ones)."""
        self.fit_idx = idx
        if self.full_history is not None:
            self.fit_history = self._rows(idx)

    def columns(self, idx: np.ndarray):
        """[U, M] sparse 0/1 over catalogue columns: the movies each user rated in the ratings `idx`."""
        return catalogue_columns(self.data, self.catalogue, idx)

    def features(self, idx: np.ndarray, training: bool = False, full: bool = False) -> dict[str, np.ndarray]:
        """The network's feeds (numpy) for the ratings `idx`: see `pair_features`."""
        return self.pair_features(self.data.user[idx], self.data.movie[idx], training, full)

    def pair_features(self, user: np.ndarray, movie: np.ndarray, training: bool = False, full: bool = False) -> dict:
        """The network's feeds (numpy) for aligned arrays of user and movie ids, and with history one more,
        `history` (sparse, see `recsys.data.history.Histories.sparse`): the training histories without the example's
        own movie (with `full`, every training rating, as evaluation and the saved model read them; in training,
        at most `history_cap` movies of each). In training, the share `cold_start_rate` of user ids is replaced
        by the unknown user 0."""
        f = self.data.tables.features(user, movie)
        if training and self.cold_start_rate:
            f["user_id"] = np.where(self.rng.random_sample(len(user)) < self.cold_start_rate, 0, f["user_id"])
        if self.with_history:
            cap = self.history_cap if training else 0
            f["history"] = (self.full_history if full else self.fit_history).sparse(user, movie, cap, self.rng)
        return f

    def tensors(self, f: dict) -> list:
        """The feeds `f` as the network's input tensors, in its argument order."""
        import paddle

        from recsys.model import History

        x = [paddle.to_tensor(f[n]) for n in self.feed_names]
        return x + ([History.tensors(f["history"])] if "history" in f else [])

    def feeds(self, idx: np.ndarray, training: bool = False, full: bool = True) -> list:
        """The network's input tensors for the ratings `idx` (see `pair_features`; training reads the training
        histories)."""
        return self.tensors(self.features(idx, training, full and not training))

    def step_feeds(self, idx: np.ndarray) -> dict | None:
        """The feeds a training step on the ratings `idx` reads."""
        return self.features(idx, training=True)

    def fused_loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        """The step on the ratings `idx` (feeds `f`) through `recsys.fused.step`: returns the loss, or None where
        the fused step does not apply (feeds it does not know)."""
        expected = set(self.feed_names) | ({"history"} if self.net.user_tower.history is not None else set())
        if set(f) != expected:
            return None
        return self.fused_step(idx, self.fused.arrays(f), self.fused.history(f))

    def fused_step(self, idx: np.ndarray, x: list, history):
        """The objective's fused step on the ratings `idx`, of the fused step's arrays `x` and `history`."""
        raise NotImplementedError

    def loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        """The loss of the ratings `idx` (feeds `f`) through the plain layers, recorded by autograd."""
        raise NotImplementedError

    def step(self, idx: np.ndarray):
        """One optimizer step on the ratings `idx`; returns the batch's loss (a 0-d tensor, or a NumPy float from
        the fused step)."""
        f = self.step_feeds(idx)
        loss = self.fused_loss(idx, f) if self.fused is not None else None  # it updates too
        if loss is None:
            loss = self.loss(idx, f)
            loss.backward()
            self.opt.step()
            self.opt.clear_grad()
        if self.towers_learn:  # else the tower vectors stay
            self._vectors = None
        return loss

    def evaluate(self, idx: np.ndarray, full: bool = True) -> dict[str, float]:
        """The objective's cost (and other figures) on the ratings `idx`, read with every training rating's
        histories (`full`) or the training ones."""
        raise NotImplementedError

    def top_n(self, data: topn.Interactions, k: int = 10, full: bool = True) -> dict[str, float]:
        """Full-ranking top-k metrics (see `recsys.topn`) of a top-N objective."""
        raise NotImplementedError

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """What a model dir keeps besides the network."""
        return {}

    def _unchanging(self, key: tuple, compute, n_bytes: int):
        """`compute()`, kept for later evaluations while all that is kept stays within `FIXED_BYTES`: for inputs
        that depend on the data and seeds, never on parameters."""
        if key not in self._fixed:
            out = compute()
            if n_bytes + sum(b for _out, b in self._fixed.values()) > FIXED_BYTES:
                return out
            self._fixed[key] = out, n_bytes
        return self._fixed[key][0]

    def vectors(self, unit: bool = True, full: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Tower vectors (unit length, or the raw outputs) of every user id, with the histories of every
        training rating (`full`) or of the training ones, and of the catalogue's movies (catalogue order),
        computed once per parameter state (an evaluation's cost and top-N metrics share them)."""
        from recsys.modeldir import tower_outputs

        key = (unit, full)
        if self._vectors is None:
            self._vectors = {}
        if key not in self._vectors:
            tables = self.data.tables
            feeds = tables.user_features(np.arange(len(tables.user)))
            histories = (self.full_history if full else self.fit_history) if self.with_history else None
            users = tower_outputs(self.net.user_tower, feeds, unit, histories=histories)
            self._vectors[key] = users, tower_outputs(self.net.movie_tower, tables.movie_features(self.catalogue), unit)
        return self._vectors[key]

    def use_threads(self, threads: int, phase_threads: int | None = None) -> None:
        """Compute on `threads` threads from now on, and the large products on `phase_threads` (default:
        `threads`): a resumed run's counts, as its checkpoint recorded them."""
        self.threads = use_cpu_cores(threads)
        self.phase_threads = phase_threads or threads

    def phase(self):
        """A block whose products are large runs on `phase_threads` (`recsys.threads.phase`)."""
        return recsys_threads.phase(self.phase_threads)

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in self.net.state_dict().items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        import paddle

        self.net.set_state_dict({k: paddle.to_tensor(v) for k, v in params.items()})
        self._vectors = None

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state keyed by structured parameter names (stable across processes)."""
        by_name = {p.name: k for k, p in self.net.state_dict().items()}
        out = {}
        for key, value in self.opt.state_dict().items():
            if hasattr(value, "numpy"):
                owner = max((n for n in by_name if key.startswith(n + "_")), key=len, default=None)
                out[key if owner is None else by_name[owner] + "::" + key[len(owner) + 1 :]] = value.numpy()
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        import paddle

        params = self.net.state_dict()
        restored = {}
        for key, value in state.items():
            owner, _, rest = key.partition("::")
            restored[f"{params[owner].name}_{rest}" if rest else key] = paddle.to_tensor(value)
        if restored:
            self.opt.set_state_dict(restored)
