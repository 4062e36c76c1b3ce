"""Optimizers: the chapter's plain SGD through Paddle's own kernel, and Paddle's SGD-with-L2 and Adam(W)."""

from __future__ import annotations


class SGD:
    """Plain SGD, `param -= lr * grad`, through Paddle's own `sgd_` kernel (sparse row gradients included).

    Numerically `paddle.optimizer.SGD` (a test holds them equal), without its per-step Python bookkeeping,
    which costs more than the update itself at the chapter's batch size.
    """

    def __init__(self, parameters, learning_rate: float):
        import paddle

        self.parameters = [p for p in parameters if not p.stop_gradient]
        self._lr = paddle.to_tensor([learning_rate], dtype="float32")
        self.lr = self._lr.numpy()[0]  # the same float32, for updates outside Paddle (`recsys.fused.step`)

    def step(self) -> None:
        from paddle import _C_ops

        for p in self.parameters:
            if p.grad is not None:
                _C_ops.sgd_(p, self._lr, p.grad, None, False)

    def clear_grad(self) -> None:
        for p in self.parameters:
            p.clear_gradient(False)

    def get_lr(self) -> float:
        return float(self.lr)

    def set_lr(self, value: float) -> None:
        self._lr.fill_(value)
        self.lr = self._lr.numpy()[0]

    def state_dict(self) -> dict:
        return {}

    def set_state_dict(self, state: dict) -> None:
        pass


def make_optimizer(name: str, parameters, lr: float, weight_decay: float = 0.0, sparse: bool = True):
    """The chapter's plain SGD (fast path), SGD with an L2 penalty, or Adam (AdamW when decaying weights)."""
    import paddle

    if name == "sgd" and not weight_decay:
        return SGD(parameters, lr)
    if name == "sgd":
        return paddle.optimizer.SGD(lr, parameters, weight_decay=paddle.regularizer.L2Decay(weight_decay))
    if weight_decay:
        return paddle.optimizer.AdamW(lr, parameters=parameters, weight_decay=weight_decay, lazy_mode=sparse)
    return paddle.optimizer.Adam(lr, parameters=parameters, lazy_mode=sparse)
