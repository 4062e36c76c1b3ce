"""The chapter's fusion network: user tower, movie tower with text-CNN, and the cos-sim scoring head.

Inputs are the chapter's feed names. The chapter's LoD sequences (categories, title words) become padded
[N, L] id matrices whose padding id is the last embedding row (`padding_idx`, always looked up as zeros).
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

EMBED = 32  # user id, movie id, category and title-word embeddings
SMALL = 16  # gender, age and job embeddings
HIDDEN = 200  # width of each tower's output


def _xavier() -> paddle.ParamAttr:
    """fluid's default parameter initialiser (Xavier uniform), which the chapter relied on."""
    return paddle.ParamAttr(initializer=nn.initializer.XavierUniform())


def _embedding(n: int, dim: int, sparse: bool, padded: bool = False) -> nn.Embedding:
    return nn.Embedding(n + padded, dim, padding_idx=n if padded else None, sparse=sparse, weight_attr=_xavier())


class FC(nn.Linear):
    """fluid's `fc` without activation: `nn.Linear`'s parameters, computed as one fused `addmm`."""

    def forward(self, x):
        return paddle.addmm(self.bias, x, self.weight)


def _linear(n_in: int, n_out: int) -> FC:
    return FC(n_in, n_out, weight_attr=_xavier())


class History(nn.Layer):
    """The user's watch history, as in YouTube's candidate-generation network: the mean of the embeddings
    (32) of the movies they rated, through an fc. Input: [N, n_movies] weights, each row 1/count at the
    user's rated movies (all zeros for an empty history), so one matmul is the mean; or the same weights in
    sparse form, (movie ids [P], batch row [P], weight [P, 1]) (`recsys.data.history.Histories.sparse`), whose
    embedding gradient is sparse too when the network's is."""

    def __init__(self, n_movies: int, sparse: bool = False):
        super().__init__()
        self.emb = self.create_parameter([n_movies, EMBED], attr=_xavier())
        self.fc = _linear(EMBED, EMBED)
        self.sparse = sparse

    @staticmethod
    def tensors(sparse: tuple) -> tuple:
        """The sparse form's tensors from `Histories.sparse`'s (movie ids, batch rows, weights) arrays."""
        ids, rows, w = sparse
        return paddle.to_tensor(ids), paddle.to_tensor(rows), paddle.to_tensor(w[:, None])

    def forward(self, weights, n: int | None = None):
        """`n`: the batch's rows, for the sparse form."""
        if isinstance(weights, (tuple, list)):
            ids, rows, w = weights
            picked = F.embedding(ids, self.emb, sparse=self.sparse) * w
            return self.fc(paddle.index_add(paddle.zeros([n, EMBED], picked.dtype), rows, 0, picked))
        return self.fc(paddle.matmul(weights, self.emb))


CHAPTER_FEATURES = ("gender", "age", "job")  # the chapter's user features, in its feed order


