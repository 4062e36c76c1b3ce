"""The fused training step: the chapter's network and losses, forward and backward written out by hand in a
few large ops, with the same parameters and the same math as `recsys.model`'s layers.

At the chapter's batch size a step is mostly small kernels and their dispatch: autograd records dozens of small
ops forward and runs each one's gradient backward. Here each piece computes its output, keeps what its gradient
needs, and its `*_grad` appends the closed-form gradient of every parameter it used to `grads`, a list of
(parameter, gradient):

- `user_tower` / `movie_tower`: a tower's tanh output, each feature through its own table and fc (the text-CNN
  as in `model.TextCNN`, the user's history as in `model.History`); embedding gradients are the row gradients
  autograd makes (`embedding_grad`, sparse when the table is), the history's movie embeddings' the dense
  `weights^T @ d`;
- `cos_mse`: the chapter's head and loss, `mean((5 cos(user, movie) - label)^2)`;
- `softmax_xent`: `model.softmax_loss` (unit rows, logits / T, the log-Q correction, which `in_batch` gives
  for the batch's distinct movies as candidates).

`FusedStep` builds a batch's tensors from the reader's arrays (one tensor for all ids; the history weights, when
the network has them, are a float tensor passed alongside), runs the movie tower once per distinct movie, and hands
the gradients to the trainer's optimizer, which updates exactly as after `loss.backward()`.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import _C_ops as C

from recsys.model import History, MovieTower, RecommenderNet, TextCNN, UserTower


def _pad(emb) -> int:
    return -1 if emb._padding_idx is None else emb._padding_idx


def _lookup(emb, ids):
    return C.embedding(ids, emb.weight, _pad(emb), emb._sparse)


def _lookup_grad(emb, ids, d_out, grads: list) -> None:
    grads.append((emb.weight, C.embedding_grad(ids, emb.weight, d_out, _pad(emb), emb._sparse)))


def _fc(fc, x):
    return C.addmm(fc.bias, x, fc.weight, 1.0, 1.0)


_ONES: dict = {}


def _ones(shape: list[int], like):
    """A ones vector, kept by size (a few hundred bytes each): sums are products with one, faster than Paddle's
    CPU reductions."""
    key = (*shape, like.dtype, str(like.place))
    if key not in _ONES:
        _ONES[key] = C.full(shape, 1.0, like.dtype, like.place)
    return _ONES[key]


def _fc_grad(weight, bias, x, d_out, grads: list, transposed: bool = False):
    """Gradients of `x @ weight + bias`: the weight's and the bias's go to `grads`; returns the input's.
    With `transposed`, `d_out` comes as its transpose and the input's gradient is returned transposed too."""
    if transposed:
        grads += [
            (weight, C.matmul(x, d_out, True, True)),
            (bias, C.matmul(d_out, _ones([x.shape[0]], x), False, False)),
        ]
        return C.matmul(weight, d_out, False, False)
    d_x, d_w = C.matmul_grad(x, weight, d_out, False, False)
    grads += [(weight, d_w), (bias, C.matmul(_ones([d_out.shape[0]], d_out), d_out, False, False))]
    return d_x


def _output_fc_grad(fc, x, d_z, grads: list) -> None:
    """The weight's and bias's gradients of a tower's output fc (its input's gradient is taken by parts)."""
    grads += [
        (fc.weight, C.matmul(x, d_z, True, False)),
        (fc.bias, C.matmul(_ones([x.shape[0]], x), d_z, False, False)),
    ]


def _scatter_rows(rows, values, n: int):
    """[n, D]: row i sums the rows of `values` whose `rows` entry is i: the gradient of a lookup in an [n, D]
    table (Paddle computes it faster than `index_add`; the table's values are not read)."""
    table = C.full([n, values.shape[-1]], 0.0, values.dtype, values.place)
    return C.embedding_grad(rows, table, values, -1, False)


def _gather_rows(x, rows):
    return C.embedding(rows, x, -1, False)


