"""The one evaluator: a split's loss and accuracy by a compiled program, padded once to whole batches and kept on
device; for one run (`Evaluator`, data parallel where the run is), and for the K members of a replicas run
(`MemberEvaluator`, each member on its own split, one program mapped over them)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from runner.scale.distributed import DataParallel
from runner.training.programs import compiled, signature
from runner.training.train import Parts, TrainState, make_evaluate


def padded(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, labels and a mask of real examples, padded to a whole number of batches."""
    n = len(x)
    total = -(-n // batch_size) * batch_size
    pad = total - n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    mask = np.arange(total) < n
    return x, y, mask


class Evaluator:
    """A compiled evaluation of one split (padded once, kept on device).

    With `data_parallel`, the split is replicated on the run's devices and each batch split over them, as in
    training; a split smaller than a batch is one batch padded to a multiple of the device count.
    `parts`: the run's, under which its programs are kept for a later run of them (runner/training/programs.py).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mc_samples: int = 0,
                 data_parallel: DataParallel | None = None, parts: Parts | None = None):
        self.size, self.data_parallel, self.parts = len(x), data_parallel, parts
        if self.size:
            devices = 1 if data_parallel is None else data_parallel.size
            batch = max(1, min(batch_size, -(-self.size // devices) * devices))
            self.arrays = self._placed(padded(x, y, batch))
            split, placed = None, {}
            if data_parallel is not None:
                split = data_parallel.batch
                placed = {"in_shardings": data_parallel.replicated, "out_shardings": data_parallel.replicated}
            self.program = ("evaluate", batch, mc_samples,
                            None if data_parallel is None else tuple(data_parallel.devices))
            self._jitted = self._fn = compiled(
                parts, self.program, lambda: jax.jit(make_evaluate(batch, mc_samples, split), **placed))

    def _placed(self, tree: Any) -> Any:
        return jax.device_put(tree) if self.data_parallel is None else self.data_parallel.put(tree)

    def compile(self, state: TrainState, key: jax.Array) -> None:
        """Compile now, once: evaluation reads the weights alone, the same in every stage."""
        if self.size and self._fn is self._jitted:
            args = (self._placed(_weights(state)), *self.arrays, self._placed(key))
            self._fn = compiled(self.parts, (*self.program, signature(*args)),
                                lambda: self._jitted.lower(*args).compile())

    def __call__(self, state: TrainState, key: jax.Array) -> dict[str, float]:
        if not self.size:
            return {"loss": float("nan"), "accuracy": float("nan")}
        metrics = self._fn(self._placed(_weights(state)), *self.arrays, self._placed(key))
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _weights(state: TrainState) -> TrainState:
    """The state without its optimizer: each stage's chain and optimizer state differ, its weights' structure not."""
    return state.replace(tx=None, opt_state=None)


class MemberEvaluator:
    """Every member's loss and accuracy on its own split, one compiled program mapped over the members."""

    def __init__(self, splits: list[tuple[np.ndarray, np.ndarray]], batch_size: int):
        self.size = len(splits[0][0])
        if self.size:
            batch = max(1, min(batch_size, self.size))
            arrays = [padded(xs, ys, batch) for xs, ys in splits]
            self.x, self.y, self.mask = (jnp.stack([a[i] for a in arrays]) for i in range(3))
            self.fn = jax.jit(jax.vmap(make_evaluate(batch)))

    def __call__(self, states: Any, keys: jax.Array) -> dict[str, list[float]]:
        if not self.size:
            return {"loss": [float("nan")] * len(keys), "accuracy": [float("nan")] * len(keys)}
        out = jax.device_get(self.fn(states, self.x, self.y, self.mask, keys))
        return {k: [float(v) for v in values] for k, values in out.items()}
