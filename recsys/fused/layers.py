"""The fused step's pieces: the chapter's network and losses, forward and backward written out by hand in NumPy
on the parameters' own memory, with the same parameters and the same math as `recsys.model`'s layers.

At the chapter's batch size a step is mostly small kernels and their dispatch: autograd records dozens of small
ops forward and runs each one's gradient backward, and a Paddle op costs 5-15 µs on the CPU before it computes
anything. NumPy's cost 1-3 µs, and its matmuls run on an optimized BLAS. Each parameter is read and updated in
place through a zero-copy DLPack view of the Paddle tensor, so the network, its state dict and the saved model
are Paddle's as before. Each piece computes its output, keeps what its gradient needs, and its `*_grad` appends
the closed-form gradient of every parameter it used to `grads`, a list of (`Param`, gradient); an embedding's
gradient is `Rows` (its looked-up rows and their gradients, as Paddle's SelectedRows), a dense one an array:

- `user_tower` / `movie_tower`: a tower's tanh output, each feature through its own table and fc (the text-CNN
  as in `model.TextCNN`, the user's history as in `model.History`); padding ids look up zeros, and their row's
  gradient is Paddle's (none for a dense table; a sparse table's padding row takes it, and never shows it);
- `cos_mse`: the chapter's head and loss, `mean((5 cos(user, movie) - label)^2)`;
- `softmax_xent`: `model.softmax_loss` (unit rows, logits / T, the log-Q correction, which `in_batch` gives
  for the batch's distinct movies as candidates);
- `ranking_xent`: the ranking network's head and `model.weighted_logistic_loss`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from recsys.fused import loops as kernels
from recsys.fused.updates import Param, Rows
from recsys.model import RankingHead, UserTower


class Table(NamedTuple):
    weight: Param
    pad: int  # -1: none
    sparse: bool


class FC(NamedTuple):
    weight: Param
    bias: Param


class UserPlan(NamedTuple):
    """A `UserTower`'s parameters: the user id's and each feature's table, every part's fc (the history part's
    last), the history's table (None without), the output fc."""

    tables: list[Table]
    fcs: list[FC]
    history: Table | None
    fc: FC


class MoviePlan(NamedTuple):
    """A `MovieTower`'s parameters (the text-CNN's as `words` and `cnn`)."""

    movie: Table
    movie_fc: FC
    category: Table
    words: Table
    cnn: FC
    fc: FC


def _table(emb) -> Table:
    return Table(Param.of(emb.weight), -1 if emb._padding_idx is None else emb._padding_idx, emb._sparse)


def _fc_of(fc) -> FC:
    return FC(Param.of(fc.weight), Param.of(fc.bias))


_PLANS: dict[int, tuple] = {}


def plan(layer) -> UserPlan | MoviePlan | HeadPlan:
    """A tower's parameters as `Table`s and `FC`s with their NumPy views, resolved once (Paddle's attribute
    lookups cost a microsecond each) and again whenever a parameter's buffer moves."""
    hit = _PLANS.get(id(layer))
    if hit is not None and hit[0] is layer and all(q.p.data_ptr() == ptr for q, ptr in hit[2]):
        return hit[1]
    if isinstance(layer, RankingHead):
        built = HeadPlan(Param.of(layer.linear), _fc_of(layer.fc), _fc_of(layer.out))
    elif isinstance(layer, UserTower):
        h, parts = layer.history, layer.parts()
        fcs = [_fc_of(f) for _, f in parts] + ([] if h is None else [_fc_of(h.fc)])
        history = None if h is None else Table(Param.of(h.emb), -1, h.sparse)
        built = UserPlan([_table(e) for e, _ in parts], fcs, history, _fc_of(layer.fc))
    else:
        cnn = layer.title_cnn
        cnn_fc = FC(Param.of(cnn.weight), Param.of(cnn.bias))
        built = MoviePlan(_table(layer.movie_emb), _fc_of(layer.movie_fc), _table(layer.category_emb),
                          _table(cnn.embedding), cnn_fc, _fc_of(layer.fc))  # fmt: skip
    _PLANS[id(layer)] = (layer, built, [(q, q.p.data_ptr()) for q in _flat(built)])
    return built