def user_tower(t: UserTower, user_id, *ids_and_history):
    """`UserTower.forward` on the user id and each feature's ids, then, when the tower has a history part, its
    weights: a float32 tensor [N, n_movies], or the sparse form (`FusedStep.history`: distinct movie ids [U], the
    position of each entry's movie among them [P], batch row [P], weight [P, 1]).
    Returns (output [N, 200], what `user_tower_grad` needs)."""
    ids = (user_id, *ids_and_history[: len(t.features)])
    tables = t.parts()
    embs = [_lookup(e, i) for (e, _), i in zip(tables, ids)]
    parts = [_fc(fc, e) for (_, fc), e in zip(tables, embs)]
    history = mean = None
    if t.history is not None:
        if len(ids_and_history) <= len(t.features):
            raise ValueError("this user tower has a history part: pass its weights")
        history = ids_and_history[len(t.features)]
        if isinstance(history, (tuple, list)):  # the mean of the rated movies' embeddings, row by row
            distinct, where, h_rows, h_w = history
            picked = _gather_rows(C.embedding(distinct, t.history.emb, -1, False), where)
            mean = _scatter_rows(h_rows, C.multiply(picked, C.expand(h_w, picked.shape)), user_id.shape[0])
        else:
            mean = C.matmul(history, t.history.emb, False, False)  # [N, 32]
        parts.append(_fc(t.history.fc, mean))
    x = C.concat(parts, 1)
    out = C.tanh(_fc(t.fc, x))
    return out, (ids, embs, history, mean, x, out)


def user_tower_grad(t: UserTower, saved, d_out, grads: list) -> None:
    """The parts' gradients flow transposed ([width, N]), so that splitting them copies nothing."""
    ids, embs, history, mean, x, out = saved
    tables = t.parts() + ([] if t.history is None else [(None, t.history.fc)])
    d_z = C.tanh_grad(out, d_out)
    _output_fc_grad(t.fc, x, d_z, grads)
    d_parts = C.split(C.matmul(t.fc.weight, d_z, False, True), [fc.weight.shape[1] for _, fc in tables], 0)
    for (emb, fc), i, e, d in zip(tables, ids, embs, d_parts):
        _lookup_grad(emb, i, C.transpose(_fc_grad(fc.weight, fc.bias, e, d, grads, transposed=True), [1, 0]), grads)
    if t.history is not None:
        fc = t.history.fc
        d_mean = _fc_grad(fc.weight, fc.bias, mean, d_parts[-1], grads, transposed=True)  # [32, N]
        if isinstance(history, (tuple, list)):
            distinct, where, h_rows, h_w = history
            d_picked = _gather_rows(C.transpose(d_mean, [1, 0]), h_rows)
            d_picked = C.multiply(d_picked, C.expand(h_w, d_picked.shape))
            d_rows = _scatter_rows(where, d_picked, distinct.shape[0])  # one row per movie: a cheaper update
            grads.append((t.history.emb, C.embedding_grad(distinct, t.history.emb, d_rows, -1, t.history.sparse)))
        else:
            grads.append((t.history.emb, C.matmul(history, d_mean, True, True)))  # weights^T @ d_mean


def movie_tower(t: MovieTower, movie_id, category_id, category_row, windows, window_row):
    """`MovieTower.forward`, with the sample of every category slot (`category_row` [N, C]) and the title given
    as its words' windows: `windows` [P, 3] (previous, own and next word id, padding outside the title) and
    `window_row` [P] (the sample of each word). Returns (output [N, 200], saved)."""
    cnn, n = t.title_cnn, movie_id.shape[0]
    emb = _lookup(t.movie_emb, movie_id)
    words = C.reshape(_lookup(cnn.embedding, windows), [-1, 3 * cnn.embedding.weight.shape[1]])
    hidden = C.tanh(C.addmm(cnn.bias, words, cnn.weight, 1.0, 1.0))
    categories = _scatter_rows(category_row, _lookup(t.category_emb, category_id), n)  # padding looks up zeros
    x = C.concat([_fc(t.movie_fc, emb), categories, _scatter_rows(window_row, hidden, n)], 1)
    out = C.tanh(_fc(t.fc, x))
    return out, (movie_id, category_id, category_row, windows, window_row, emb, words, hidden, x, out)


