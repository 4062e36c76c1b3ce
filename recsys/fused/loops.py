"""The fused step's small loops, compiled by Numba: each is one pass over rows where NumPy would take several
(or, for rows added into rows chosen by an index that may repeat, `np.add.at`'s element-at-a-time path, 20-50×
slower). Matmuls and tanh stay NumPy's (BLAS; SIMD). Sums over a row's entries may be taken in SIMD lanes
(`reassoc`): float32 sums in another order, as any BLAS takes them."""

from __future__ import annotations

import numba
import numpy as np

_JIT = {"cache": True, "nogil": True}
_SUMS = {**_JIT, "fastmath": {"reassoc"}}
_ADAM = {**_JIT, "error_model": "numpy"}  # divisions without a zero check per element, so in SIMD lanes


@numba.njit(**_JIT)
def gather(table: np.ndarray, ids: np.ndarray, pad: int, out: np.ndarray) -> None:
    """`out[i] = table[ids[i]]`, zeros where `ids[i] == pad` (the embedding lookup; `pad` -1: none)."""
    for i in range(ids.shape[0]):
        row = ids[i]
        for j in range(table.shape[1]):
            out[i, j] = 0.0 if row == pad else table[row, j]


@numba.njit(**_JIT)
def bag_sum(table: np.ndarray, ids: np.ndarray, pad: int) -> np.ndarray:
    """[N, D]: row i sums `table[ids[i, k]]` over its k, skipping `pad` (the chapter's category pooling)."""
    out = np.zeros((ids.shape[0], table.shape[1]), table.dtype)
    for i in range(ids.shape[0]):
        for k in range(ids.shape[1]):
            row = ids[i, k]
            if row != pad:
                for j in range(table.shape[1]):
                    out[i, j] += table[row, j]
    return out


