"""Weibull renewal arrivals (ServeGen fits some clients' per-window gaps with it): shape k < 1 is burstier than
Poisson, k = 1 is Poisson, k > 1 is smoother.

The CV depends on k alone: CV^2 = Gamma(1 + 2/k) / Gamma(1 + 1/k)^2 - 1, decreasing in k. `shape_for_cv` inverts
it for a whole array of CVs at once with scipy's elementwise bracketing root finder (Chandrupatla's method, the
vectorised cousin of brentq: a ServeGen client has up to 2,016 windows and a pool hundreds of clients, so one
brentq call per window would cost seconds) on log k in [log MIN_SHAPE, log MAX_SHAPE].
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from burstgpt.workload.processes import register

#: Shapes `shape_for_cv` searches: CV from ~1e30 (k = 0.01) down to ~1.3e-3 (k = 1000); CVs outside are clipped.
MIN_SHAPE, MAX_SHAPE = 0.01, 1000.0


def _log_cv(log_k: np.ndarray) -> np.ndarray:
    k = np.exp(log_k)
    # expm1 and log-gamma keep CV^2 accurate both for k -> 0 (huge Gamma values) and k -> inf (CV^2 -> 0).
    return 0.5 * np.log(np.expm1(gammaln(1.0 + 2.0 / k) - 2.0 * gammaln(1.0 + 1.0 / k)))


class WeibullProcess:
    kind = "weibull"
    fixed_shape: float | None = None

    def unit_gaps(self, shape, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.weibull(shape, size)

    def unit_mean(self, shape: np.ndarray) -> np.ndarray:
        return np.exp(gammaln(1.0 + 1.0 / np.asarray(shape, dtype=np.float64)))

    def cv(self, shape: np.ndarray) -> np.ndarray:
        return np.exp(_log_cv(np.log(np.asarray(shape, dtype=np.float64))))

    def shape_for_cv(self, cv: np.ndarray) -> np.ndarray:
        cv = np.asarray(cv, dtype=np.float64)
        bounds = np.log([MIN_SHAPE, MAX_SHAPE])
        low_cv, high_cv = _log_cv(bounds[1]), _log_cv(bounds[0])
        target = np.clip(np.log(cv), low_cv, high_cv)
        from scipy.optimize import elementwise  # here: scipy.optimize costs 0.25 s to import at start-up

        result = elementwise.find_root(lambda x, t: _log_cv(x) - t, tuple(bounds), args=(target,),
                                       tolerances={"xrtol": 1e-13, "xatol": 1e-13})
        return np.exp(result.x)


register(WeibullProcess())
