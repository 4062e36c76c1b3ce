"""The saved inference model run through `paddle.inference`, as the chapter's `load_inference_model` did."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.errors import RecsysError


def dynamic_mode() -> None:
    """Run this thread's Paddle calls in dynamic mode: Paddle's mode is per thread, and a server's worker thread
    can start in static mode (the rebuilt network then fails to load its parameters)."""
    import paddle

    if not paddle.in_dynamic_mode():
        paddle.disable_static()


class Predictor:
    """The saved inference model run through `paddle.inference`, fed by the chapter's feed names."""

    def __init__(self, model: Path, params: Path, threads: int = 1, name: str = "the model dir"):
        from paddle import inference

        self.name = name
        config = inference.Config(str(model), str(params))
        config.disable_gpu()
        config.disable_mkldnn()  # Paddle 3.3's oneDNN kernels miscompute the text-CNN window (tests compare to dygraph)
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(threads)
        self._predictor = inference.create_predictor(config)
        self._inputs = {n: self._predictor.get_input_handle(n) for n in self._predictor.get_input_names()}
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, handle in self._inputs.items():
            handle.copy_from_cpu(np.ascontiguousarray(feeds[name]))
        self._predictor.run()
        out = self._output.copy_to_cpu()
        if not np.isfinite(out).all():  # a wrong answer that looks like an answer: refuse it
            raise RecsysError(f"the model in {self.name} produced a non-finite score; train it again")
        return out