def movie_tower_grad(t: MovieTower, saved, d_out, grads: list) -> None:
    movie_id, category_id, category_row, windows, window_row, emb, words, hidden, x, out = saved
    cnn = t.title_cnn
    d_z = C.tanh_grad(out, d_out)
    _output_fc_grad(t.fc, x, d_z, grads)
    # each part's gradient is d_z @ its weight rows.T, row-major as the lookups' gradients need (a split of the
    # columns of d_z @ weight.T would copy)
    ends = np.cumsum([0, t.movie_fc.weight.shape[1], t.category_emb.weight.shape[1], cnn.weight.shape[1]]).tolist()
    rows = [C.slice(t.fc.weight, [0], [a], [b], [1], []) for a, b in zip(ends, ends[1:])]
    d_movie, d_cat, d_title = (C.matmul(d_z, w, False, True) for w in rows)
    _lookup_grad(t.movie_emb, movie_id, _fc_grad(t.movie_fc.weight, t.movie_fc.bias, emb, d_movie, grads), grads)
    _lookup_grad(t.category_emb, category_id, _gather_rows(d_cat, category_row), grads)
    d_words = _fc_grad(cnn.weight, cnn.bias, words, C.tanh_grad(hidden, _gather_rows(d_title, window_row)), grads)
    _lookup_grad(cnn.embedding, windows, C.reshape(d_words, windows.shape + [-1]), grads)


def _scale_rows(x, r):
    """x [N, D] times r [N, 1] (through an expanded view: Paddle's broadcast is slower)."""
    return C.multiply(x, C.expand(r, x.shape))


def _row_sum(x):
    return C.matmul(x, _ones([x.shape[1], 1], x), False, False)


def cos_mse(user, movie, label):
    """The chapter's head and loss: returns (loss, saved); the score is `5 * dot * rsqrt(|u|^2 |m|^2)`."""
    dot, uu, mm = (_row_sum(C.multiply(a, b)) for a, b in ((user, movie), (user, user), (movie, movie)))
    r = C.rsqrt(C.multiply(uu, mm))
    diff = C.subtract(C.multiply(C.scale(dot, 5.0, 0.0, True), r), label)
    return C.mean_all(C.square(diff)), (user, movie, dot, uu, mm, r, diff)


def cos_mse_grad(saved):
    """(d user, d movie) of `cos_mse`'s loss: with a = 10 (s - label) r / N and b = a * dot,
    d user = a m - (b / |u|^2) u and d movie = a u - (b / |m|^2) m."""
    user, movie, dot, uu, mm, r, diff = saved
    a = C.multiply(C.scale(diff, 10.0 / diff.shape[0], 0.0, True), r)
    b = C.multiply(a, dot)
    d_user = C.subtract(_scale_rows(movie, a), _scale_rows(user, C.divide(b, uu)))
    d_movie = C.subtract(_scale_rows(user, a), _scale_rows(movie, C.divide(b, mm)))
    return d_user, d_movie


def softmax_xent(user, movie, target, temperature: float, add=None):
    """`model.softmax_loss`: mean cross-entropy of `target` [B, 1] on logits `cos(user, movie) / T + add`
    (`add` [B, C]: the log-Q correction, see `in_batch`). Returns (loss, saved)."""
    ru, rm = C.rsqrt(_row_sum(C.multiply(user, user))), C.rsqrt(_row_sum(C.multiply(movie, movie)))
    un, mn = _scale_rows(user, ru), _scale_rows(movie, rm)
    logits = C.scale(C.matmul(un, mn, False, True), 1.0 / temperature, 0.0, True)
    if add is not None:
        logits = C.add(logits, add)
    softmax, loss = C.cross_entropy_with_softmax(logits, target, False, True, True, -100, 1)
    return C.mean_all(loss), (un, mn, ru, rm, softmax, target, temperature)


def softmax_xent_grad(saved):
    """(d user, d movie) of `softmax_xent`'s loss: d logits = (softmax - one_hot) / B, through the logits'
    matmul and the unit rows, d x = r (d x_unit - x_unit <d x_unit, x_unit>)."""
    un, mn, ru, rm, softmax, target, temperature = saved
    d_loss = C.full([softmax.shape[0], 1], 1.0 / softmax.shape[0], softmax.dtype, softmax.place)
    d_logits = C.cross_entropy_with_softmax_grad(target, softmax, d_loss, False, True, True, -100, 1)
    d_un, d_mn = C.matmul_grad(un, mn, C.scale(d_logits, 1.0 / temperature, 0.0, True), False, True)
    unit = lambda d, x, r: _scale_rows(C.subtract(d, _scale_rows(x, _row_sum(C.multiply(d, x)))), r)  # noqa: E731
    return unit(d_un, un, ru), unit(d_mn, mn, rm)