class UserTower(nn.Layer):
    """Embeddings of user id (32) and of each user feature (16; the chapter's gender, age and job), each through
    its own fc; concat -> fc 200, tanh. `features` maps other data's feature names to their number of values
    (none: the id alone). With `n_history` (the number of movie ids), the watch history (`History`) is one
    more part. Inputs: user id, then each feature's ids in `features` order, then the history weights."""

    def __init__(
        self, n_users: int, n_ages: int = 0, n_jobs: int = 0, sparse: bool = True, n_history: int = 0, features=None
    ):
        super().__init__()
        features = dict(zip(CHAPTER_FEATURES, (2, n_ages, n_jobs))) if features is None else dict(features)
        self.features = list(features)
        self.user_emb, self.user_fc = _embedding(n_users, EMBED, sparse), _linear(EMBED, EMBED)
        for name, n in features.items():
            setattr(self, f"{name}_emb", _embedding(n, SMALL, sparse))
            setattr(self, f"{name}_fc", _linear(SMALL, SMALL))
        self.history = History(n_history, sparse) if n_history else None
        self.fc = _linear(EMBED + len(features) * SMALL + (EMBED if n_history else 0), HIDDEN)

    @property
    def n_inputs(self) -> int:
        """Id inputs: the user id and one per feature (the history weights come after them)."""
        return 1 + len(self.features)

    def parts(self) -> list[tuple[nn.Embedding, FC]]:
        """(table, fc) of the user id and of each feature, in input order."""
        return [(self.user_emb, self.user_fc)] + [
            (getattr(self, f"{f}_emb"), getattr(self, f"{f}_fc")) for f in self.features
        ]

    def forward(self, user_id, *ids_and_history):
        ids = (user_id, *ids_and_history[: len(self.features)])
        parts = [fc(emb(i)) for (emb, fc), i in zip(self.parts(), ids)]
        if self.history is not None:
            parts.append(self.history(ids_and_history[len(self.features)], user_id.shape[0]))
        return paddle.tanh(self.fc(paddle.concat(parts, axis=-1)))


class TextCNN(nn.Layer):
    """Title word embeddings through fluid's `sequence_conv_pool(num_filters=32, filter_size=3, act="tanh",
    pool_type="sum")`, from padded [N, L] word ids.

    Each title word t sees the window [t-1, t, t+1], zeros outside the title. Like the chapter's LoD tensors,
    only real words are computed: their windows are gathered (ids only, no gradient), embedded in one lookup,
    multiplied by one [3*dim, num_filters] weight (sequence_conv's layout), biased, tanh'd, and summed per title.
    """

    def __init__(self, n_words: int, sparse: bool = True, dim: int = EMBED, num_filters: int = EMBED):
        super().__init__()
        self.pad = n_words
        self.embedding = _embedding(n_words, dim, sparse, padded=True)  # the padding row looks up as zeros
        self.weight = self.create_parameter([3 * dim, num_filters], attr=_xavier())
        self.bias = self.create_parameter([num_filters], is_bias=True)

    def forward(self, ids):
        """ids: [N, L] word ids padded with the padding id -> [N, num_filters]."""
        padded = F.pad(ids, [1, 1], value=self.pad)  # a padding word before and after every title
        windows = paddle.stack([padded[:, :-2], ids, padded[:, 2:]], axis=-1)  # [N, L, 3]
        where = paddle.nonzero(ids != self.pad)  # [P, 2]: (sample, position) of every title word
        emb = self.embedding(paddle.gather_nd(windows, where)).flatten(1)  # [P, 3*dim]
        hidden = paddle.tanh(paddle.addmm(self.bias, emb, self.weight))  # [P, num_filters]
        pooled = paddle.zeros([ids.shape[0], hidden.shape[1]], hidden.dtype)
        return paddle.index_add(pooled, where[:, 0], 0, hidden)  # sum over each title's words


class MovieTower(nn.Layer):
    """Movie id embedding -> fc 32; categories embedded and sum-pooled; title through the text-CNN;
    concat (96) -> fc 200, tanh. Data without genres (`n_categories` 0) or titles (`n_title_words` 0) has
    no such part, and no such input."""

    def __init__(self, n_movies: int, n_categories: int, n_title_words: int, sparse: bool = True):
        super().__init__()
        self.movie_emb, self.movie_fc = _embedding(n_movies, EMBED, sparse), _linear(EMBED, EMBED)
        self.category_emb = _embedding(n_categories, EMBED, sparse, padded=True) if n_categories else None
        self.title_cnn = TextCNN(n_title_words, sparse) if n_title_words else None
        self.fc = _linear(EMBED * self.n_inputs, HIDDEN)

    @property
    def n_inputs(self) -> int:
        """The movie id, and the category ids and title word ids where the data has them."""
        return 1 + (self.category_emb is not None) + (self.title_cnn is not None)

    def forward(self, movie_id, *categories_and_title):
        rest = list(categories_and_title)
        parts = [self.movie_fc(self.movie_emb(movie_id))]
        if self.category_emb is not None:
            parts.append(self.category_emb(rest.pop(0)).sum(axis=1))
        if self.title_cnn is not None:
            parts.append(self.title_cnn(rest.pop(0)))
        return paddle.tanh(self.fc(paddle.concat(parts, axis=-1)))