def _flat(x):
    if isinstance(x, Param):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _flat(y)


def _lookup(t: Table, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The lookup of `ids` [*ids.shape, D] (padding looks up zeros), or into `out` [ids.size, D]."""
    flat = out if out is not None else np.empty((ids.size, t.weight.w.shape[1]), np.float32)
    kernels.gather(t.weight.w, ids.ravel(), t.pad, flat)
    return flat.reshape(*ids.shape, -1)


def _lookup_grad(t: Table, ids: np.ndarray, d_out: np.ndarray, grads: list) -> None:
    """The table's gradient of `_lookup(t, ids)` with output gradient `d_out` [*ids.shape, D], as Paddle's:
    `Rows` for a sparse table (whose gradient does not skip the padding id), else dense (which does)."""
    ids, d_out = ids.ravel(), np.ascontiguousarray(d_out.reshape(ids.size, -1))
    if t.sparse:
        grads.append((t.weight, Rows(ids, d_out)))
        return
    if t.pad >= 0:
        d_out = np.where((ids == t.pad)[:, None], np.float32(0.0), d_out)
    grads.append((t.weight, kernels.segment_sum(d_out, ids, t.weight.w.shape[0])))


def _fc(fc: FC, x: np.ndarray) -> np.ndarray:
    z = x @ fc.weight.w
    kernels.add_bias(z, fc.bias.w)
    return z


def _tanh_fc(fc: FC, x: np.ndarray) -> np.ndarray:
    z = _fc(fc, x)
    return np.tanh(z, out=z)


def _fc_grad(fc: FC, x: np.ndarray, d_z: np.ndarray, d_bias: np.ndarray, grads: list) -> np.ndarray:
    """Gradients of `z = x @ weight + bias` given d z (and its column sums): the weight's and the bias's go to
    `grads`; returns the input's."""
    grads += [(fc.weight, x.T @ d_z), (fc.bias, d_bias)]
    return d_z @ fc.weight.w.T


def _tanh_fc_grad(fc: FC, x: np.ndarray, out: np.ndarray, d_out: np.ndarray, grads: list) -> np.ndarray:
    """`_fc_grad` of `out = tanh(x @ weight + bias)`."""
    return _fc_grad(fc, x, *kernels.tanh_grad(out, d_out), grads)


def _blocks(fcs: list[FC]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Several fcs as one: the block-diagonal weight, the biases side by side, and each fc's (input start, end,
    output start, end). `x @ W + b` of their inputs side by side is their outputs side by side."""
    spans, i0, o0 = [], 0, 0
    for fc in fcs:
        i1, o1 = i0 + fc.weight.w.shape[0], o0 + fc.weight.w.shape[1]
        spans.append((i0, i1, o0, o1))
        i0, o0 = i1, o1
    w, b = np.zeros((i0, o0), np.float32), np.empty(o0, np.float32)
    for fc, (i0, i1, o0, o1) in zip(fcs, spans):
        w[i0:i1, o0:o1] = fc.weight.w
        b[o0:o1] = fc.bias.w
    return w, b, spans


def user_tower(t: UserPlan, user_id, *ids_and_history):
    """`UserTower.forward` on the user id and each feature's ids, then, when the tower has a history part, its
    weights: float32 [N, n_movies], or the sparse form (movie ids [P], batch row [P], weight [P]).
    The parts' fcs run as one: their inputs side by side through the block-diagonal weight of the fcs.
    Returns (output [N, 200], what `user_tower_grad` needs)."""
    tables, fcs, hist, out_fc = t
    ids = (user_id, *ids_and_history[: len(tables) - 1])
    w, b, spans = _blocks(fcs)
    inputs = np.empty((len(user_id), w.shape[0]), np.float32)  # each part's embedding, side by side
    for table, i, (i0, i1, _, _) in zip(tables, ids, spans):
        _lookup(table, i, inputs[:, i0:i1])
    history = None
    if hist is not None:
        if len(ids_and_history) < len(tables):
            raise ValueError("this user tower has a history part: pass its weights")
        history, i0 = ids_and_history[len(tables) - 1], spans[-1][0]
        if isinstance(history, (tuple, list)):  # the mean of the rated movies' embeddings, row by row
            h_ids, h_rows, h_w = history
            inputs[:, i0:] = kernels.weighted_sum(hist.weight.w, h_ids, h_rows, h_w, len(user_id))
        else:
            inputs[:, i0:] = history @ hist.weight.w
    x = inputs @ w
    kernels.add_bias(x, b)
    out = _tanh_fc(out_fc, x)
    return out, (t, ids, history, inputs, w, spans, x, out)


def user_tower_grad(saved, d_out: np.ndarray, grads: list) -> None:
    """The gradients of every parameter `user_tower` used, from its output's `d_out`, to `grads`."""
    t, ids, history, inputs, w, spans, x, out = saved
    tables, fcs, hist, out_fc = t
    d_x = _tanh_fc_grad(out_fc, x, out, d_out, grads)
    d_w, d_b, d_inputs = inputs.T @ d_x, d_x.sum(0), d_x @ w.T
    for fc, (i0, i1, o0, o1) in zip(fcs, spans):
        grads += [(fc.weight, d_w[i0:i1, o0:o1]), (fc.bias, d_b[o0:o1])]
    for table, i, (i0, i1, _, _) in zip(tables, ids, spans):
        _lookup_grad(table, i, d_inputs[:, i0:i1], grads)
    if hist is not None:
        d_mean, table = d_inputs[:, spans[-1][0] :], hist
        if isinstance(history, (tuple, list)):
            h_ids, h_rows, h_w = history
            d_rows = Rows(h_ids, np.ascontiguousarray(d_mean), h_rows, h_w)  # row i: h_w[i] * d_mean[h_rows[i]]
            if not table.sparse:
                d_rows = kernels.segment_sum(d_rows.plain().values, h_ids, table.weight.w.shape[0])
            grads.append((table.weight, d_rows))
        else:
            grads.append((table.weight, history.T @ d_mean))  # weights^T @ d_mean


def movie_tower(t: MoviePlan, movie_id, category_id, windows, window_row):
    """`MovieTower.forward`, with the title given as its words' windows: `windows` [P, 3] (previous, own and
    next word id, padding outside the title) and `window_row` [P] (each word's sample).
    Returns (output [N, 200], saved)."""
    movie, movie_fc, category, words_table, cnn, out_fc = t
    emb = _lookup(movie, movie_id)
    words = _lookup(words_table, windows).reshape(len(windows), -1)
    hidden = _tanh_fc(cnn, words)
    categories = kernels.bag_sum(category.weight.w, category_id, category.pad)
    title = kernels.segment_sum(hidden, window_row, len(movie_id))
    x = np.concatenate([_fc(movie_fc, emb), categories, title], 1)
    out = _tanh_fc(out_fc, x)
    return out, (t, movie_id, category_id, windows, window_row, emb, words, hidden, x, out)


def movie_tower_grad(saved, d_out: np.ndarray, grads: list) -> None:
    """The gradients of every parameter `movie_tower` used, from its output's `d_out`, to `grads`."""
    t, movie_id, category_id, windows, window_row, emb, words, hidden, x, out = saved
    movie, movie_fc, category, words_table, cnn, out_fc = t
    d_x = _tanh_fc_grad(out_fc, x, out, d_out, grads)
    k = movie_fc.weight.w.shape[1]
    d_movie, d_cat, d_title = d_x[:, :k], d_x[:, k : 2 * k], d_x[:, 2 * k :]
    _lookup_grad(movie, movie_id, _fc_grad(movie_fc, emb, d_movie, d_movie.sum(0), grads), grads)
    _lookup_grad(category, category_id, np.repeat(d_cat, category_id.shape[1], axis=0), grads)
    d_words = _tanh_fc_grad(cnn, words, hidden, d_title.take(window_row, 0), grads)
    _lookup_grad(words_table, windows, d_words, grads)


def cos_mse(user: np.ndarray, movie: np.ndarray, rows: np.ndarray, label: np.ndarray):
    """The chapter's head and loss of ratings (`user[i]`, `movie[rows[i]]`): returns (loss, saved); the score is
    `5 * dot / sqrt(|u|^2 |m|^2)`."""
    label = np.ascontiguousarray(label.ravel(), np.float32)
    loss, dot, uu, mm = kernels.cos_mse(user, movie, rows, label)
    return loss, (user, movie, rows, label, dot, uu, mm)


def cos_mse_grad(saved):
    """(d user, d movie) of `cos_mse`'s loss, each movie row's summed over its ratings (see `kernels`)."""
    return kernels.cos_mse_grad(*saved)


def softmax_xent(user: np.ndarray, movie: np.ndarray, target: np.ndarray, temperature: float, add=None):
    """`model.softmax_loss`: mean cross-entropy of `target` [B] on logits `cos(user, movie) / T + add`
    (`add` [C], at every column but the row's target: the log-Q correction, see `in_batch`). Returns (loss,
    saved)."""
    (un, ru), (mn, rm) = kernels.unit_rows(user), kernels.unit_rows(movie)
    logits = un @ mn.T
    none = np.zeros(0, np.float32)
    at_target = kernels.shifted_logits(logits, np.float32(1.0 / temperature), none if add is None else add, target)
    e = np.exp(logits, out=logits)
    loss = kernels.logit_grads(e, at_target, target, np.float32(1.0 / (len(target) * temperature)))
    return np.float32(loss), (un, mn, ru, rm, e)


def softmax_xent_grad(saved):
    """(d user, d movie) of `softmax_xent`'s loss: d logits = (softmax - one_hot) / (B T) (made by the forward),
    through the logits' matmul and the unit rows, d x = r (d x_unit - x_unit <d x_unit, x_unit>)."""
    un, mn, ru, rm, d_logits = saved
    return kernels.off_unit_sphere(d_logits @ mn, un, ru), kernels.off_unit_sphere(d_logits.T @ un, mn, rm)


class HeadPlan(NamedTuple):
    """A `RankingHead`'s parameters."""

    linear: Param
    fc: FC
    out: FC


def ranking_xent(h: HeadPlan, user, movie, rows, features, label, weight):
    """`RankingHead` on pairs (`user[i]`, `movie[rows[i]]`) with their `features` [N, F], and
    `model.weighted_logistic_loss` of its logits against `label` [N] weighted by `weight` [N]:
    returns (loss, saved)."""
    m = movie.take(rows, 0)
    inputs = np.concatenate([user * m, features], 1)
    hidden = _fc(h.fc, inputs)
    np.maximum(hidden, 0.0, out=hidden)
    logit = (features @ h.linear.w + _fc(h.out, hidden)).ravel()
    loss = np.maximum(logit, 0.0) - logit * label + np.log1p(np.exp(-np.abs(logit)))
    total = weight.sum(dtype=np.float32)
    saved = (h, user, m, rows, len(movie), features, inputs, hidden, logit, label, weight, total)
    return np.float32((loss * weight).sum(dtype=np.float32) / total), saved


def ranking_xent_grad(saved, grads: list, towers: bool = True):
    """(d user, d movie) of `ranking_xent`'s loss (movie rows' summed per row of `movie`; with `towers` False,
    None: nothing needs them), the head's gradients to `grads`: d logit = weight (sigmoid(logit) - label) /
    sum(weight)."""
    h, user, m, rows, n_movies, features, inputs, hidden, logit, label, weight, total = saved
    with np.errstate(over="ignore"):  # exp(-logit) = inf for a very negative logit: its sigmoid is 0, as it should be
        d_logit = (weight * (1.0 / (1.0 + np.exp(-logit)) - label) / total)[:, None].astype(np.float32)
    grads.append((h.linear, features.T @ d_logit))
    d_hidden = _fc_grad(h.out, hidden, d_logit, d_logit.sum(0), grads)
    d_hidden *= hidden > 0
    if not towers:
        grads += [(h.fc.weight, inputs.T @ d_hidden), (h.fc.bias, d_hidden.sum(0))]
        return None, None
    d_product = _fc_grad(h.fc, inputs, d_hidden, d_hidden.sum(0), grads)[:, : user.shape[1]]
    return d_product * m, kernels.segment_sum(d_product * user, rows, n_movies)


def title_windows(title: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The text-CNN's input for padded titles [N, L]: each real word's window of word ids [P, 3] (padding
    outside the title) and its sample [P], in the order `TextCNN` visits them."""
    return kernels.title_windows(np.ascontiguousarray(title, np.int64), pad)
