"""Weibull renewal arrivals (ServeGen fits some clients' per-window gaps with it): shape k < 1 is burstier than
Poisson, k = 1 is Poisson, k > 1 is smoother."""

from __future__ import annotations

import numpy as np
from scipy.special import gamma as gamma_function

from burstgpt.workload.processes import register


class WeibullProcess:
    kind = "weibull"
    fixed_shape: float | None = None

    def unit_gaps(self, shape, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.weibull(shape, size)

    def unit_mean(self, shape: np.ndarray) -> np.ndarray:
        return gamma_function(1.0 + 1.0 / np.asarray(shape, dtype=np.float64))

    def cv(self, shape: np.ndarray) -> np.ndarray:
        k = np.asarray(shape, dtype=np.float64)
        return np.sqrt(gamma_function(1.0 + 2.0 / k) / gamma_function(1.0 + 1.0 / k) ** 2 - 1.0)


register(WeibullProcess())