def cos_sim_score(user, movie):
    """The chapter's head: `5 * cos_sim(user, movie)`, shape [N, 1], in label space 2*stars-5."""
    dot = (user * movie).sum(axis=-1, keepdim=True)
    norms = (user * user).sum(axis=-1, keepdim=True) * (movie * movie).sum(axis=-1, keepdim=True)
    return 5.0 * dot * paddle.rsqrt(norms)


def _unit(x):
    """Rows scaled to unit length (`F.normalize` computes the same far slower on CPU, backward included)."""
    return x * paddle.rsqrt((x * x).sum(axis=-1, keepdim=True))


def rating_loss(score, label):
    """The chapter's objective: mean square error between the head's score and `rating*2 - 5`."""
    return paddle.mean(paddle.square(score - label))


def softmax_loss(user, movie, target, temperature: float, log_q=None, mask=None):
    """The candidate-generation objective: softmax cross-entropy of each user's positive movie among the
    candidate movies, on logits `cos(user, movie) / temperature`.

    user [B, D] and movie [C, D] are tower outputs; target [B] is the column of each row's positive. With the
    whole catalogue as candidates this is the full softmax. With sampled candidates, `log_q` [C] is the log of
    each candidate's expected count in the sample; it is subtracted from every logit but the row's positive
    (the log-Q correction), so the sampled sum of exp(logit) estimates the full one. `mask` [B, C] removes
    candidates (other copies of a row's positive)."""
    logits = paddle.matmul(_unit(user), _unit(movie), transpose_y=True) / temperature
    if log_q is not None:
        positive = F.one_hot(target, logits.shape[1])
        logits = logits - log_q.unsqueeze(0) * (1.0 - positive)
    if mask is not None:
        logits = paddle.where(mask, paddle.full_like(logits, -1e4), logits)
    return F.cross_entropy(logits, target.unsqueeze(1))


def in_batch_softmax_loss(user, movie, movie_ids: np.ndarray, log_freq: np.ndarray, temperature: float):
    """`softmax_loss` with the batch's own movies as the candidates: row i's positive is movie i, the other
    rows' movies are its negatives (other copies of its own movie are masked), each corrected by the log of
    its expected count among the B-1 others, log((B-1) * q), where q is its frequency among the positives."""
    others = movie_ids[:, None] == movie_ids[None, :]
    np.fill_diagonal(others, False)
    log_q = log_freq[movie_ids] + np.float32(np.log(max(len(movie_ids) - 1, 1)))
    target = paddle.arange(len(movie_ids), dtype="int64")
    return softmax_loss(user, movie, target, temperature, paddle.to_tensor(log_q), paddle.to_tensor(others))


def weighted_logistic_loss(logit, label, weight):
    """The ranking objective (the chapter's weighted logistic regression): binary cross-entropy of each
    logit against its 0/1 label, each example weighted, divided by the sum of the weights."""
    loss = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    return (loss * weight).sum() / weight.sum()


