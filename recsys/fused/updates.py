"""Optimizer steps in place, on NumPy views of Paddle parameters: the fused step's (`recsys.fused.step`) gradients
applied as Paddle's own kernels apply them, without a Paddle call per parameter.

A dense gradient is an array; an embedding's sparse gradient is `Rows` (as Paddle's SelectedRows: rows that may
repeat). `Updater.step` runs plain SGD (`recsys.fused.optim.SGD`) and Adam
(`recsys.fused.optim.make_optimizer`'s: lazy rows for sparse tables) in `recsys.fused.loops`, on the optimizer's
own state, so checkpoints and resumes see Paddle's optimizer as after its own steps; any other optimizer, or
setting, gets the gradients set on the parameters and steps itself.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from recsys.fused import loops as kernels
from recsys.fused.optim import SGD


class Param(NamedTuple):
    """A Paddle tensor and a writable NumPy view of its memory (zero-copy, through DLPack)."""

    p: object
    w: np.ndarray

    @classmethod
    def of(cls, p) -> Param:
        return cls(p, np.from_dlpack(p.detach()))


class Rows(NamedTuple):
    """A table's gradient as autograd makes it for a sparse embedding (SelectedRows): `values[i]` adds to row
    `ids[i]`; an id may repeat. With `rows` and `weight`, `weight[i] * values[rows[i]]` adds to row `ids[i]`
    instead (a history mean's gradient: each batch row's gradient scaled, never written out row by row)."""

    ids: np.ndarray
    values: np.ndarray
    rows: np.ndarray | None = None
    weight: np.ndarray | None = None

    def plain(self) -> Rows:
        """The same gradient with one value row per id."""
        if self.rows is None:
            return self
        return Rows(self.ids, kernels.scaled_rows(self.values, self.rows, self.weight))


_NO_ROWS, _NO_WEIGHT = np.empty(0, np.int64), np.empty(0, np.float32)  # `kernels.lazy_adam`: one value per id


class Updater:
    """The update of `opt`'s parameters from (`Param`, gradient) pairs."""

    def __init__(self, opt):
        self.opt = opt
        self._adam_states: dict = {}
        self._slots: dict[int, np.ndarray] = {}  # `kernels.lazy_adam`'s scratch, one per table size

    def step(self, grads: list) -> None:
        """The optimizer's step on `grads`: plain SGD in place, `param -= lr * grad` (row by row for `Rows`), Adam
        in place (`_adam`); any other optimizer finds them on the parameters, as `loss.backward()` leaves them.
        Parameters that stop gradients keep their values."""
        grads = [(p, g) for p, g in grads if not p.p.stop_gradient]
        if type(self.opt) is SGD:
            lr = self.opt.lr
            for p, g in grads:
                if isinstance(g, Rows):
                    kernels.sgd_rows(p.w, g.ids, g.plain().values, lr)
                else:
                    np.subtract(p.w, lr * g, out=p.w)
            return
        if self._adam(grads):
            return
        for p, g in grads:
            p.p._set_grad_ivar(self._paddle_grad(p.p, g))
        self.opt.step()
        self.opt.clear_grad()

    def _adam(self, grads: list) -> bool:
        """Paddle's Adam (`recsys.fused.optim.make_optimizer`'s: no weight decay, lazy rows for sparse tables) on
        `grads` in place, on the optimizer's own moments and beta powers (created as its own first step creates
        them: from a resumed state dict where it has one); False where this does not apply (another optimizer
        or setting): Paddle's optimizer updates."""
        import paddle

        opt = self.opt
        if not (type(opt) is paddle.optimizer.Adam and opt._lazy_mode and not opt._amsgrad):
            return False
        if opt._multi_precision or opt._grad_clip is not None or opt.regularization is not None:
            return False
        if not all(isinstance(b, float) for b in (opt._beta1, opt._beta2)):
            return False
        new = [p.p for p, _ in grads if p.p.name not in opt._already_create_accumulator]
        if new:
            from paddle.base import framework
            from paddle.base.layer_helper import LayerHelper

            opt.helper = opt.helper or LayerHelper(type(opt).__name__)
            opt._create_accumulators(framework.default_main_program().global_block(), new)
        state = [self._adam_state(p.p) for p, _ in grads]
        if any(s is None for s in state):
            return False
        lr, b1, b2, eps = (np.float32(v) for v in (opt.get_lr(), opt._beta1, opt._beta2, opt._epsilon))
        for (p, g), (m1, m2, b1_pow, b2_pow) in zip(grads, state):
            step = (lr, b1, b2, eps, b1_pow.w, b2_pow.w)  # the kernels advance the beta powers in place
            if isinstance(g, Rows):
                slot = self._slots.get(len(p.w))
                if slot is None:
                    slot = self._slots[len(p.w)] = np.full(len(p.w), -1, np.int64)
                rows, weight = (_NO_ROWS, _NO_WEIGHT) if g.rows is None else (g.rows, g.weight)
                kernels.lazy_adam(p.w, g.ids, rows, weight, g.values, m1.w, m2.w, *step, slot)
            else:
                grad = np.ascontiguousarray(g, np.float32).reshape(-1)
                kernels.adam(p.w.reshape(-1), grad, m1.w.reshape(-1), m2.w.reshape(-1), *step)
        return True

    def _adam_state(self, p) -> tuple[Param, Param, Param, Param] | None:
        """The Adam optimizer's (moment1, moment2, beta1 power, beta2 power) of `p`, with NumPy views; None for
        a parameter with its own learning rate."""
        hit = self._adam_states.get(id(p))
        if hit is not None and all(q.p.data_ptr() == ptr for q, ptr in hit[1]):
            return hit[0]
        acc, opt = self.opt._accumulators, self.opt
        names = (opt._moment1_acc_str, opt._moment2_acc_str, opt._beta1_pow_acc_str, opt._beta2_pow_acc_str)
        if p.optimize_attr.get("learning_rate", 1.0) != 1.0 or not all(p.name in acc.get(n, {}) for n in names):
            return None
        state = tuple(Param.of(acc[n][p.name]) for n in names)
        self._adam_states[id(p)] = state, [(q, q.p.data_ptr()) for q in state]
        return state

    @staticmethod
    def _paddle_grad(p, g):
        """`g` as a Paddle gradient of `p`."""
        import paddle
        from paddle import _C_ops

        if isinstance(g, Rows):  # sparse rows, as the plain layers' sparse lookups give them
            g = g.plain()
            return _C_ops.embedding_grad(paddle.to_tensor(g.ids), p, paddle.to_tensor(g.values), -1, True)
        return paddle.to_tensor(np.ascontiguousarray(g, np.float32))
