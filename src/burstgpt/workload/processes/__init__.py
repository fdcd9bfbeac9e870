"""Renewal arrival processes, keyed by kind. One file per process; a new process is one file that calls
`register`.

A process draws gaps between consecutive requests from a two-parameter family: a shape (`alpha`, unitless) and
a scale (`beta_s`, seconds). Every family is given by its unit-scale gap distribution, so a gap is
`unit_gap(shape) * beta_s` and the mean gap is `unit_mean(shape) * beta_s`. The schedules in
`burstgpt.workload.arrivals` work for any family through these two functions; `cv` and its inverse
`shape_for_cv` let a window recorded as (rate, CV) be drawn from any family (mirrored traces, ServeGen).

| kind     | gaps                              | mean gap                     | CV                        |
|----------|-----------------------------------|------------------------------|---------------------------|
| gamma    | Gamma(shape alpha, scale beta)    | alpha * beta                 | 1 / sqrt(alpha)           |
| weibull  | Weibull(shape k, scale beta)      | beta * Gamma(1 + 1/k)        | sqrt(G(1+2/k)/G(1+1/k)^2 - 1) |
| poisson  | Gamma with alpha = 1 (exponential)| beta                         | 1                         |
| constant | exactly beta (shape ignored)      | beta                         | 0                         |
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from burstgpt.errors import BurstGPTError


class RenewalProcess(Protocol):
    """A family of unit-scale gap distributions indexed by a shape parameter."""

    kind: str
    #: the shape every schedule of this process must use (poisson: 1), or None when the shape is free
    fixed_shape: float | None

    def unit_gaps(self, shape: float | np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` unit-scale gaps, float64; `shape` a scalar or an array of shape (size,)."""

    def unit_mean(self, shape: np.ndarray) -> np.ndarray:
        """Mean unit-scale gap for each shape, float64, same shape as `shape`."""

    def cv(self, shape: np.ndarray) -> np.ndarray:
        """Coefficient of variation of the gaps for each shape."""

    def shape_for_cv(self, cv: np.ndarray) -> np.ndarray:
        """The shape whose gaps have each CV (inverse of `cv`; processes with a fixed CV return their shape)."""


_REGISTRY: dict[str, RenewalProcess] = {}


def register(process: RenewalProcess) -> RenewalProcess:
    """Add a process to the registry under its `kind`."""
    _REGISTRY[process.kind] = process
    return process


def get_process(kind: str) -> RenewalProcess:
    """The registered process of this kind; a one-line error listing the kinds otherwise."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise BurstGPTError(f"unknown arrival process {kind!r}; choose one of {', '.join(arrival_processes())}") \
            from None


def arrival_processes() -> tuple[str, ...]:
    """The registered process kinds."""
    return tuple(_REGISTRY)


# Import the built-in processes so they register themselves.
from burstgpt.workload.processes import constant, gamma, weibull  # noqa: E402,F401