class RecommenderNet(nn.Layer):
    """Both towers and the head; `forward` takes the feeds (the chapter's seven: the user tower's, then the
    movie tower's; with `history`, the user's history weights after them) and returns the scaled score (with
    `towers=True`, the two towers' outputs instead, for the softmax objective). `user_features` names other
    data's user features and their sizes (instead of the chapter's `n_ages`, `n_jobs` and two genders)."""

    def __init__(
        self,
        n_users,
        n_ages=0,
        n_jobs=0,
        n_movies=0,
        n_categories=0,
        n_title_words=0,
        sparse: bool = True,
        history=False,
        user_features=None,
    ):
        super().__init__()
        n_history = n_movies if history else 0
        self.user_tower = UserTower(n_users, n_ages, n_jobs, sparse, n_history, user_features)
        self.movie_tower = MovieTower(n_movies, n_categories, n_title_words, sparse)

    def feed_names(self) -> list[str]:
        """The network's inputs in order (the chapter's seven for its data), without the history weights."""
        user = ["user_id"] + [f"{f}_id" for f in self.user_tower.features]
        movie = ["movie_id"] + ["category_id"] * (self.movie_tower.category_emb is not None)
        return user + movie + ["movie_title"] * (self.movie_tower.title_cnn is not None)

    def split(self, feeds: tuple) -> tuple[list, list]:
        """The feeds as (the user tower's inputs, history included; the movie tower's)."""
        nu, nm = self.user_tower.n_inputs, self.movie_tower.n_inputs
        return [*feeds[:nu], *feeds[nu + nm :]], list(feeds[nu : nu + nm])

    def forward(self, *feeds, towers=False):
        users, movies = self.split(feeds)
        user, movie = self.user_tower(*users), self.movie_tower(*movies)
        return (user, movie) if towers else cos_sim_score(user, movie)


RANK_HIDDEN = 64  # the ranking network's hidden layer
RANK_FEATURES = 3  # the pair features the head reads by default (`--pair-features basic`: the first three of
# `recsys.topn.rerank.FEATURES`; `all`: every one)


def head_start(beta: float, width: int = RANK_FEATURES) -> np.ndarray:
    """The ranking head's linear weights [width, 1] at the start: 4 * cosine + 4 * beta * the item-item score
    (the first stage's score, scaled as the retrieval logit), nothing on the other features."""
    start = np.zeros((width, 1), np.float32)
    start[0, 0], start[2, 0] = 4.0, 4.0 * beta
    return start


class RankingHead(nn.Layer):
    """The ranking network's top, the logit of "the user will like this movie" (the chapter's weighted
    logistic regression scores it): a linear function of the pair's features (`recsys.topn.rerank.pair_features`:
    the retrieval model's cosine, the movie's log share of the ratings, the item-item score of the user's
    history, the user's genre affinity, the movie's shrunk mean stars, its share of the latest ratings, the
    user's activity) plus a correction from [user * movie (200), features (7)] -> fc 64, relu -> fc 1. The
    linear part starts as 4 * cosine (the retrieval logit; the trainer adds 4 * beta on the item-item score where
    the retrieval model's first stage has one, `recsys.topn.first_stage`) and the correction at zero, so an
    untrained head orders candidates as the first stage does."""

    def __init__(self, n_features: int = RANK_FEATURES):
        super().__init__()
        start = nn.initializer.Assign(head_start(0.0, n_features))
        self.linear = self.create_parameter([n_features, 1], default_initializer=start)
        self.fc = _linear(HIDDEN + n_features, RANK_HIDDEN)
        self.out = FC(RANK_HIDDEN, 1, weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))

    def forward(self, user, movie, features):
        correction = self.out(F.relu(self.fc(paddle.concat([user * movie, features], axis=-1))))
        return paddle.matmul(features, self.linear) + correction


class RankingNet(RecommenderNet):
    """The chapter's ranking network: the same two towers (with the user's history), and the pair's features
    (the retrieval model's score among them) as one more input, through `RankingHead` to one logit per pair."""

    def __init__(self, *sizes, n_features: int = RANK_FEATURES, **options):
        super().__init__(*sizes, **({"history": True} | options))
        self.head = RankingHead(n_features)

    def forward(self, *feeds):
        """The feeds of `RecommenderNet` (history included), then the pair features [N, RANK_FEATURES]."""
        user, movie = super().forward(*feeds[:-1], towers=True)
        return self.head(user, movie, feeds[-1])