def title_windows(title: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The text-CNN's input for padded titles [N, L]: each real word's window of word ids [P, 3] (padding
    outside the title) and its sample [P], in the order `TextCNN` visits them."""
    rows, cols = np.nonzero(title != pad)
    padded = np.full((title.shape[0], title.shape[1] + 2), pad, title.dtype)
    padded[:, 1:-1] = title
    return padded[rows[:, None], cols[:, None] + np.arange(3)], rows


def _parameters(net) -> frozenset[str]:
    """Every parameter the pieces compute with, by its state_dict name: the towers' (the user tower's with its
    features, and its history part when it has one)."""
    user = ["user", *net.user_tower.features]
    names = [f"user_tower.{f}_emb.weight" for f in user]
    names += [f"user_tower.{f}.{w}" for f in [*(f"{f}_fc" for f in user), "fc"] for w in ("weight", "bias")]
    names += [f"movie_tower.{f}.weight" for f in ("movie_emb", "category_emb", "title_cnn.embedding")]
    names += [f"movie_tower.{f}.{w}" for f in ("movie_fc", "title_cnn", "fc") for w in ("weight", "bias")]
    if net.user_tower.history is not None:
        names += ["user_tower.history.emb", "user_tower.history.fc.weight", "user_tower.history.fc.bias"]
    return frozenset(names)


class FusedStep:
    """Loss and gradients of one batch through the fused pieces, for a `RecommenderNet` as the chapter builds it
    (any user features, with or without the user's history; a movie tower with categories and titles); `covers`
    says whether a network is one; anything else trains through the plain layers. With history, the steps take
    the history weights (see `history`) as `history`."""

    def __init__(self, net: RecommenderNet, opt):
        self.net, self.opt = net, opt
        self.title_pad = net.movie_tower.title_cnn.pad
        self.user_keys = ["user_id"] + [f"{f}_id" for f in net.user_tower.features]
        self.nu = len(self.user_keys)  # the user tower's id inputs come first in `tensors`

    @staticmethod
    def covers(net) -> bool:
        """Whether `net` is the chapter's network: these classes, and exactly the parameters the pieces use (the
        chapter's, or those and the history part's)."""
        if not (
            type(net) is RecommenderNet
            and type(net.user_tower) is UserTower
            and type(net.movie_tower) is MovieTower
            and type(net.movie_tower.title_cnn) is TextCNN
            and net.movie_tower.category_emb is not None
            and type(net.user_tower.history) in (History, type(None))
        ):
            return False
        return {k for k, _ in net.named_parameters()} == _parameters(net)

    def tensors(self, f: dict[str, np.ndarray]) -> list | None:
        """The ids of the feeds `f` (any of the user and movie parts) as tensors: user_id, gender_id, age_id,
        job_id / movie_id, category_id, its rows, title windows, their rows, then the batch row of each distinct
        movie (the movie tower runs once per distinct movie). One host-to-tensor copy for all. None when a batch
        has no title word (the plain layers handle it). The history weights are not ids: see `history`."""
        arrays = [f[k] for k in self.user_keys if k in f]
        if "movie_id" in f:
            movies, first, inverse = np.unique(f["movie_id"], return_index=True, return_inverse=True)
            windows, rows = title_windows(f["movie_title"][first], self.title_pad)
            if not len(rows):
                return None
            category = f["category_id"][first]
            category_row = np.broadcast_to(np.arange(len(category))[:, None], category.shape)
            arrays += [movies, category, category_row, windows, rows, inverse.ravel()]
        flat = paddle.to_tensor(np.concatenate([np.ravel(a) for a in arrays]).astype(np.int64, copy=False))
        parts = C.split(flat, [a.size for a in arrays], 0)
        return [p if a.ndim == 1 else C.reshape(p, list(a.shape)) for p, a in zip(parts, arrays)]

    @staticmethod
    def history(f: dict):
        """The feeds' history weights as tensors: dense [N, n_movies] float32, or, from the sparse (movie ids,
        batch rows, weights) arrays, (the distinct movies, each entry's place among them, batch rows, weights
        [P, 1]); None without them."""
        if "history" not in f:
            return None
        h = f["history"]
        if isinstance(h, tuple):
            ids, rows, w = h
            distinct, where = np.unique(ids, return_inverse=True)
            return tuple(paddle.to_tensor(a) for a in (distinct, where.ravel(), rows, w.reshape(-1, 1)))
        return paddle.to_tensor(h.astype(np.float32, copy=False))

    def forward(self, users: list, movies: list, history=None):
        """Both towers on the tensors of `tensors` (and the user tower's `history` weights); returns (user,
        movie, saved), the movie tower's rows being the distinct movies (`movies[5]` holds each rating's row)."""
        u, su = user_tower(self.net.user_tower, *users, *([] if history is None else [history]))
        m, sm = movie_tower(self.net.movie_tower, *movies[:5])
        return u, m, (su, sm)

    def backward(self, saved, d_user, d_movie) -> list:
        """Both towers' (parameter, gradient) pairs, from the gradients of their outputs."""
        grads: list = []
        user_tower_grad(self.net.user_tower, saved[0], d_user, grads)
        movie_tower_grad(self.net.movie_tower, saved[1], d_movie, grads)
        return grads

    def update(self, grads: list) -> None:
        """The optimizer's step on `grads`: `recsys.optim.SGD` takes them directly, any other optimizer finds
        them on the parameters, as `loss.backward()` leaves them."""
        if hasattr(self.opt, "apply"):
            return self.opt.apply(grads)
        for p, g in grads:
            p._set_grad_ivar(g)
        self.opt.step()
        self.opt.clear_grad()

    def rating(self, x: list, label: np.ndarray, history=None):
        """The chapter's step on the tensors `x` (from `tensors`), the labels [N, 1] and the `history` weights
        tensor (None without); returns the loss."""
        with paddle.no_grad():
            loss, saved = self.rating_loss(x, paddle.to_tensor(label), history)
            self.update(self.rating_grads(saved))
        return loss

    def rating_loss(self, x: list, label, history=None):
        """The chapter's loss (0-d tensor) and what `rating_grads` needs; call under `paddle.no_grad()`."""
        u, m, saved = self.forward(x[: self.nu], x[self.nu :], history)
        rows = x[self.nu + 5]  # the movie tower's row of every rating
        loss, head = cos_mse(u, _gather_rows(m, rows), label)
        return loss, (saved, head, rows, m.shape[0])

    def rating_grads(self, saved) -> list:
        towers, head, rows, n_movies = saved
        d_u, d_m = cos_mse_grad(head)
        return self.backward(towers, d_u, _scatter_rows(rows, d_m, n_movies))

    def softmax(self, users: list, movies: list, target: np.ndarray, temperature: float, add=None, history=None):
        """The candidate-generation step: `softmax_xent` of the towers' tensors (from `tensors`, and the user
        tower's `history` weights; the candidates are the distinct movies of `movies`) with numpy `target` [B]
        and `add` [B, C] (or None); returns the loss."""
        with paddle.no_grad():
            u, m, saved = self.forward(users, movies, history)
            add = None if add is None else paddle.to_tensor(add)
            loss, head = softmax_xent(u, m, paddle.to_tensor(target.reshape(-1, 1)), temperature, add)
            self.update(self.backward(saved, *softmax_xent_grad(head)))
        return loss


def in_batch(movie_ids: np.ndarray, log_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`softmax_xent`'s target and add for `model.in_batch_softmax_loss`, with the batch's distinct movies
    (sorted, as `FusedStep.tensors` orders them) as the candidates. There every other rating of the batch is a
    negative of row i, corrected by log((B-1) q), and the other copies of row i's own movie are masked: a movie
    rated c times is one column here with log c added to its correction, and row i's own movie a column with no
    correction (exp(x) + exp(x) = exp(x + log 2); a copy of the positive contributes nothing)."""
    movies, target, counts = np.unique(movie_ids, return_inverse=True, return_counts=True)
    log_q = log_freq[movies] + np.float32(np.log(max(len(movie_ids) - 1, 1)))
    add = np.repeat((np.log(counts).astype(np.float32) - log_q)[None, :], len(movie_ids), axis=0)
    target = target.ravel()
    add[np.arange(len(movie_ids)), target] = 0.0
    return target.astype(np.int64), add
