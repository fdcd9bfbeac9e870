"""Gamma renewal arrivals (the paper's model) and Poisson, its alpha = 1 case."""

from __future__ import annotations

import numpy as np

from burstgpt.workload.processes import register


class GammaProcess:
    kind = "gamma"
    fixed_shape: float | None = None

    def unit_gaps(self, shape, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.standard_gamma(shape, size)

    def unit_mean(self, shape: np.ndarray) -> np.ndarray:
        return np.asarray(shape, dtype=np.float64)

    def cv(self, shape: np.ndarray) -> np.ndarray:
        return 1.0 / np.sqrt(np.asarray(shape, dtype=np.float64))

    def shape_for_cv(self, cv: np.ndarray) -> np.ndarray:
        return 1.0 / np.asarray(cv, dtype=np.float64) ** 2


class PoissonProcess(GammaProcess):
    kind = "poisson"
    fixed_shape = 1.0

    def shape_for_cv(self, cv: np.ndarray) -> np.ndarray:
        return np.ones_like(np.asarray(cv, dtype=np.float64))  # CV is always 1


register(GammaProcess())
register(PoissonProcess())
