"""Constant-rate arrivals: every gap is exactly the scale (the shape is ignored)."""

from __future__ import annotations

import numpy as np

from burstgpt.workload.processes import register


class ConstantProcess:
    kind = "constant"
    fixed_shape: float | None = 1.0

    def unit_gaps(self, shape, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.ones(size)

    def unit_mean(self, shape: np.ndarray) -> np.ndarray:
        return np.ones_like(np.asarray(shape, dtype=np.float64))

    def cv(self, shape: np.ndarray) -> np.ndarray:
        return np.zeros_like(np.asarray(shape, dtype=np.float64))

    def shape_for_cv(self, cv: np.ndarray) -> np.ndarray:
        return np.ones_like(np.asarray(cv, dtype=np.float64))  # CV is always 0


register(ConstantProcess())