@numba.njit(**_JIT)
def weighted_sum(table: np.ndarray, ids: np.ndarray, rows: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """[n, D]: row r sums `weight[i] * table[ids[i]]` over the i with `rows[i] == r` (a history's mean)."""
    out = np.zeros((n, table.shape[1]), table.dtype)
    for i in range(ids.shape[0]):
        r, k, w = rows[i], ids[i], weight[i]
        for j in range(table.shape[1]):
            out[r, j] += w * table[k, j]
    return out


@numba.njit(**_JIT)
def scaled_rows(x: np.ndarray, rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """[P, D]: `weight[i] * x[rows[i]]` (the gradient of `weighted_sum`'s table rows)."""
    out = np.empty((rows.shape[0], x.shape[1]), x.dtype)
    for i in range(rows.shape[0]):
        r, w = rows[i], weight[i]
        for j in range(x.shape[1]):
            out[i, j] = w * x[r, j]
    return out


@numba.njit(**_JIT)
def scatter_add(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """`out[index[i]] += values[i]` for each i in order: out [n, D], index [P], values [P, D]."""
    for i in range(index.shape[0]):
        row = index[i]
        for j in range(values.shape[1]):
            out[row, j] += values[i, j]


@numba.njit(**_JIT)
def sgd_rows(table: np.ndarray, index: np.ndarray, values: np.ndarray, lr: np.float32) -> None:
    """`table[index[i]] -= lr * values[i]` for each i in order (an index may repeat): Paddle's `sgd` on a sparse
    (SelectedRows) gradient."""
    for i in range(index.shape[0]):
        row = index[i]
        for j in range(values.shape[1]):
            table[row, j] -= lr * values[i, j]


@numba.njit(**_ADAM, inline="always")
def _adam_row(param, moment1, moment2, g, lr, b1, b2, eps) -> None:
    """Adam on one row in place (1-D views: element by element, in SIMD lanes)."""
    one = np.float32(1.0)
    for j in range(param.shape[0]):
        m = b1 * moment1[j] + (one - b1) * g[j]
        v = b2 * moment2[j] + (one - b2) * g[j] * g[j]
        moment1[j], moment2[j] = m, v
        param[j] -= lr * (m / (np.sqrt(v) + eps))


@numba.njit(**_ADAM)
def adam(param, grad, m1, m2, lr, b1, b2, eps, b1_pow, b2_pow) -> None:
    """Paddle's `adam` kernel on a dense gradient, in place on float32 arrays of one shape, flat (1-D views): the
    moments, then `param -= lr_t m / (sqrt(v) + eps_t)` with lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
    eps_t = eps sqrt(1 - b2^t); the beta powers b^t ([1] each) are read, then advanced."""
    one = np.float32(1.0)
    lr_t, eps_t = lr * np.sqrt(one - b2_pow[0]) / (one - b1_pow[0]), eps * np.sqrt(one - b2_pow[0])
    _adam_row(param, m1, m2, grad, lr_t, b1, b2, eps_t)
    b1_pow[0], b2_pow[0] = b1_pow[0] * b1, b2_pow[0] * b2


@numba.njit(**_ADAM)
def lazy_adam(table, ids, rows, weight, values, m1, m2, lr, b1, b2, eps, b1_pow, b2_pow, slot) -> None:
    """Paddle's lazy `adam` on a sparse gradient (`values[i]` adds to row `ids[i]`; with `rows` and `weight`
    [P], not empty, `weight[i] * values[rows[i]]` does): each distinct row's gradient summed, then only those
    rows' moments and values updated as `adam` does; tables [R, D]. (Paddle's CPU kernel for sparse gradients
    advances the beta powers, [1] each, before it reads them, as this does.) `slot` [R] int64 is scratch, all -1
    on entry and again on return: the work is the gradient's rows, never the table's."""
    one = np.float32(1.0)
    b1_pow[0], b2_pow[0] = b1_pow[0] * b1, b2_pow[0] * b2
    lr_t, eps_t = lr * np.sqrt(one - b2_pow[0]) / (one - b1_pow[0]), eps * np.sqrt(one - b2_pow[0])
    distinct = np.empty(len(ids), np.int64)  # the distinct rows, in first-seen order; `slot[row]`: each one's place
    sums = np.empty((len(ids), values.shape[1]), values.dtype)  # the first n rows: each distinct row's gradient
    n = 0
    for i in range(len(ids)):
        w, r = (weight[i], rows[i]) if len(rows) else (one, i)
        k = slot[ids[i]]
        if k < 0:
            k = slot[ids[i]] = n
            distinct[n] = ids[i]
            n += 1
            for j in range(values.shape[1]):
                sums[k, j] = w * values[r, j]
        else:
            for j in range(values.shape[1]):
                sums[k, j] += w * values[r, j]
    for k in range(n):
        slot[distinct[k]] = -1
        _adam_row(table[distinct[k]], m1[distinct[k]], m2[distinct[k]], sums[k], lr_t, b1, b2, eps_t)


@numba.njit(**_SUMS)
def unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x's rows over their norms, [N] each row's 1 / norm)."""
    out, r = np.empty_like(x), np.empty(x.shape[0], x.dtype)
    for i in range(x.shape[0]):
        s = np.float32(0.0)
        for j in range(x.shape[1]):
            s += x[i, j] * x[i, j]
        r[i] = np.float32(1.0) / np.sqrt(s)
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * r[i]
    return out, r


@numba.njit(**_SUMS)
def shifted_logits(logits: np.ndarray, scale: np.float32, add: np.ndarray, target: np.ndarray) -> np.ndarray:
    """In place, row by row: `logits * scale + add` (`add` [C], or [0] for none; never at the row's `target`
    column) less the row's max; returns [B] each row's `target` logit after the shift (the softmax's inputs,
    then `np.exp` in place)."""
    out = np.empty(logits.shape[0], logits.dtype)
    for i in range(logits.shape[0]):
        row, t = logits[i], target[i]
        if add.shape[0]:
            own = row[t] * scale
            for j in range(row.shape[0]):
                row[j] = row[j] * scale + add[j]
            row[t] = own
        else:
            for j in range(row.shape[0]):
                row[j] *= scale
        top = row[0]
        for j in range(1, row.shape[0]):
            top = max(top, row[j])
        for j in range(row.shape[0]):
            row[j] -= top
        out[i] = row[t]
    return out


@numba.njit(**_SUMS)
def logit_grads(e: np.ndarray, shifted_target: np.ndarray, target: np.ndarray, scale: np.float32) -> np.float64:
    """In place, row by row: `e` (exp of the shifted logits) becomes the cross-entropy's gradient, `scale`
    (softmax - one-hot of `target`); returns the mean cross-entropy, mean(log(sum) - shifted target logit)."""
    loss = 0.0
    for i in range(e.shape[0]):
        row = e[i]
        total = np.float32(0.0)
        for j in range(row.shape[0]):
            total += row[j]
        f = scale / total
        for j in range(row.shape[0]):
            row[j] *= f
        row[target[i]] -= scale
        loss += np.log(total) - shifted_target[i]
    return loss / e.shape[0]


@numba.njit(**_SUMS)
def off_unit_sphere(d: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """`(d - x <d, x>) r` row by row, in place on `d`: the gradient through x = v r (unit rows, r = 1 / |v|)."""
    for i in range(d.shape[0]):
        s = np.float32(0.0)
        for j in range(d.shape[1]):
            s += d[i, j] * x[i, j]
        for j in range(d.shape[1]):
            d[i, j] = (d[i, j] - x[i, j] * s) * r[i]
    return d


@numba.njit(**_JIT)
def add_bias(z: np.ndarray, bias: np.ndarray) -> None:
    """`z += bias` row by row, in place."""
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] += bias[j]


@numba.njit(**_JIT)
def tanh_grad(out: np.ndarray, d_out: np.ndarray):
    """(d z, d bias) of `out = tanh(z)`, `z = x @ W + bias`: d z = d_out (1 - out^2), d bias its column sums."""
    d_z = np.empty_like(d_out)
    d_bias = np.zeros(d_out.shape[1], d_out.dtype)
    for i in range(d_out.shape[0]):
        for j in range(d_out.shape[1]):
            d = d_out[i, j] * (1.0 - out[i, j] * out[i, j])
            d_z[i, j] = d
            d_bias[j] += d
    return d_z, d_bias


@numba.njit(**_SUMS)
def cos_mse(user: np.ndarray, movie: np.ndarray, rows: np.ndarray, label: np.ndarray):
    """The chapter's head and loss for rating i of `user[i]` and `movie[rows[i]]`: (mean((5 cos - label)^2), and
    per rating the dot product and both squared norms)."""
    n = user.shape[0]
    dot, uu, mm = np.empty(n, user.dtype), np.empty(n, user.dtype), np.empty(n, user.dtype)
    loss = 0.0
    for i in range(n):
        k, um, u2, m2 = rows[i], np.float32(0.0), np.float32(0.0), np.float32(0.0)
        for j in range(user.shape[1]):
            um += user[i, j] * movie[k, j]
            u2 += user[i, j] * user[i, j]
            m2 += movie[k, j] * movie[k, j]
        dot[i], uu[i], mm[i] = um, u2, m2
        diff = np.float32(5.0) * um / np.sqrt(u2 * m2) - label[i]
        loss += diff * diff
    return np.float32(loss / n), dot, uu, mm


@numba.njit(**_JIT)
def cos_mse_grad(user, movie, rows, label, dot, uu, mm):
    """(d user [N, D], d movie [n, D]) of `cos_mse`'s loss, movie rows' gradients summed per row of `movie`:
    with r = 1 / sqrt(|u|^2 |m|^2), a = 10 (5 dot r - label) r / N and b = a dot,
    d user = a m - (b / |u|^2) u and d movie = a u - (b / |m|^2) m."""
    n = user.shape[0]
    d_user, d_movie = np.empty_like(user), np.zeros_like(movie)
    for i in range(n):
        r = np.float32(1.0) / np.sqrt(uu[i] * mm[i])
        a = np.float32(10.0 / n) * (np.float32(5.0) * dot[i] * r - label[i]) * r
        bu, bm = a * dot[i] / uu[i], a * dot[i] / mm[i]
        k = rows[i]
        for j in range(user.shape[1]):
            d_user[i, j] = a * movie[k, j] - bu * user[i, j]
            d_movie[k, j] += a * user[i, j] - bm * movie[k, j]
    return d_user, d_movie


@numba.njit(**_JIT)
def distinct(ids: np.ndarray):
    """`np.unique(ids, return_index=True, return_inverse=True)` of a 1-D int array: (sorted distinct ids, where
    each first occurs, each entry's place among them)."""
    order = np.argsort(ids, kind="mergesort")
    inverse = np.empty(len(ids), np.int64)
    keep = np.empty(len(ids), np.int64)
    n = 0
    for i in range(len(ids)):
        if i == 0 or ids[order[i]] != ids[order[i - 1]]:
            keep[n] = order[i]
            n += 1
        inverse[order[i]] = n - 1
    first = keep[:n].copy()
    return ids[first], first, inverse


@numba.njit(**_JIT)
def title_windows(title: np.ndarray, pad: int):
    """The text-CNN's input for padded titles [N, L]: each real word's window of word ids [P, 3] (the previous,
    own and next id; padding outside the title) and its title's row [P], title by title, word by word."""
    n_words = 0
    for i in range(title.shape[0]):
        for k in range(title.shape[1]):
            n_words += title[i, k] != pad
    windows = np.empty((n_words, 3), title.dtype)
    rows = np.empty(n_words, np.int64)
    p = 0
    for i in range(title.shape[0]):
        for k in range(title.shape[1]):
            if title[i, k] != pad:
                windows[p, 0] = title[i, k - 1] if k > 0 else pad
                windows[p, 1] = title[i, k]
                windows[p, 2] = title[i, k + 1] if k + 1 < title.shape[1] else pad
                rows[p] = i
                p += 1
    return windows, rows


def segment_sum(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """[n, D]: row k sums the rows of `values` [P, D] whose `index` is k (the gradient of a lookup in an [n, D]
    table)."""
    out = np.zeros((n, values.shape[1]), values.dtype)
    scatter_add(out, np.ascontiguousarray(index, np.int64), np.ascontiguousarray(values))
    return out
