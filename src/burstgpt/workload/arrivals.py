"""Arrival processes. Every function returns arrival times in seconds from the workload's start as a sorted
float64 array of shape (n,), drawn from a `numpy.random.Generator` the caller seeds.

Gamma renewal: gaps between consecutive requests are Gamma(shape alpha, scale beta_s) seconds, so the mean gap
is alpha * beta_s and the coefficient of variation 1/sqrt(alpha) (smaller alpha = burstier). Poisson is
alpha = 1, constant rate is a fixed gap. A process starts with a request at time 0. Schedules work for any
renewal process of `burstgpt.workload.processes` (gamma, poisson, weibull, constant): alpha is then the
process's shape and beta_s its scale.

Time-varying burstiness (`ParamSchedule`): alpha and beta are piecewise constant, changing every T seconds or
every N requests; the family may change too (`step_process`, e.g. ServeGen's Gamma or Weibull per window).
Every N requests: the gap before request i is drawn with the step of request i. Every T seconds: a
time-rescaled renewal process (see `_time_indexed_arrivals`): inside a window gaps are exactly Gamma(alpha, beta)
of that window, the process is not restarted at boundaries, and each window receives its
expected count rate x length even when it holds only a few arrivals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.workload.processes import get_process

SHAPES = ("constant", "linear", "quadratic", "step")


# --------------------------------------------------------------------------------------------------------------
# Stationary processes


def gamma_arrivals(
    num_requests: int, alpha: float, beta_s: float, rng: np.random.Generator
) -> np.ndarray:
    """`num_requests` arrivals of a Gamma renewal process (shape alpha, scale beta_s seconds), first at 0."""
    _check_gamma(alpha, beta_s)
    gaps = rng.gamma(alpha, beta_s, max(num_requests - 1, 0))
    return _arrivals_from_gaps(gaps, num_requests)


def poisson_arrivals(num_requests: int, rate_rps: float, rng: np.random.Generator) -> np.ndarray:
    """`num_requests` Poisson arrivals at `rate_rps` requests/s (Gamma with alpha = 1), first at 0."""
    _check_rate(rate_rps)
    return gamma_arrivals(num_requests, 1.0, 1.0 / rate_rps, rng)


def constant_arrivals(num_requests: int, rate_rps: float) -> np.ndarray:
    """`num_requests` arrivals exactly 1/rate_rps seconds apart, first at 0."""
    _check_rate(rate_rps)
    return np.arange(num_requests, dtype=np.float64) / rate_rps


def renewal_arrivals(
    num_requests: int, process: str, shape: float, scale_s: float, rng: np.random.Generator
) -> np.ndarray:
    """`num_requests` arrivals of a stationary renewal process of kind `process` (see
    `burstgpt.workload.processes`) with gap shape `shape` and scale `scale_s` seconds, first at 0."""
    renewal = get_process(process)
    shape = renewal.fixed_shape if renewal.fixed_shape is not None else shape
    _check_gamma(shape, scale_s)
    gaps = renewal.unit_gaps(shape, rng, max(num_requests - 1, 0)) * scale_s
    return _arrivals_from_gaps(gaps, num_requests)


def _arrivals_from_gaps(gaps: np.ndarray, num_requests: int) -> np.ndarray:
    arrivals = np.zeros(num_requests, dtype=np.float64)
    if num_requests > 1:
        np.cumsum(gaps[: num_requests - 1], out=arrivals[1:])
    return arrivals


def _check_gamma(alpha: float, beta_s: float) -> None:
    if not (np.isfinite(alpha) and alpha > 0 and np.isfinite(beta_s) and beta_s > 0):
        raise BurstGPTError(f"Gamma parameters must be positive and finite: alpha={alpha}, beta={beta_s}")


def _check_rate(rate_rps: float) -> None:
    if not (np.isfinite(rate_rps) and rate_rps > 0):
        raise BurstGPTError(f"rate must be positive and finite, got {rate_rps}")


# --------------------------------------------------------------------------------------------------------------
# Time-varying schedules


@dataclass(frozen=True)
class ParamSchedule:
    """Piecewise-constant renewal parameters: shape `alpha` and scale `beta_s` of `process` (default gamma).

    Step k is in force on [starts[k], starts[k+1]) (the last step up to `end`), in `unit` = "seconds" of the
    workload clock or "requests" (request index). After `end`: `after_end="hold"` keeps the last step for
    ever, `"cycle"` repeats the schedule with period `end`. A step whose beta_s is inf (or alpha/beta NaN)
    has rate 0: no request starts in it (seconds unit only).

    `step_process` (K,) optionally names the process of each step (kinds of `burstgpt.workload.processes`), for
    schedules whose family changes from step to step (ServeGen records Gamma or Weibull per window); None, the
    usual case, means `process` throughout and keeps the single-process fast paths.
    """

    starts: np.ndarray  # (K,) float64, starts[0] == 0, increasing
    alpha: np.ndarray  # (K,) shape parameter
    beta_s: np.ndarray  # (K,) scale parameter, seconds
    unit: Literal["seconds", "requests"]
    end: float
    after_end: Literal["hold", "cycle"] = "hold"
    process: str = "gamma"  # a kind of burstgpt.workload.processes
    step_process: np.ndarray | None = None  # (K,) str kinds per step, or None: `process` for every step

    def __post_init__(self) -> None:
        get_process(self.process)  # a clear error for an unknown kind
        if self.step_process is not None:
            kinds = np.asarray(self.step_process, dtype=str)
            if kinds.shape != np.shape(self.starts):
                raise BurstGPTError("schedule step_process must name one process per step")
            for kind in np.unique(kinds):
                get_process(str(kind))
            object.__setattr__(self, "step_process", kinds)
        starts = np.asarray(self.starts, dtype=np.float64)
        if starts.ndim != 1 or starts.size == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0):
            raise BurstGPTError("schedule steps must start at 0 and increase")
        if not (len(self.alpha) == len(self.beta_s) == starts.size):
            raise BurstGPTError("schedule alpha, beta and starts must have the same length")
        if not self.end > starts[-1]:
            raise BurstGPTError("schedule end must lie after its last step start")
        if self.unit not in ("seconds", "requests"):
            raise BurstGPTError(f"schedule unit must be seconds or requests, got {self.unit!r}")
        positive = _positive_rate(np.asarray(self.alpha), np.asarray(self.beta_s))
        invalid = ~positive & ~(np.isinf(self.beta_s) | np.isnan(self.alpha) | np.isnan(self.beta_s))
        if np.any(invalid) or not np.any(positive):
            raise BurstGPTError("schedule alpha and beta must be positive (beta may be inf for a silent step)")
        if self.unit == "requests" and not np.all(positive):
            raise BurstGPTError("a request-indexed schedule cannot have silent steps")

    @classmethod
    def regular(
        cls,
        alpha: np.ndarray,
        beta_s: np.ndarray,
        step: float,
        unit: Literal["seconds", "requests"],
        after_end: Literal["hold", "cycle"] = "hold",
        process: str = "gamma",
    ) -> ParamSchedule:
        """Steps of equal length `step` (seconds or requests) of a renewal `process`."""
        alpha = np.asarray(alpha, dtype=np.float64)
        beta_s = np.broadcast_to(np.asarray(beta_s, dtype=np.float64), alpha.shape).copy()
        if not step > 0:
            raise BurstGPTError(f"schedule step must be positive, got {step}")
        starts = np.arange(alpha.size, dtype=np.float64) * step
        return cls(starts, alpha, beta_s, unit, float(alpha.size * step), after_end, process)

    @property
    def num_steps(self) -> int:
        return int(self.starts.size)

    def mean_gap_s(self, alpha: np.ndarray | None = None, beta_s: np.ndarray | None = None) -> np.ndarray:
        """Mean gap of each step (or of the given shapes and scales, one per step), seconds; NaN/inf propagate."""
        alpha = np.asarray(self.alpha if alpha is None else alpha, dtype=np.float64)
        beta_s = self.beta_s if beta_s is None else beta_s
        with np.errstate(invalid="ignore", over="ignore"):
            if self.step_process is None:
                return get_process(self.process).unit_mean(alpha) * np.asarray(beta_s)
            unit_mean = np.empty(alpha.shape)
            for kind in np.unique(self.step_process):
                mask = self.step_process == kind
                unit_mean[mask] = get_process(str(kind)).unit_mean(alpha[mask])
            return unit_mean * np.asarray(beta_s)

    def step_processes(self) -> list:
        """The process of each step (K,), a list of `RenewalProcess` (one lookup per step: for per-step loops)."""
        if self.step_process is None:
            return [get_process(self.process)] * self.num_steps
        by_kind = {kind: get_process(str(kind)) for kind in np.unique(self.step_process)}
        return [by_kind[kind] for kind in self.step_process]

    def to_frame(self) -> pl.DataFrame:
        """Columns start (seconds or requests), alpha, beta_s, mean_rate_rps (1 / mean gap), process."""
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(_positive_rate(self.alpha, self.beta_s), 1.0 / self.mean_gap_s(), 0.0)
        process = self.step_process if self.step_process is not None else np.full(self.num_steps, self.process)
        return pl.DataFrame(
            {"start": self.starts, "alpha": self.alpha, "beta_s": self.beta_s, "mean_rate_rps": rate,
             "process": process.astype(str)}
        )

    def _locate(self, position: float) -> tuple[int, float]:
        """Step index in force at `position` and the absolute position where that step ends."""
        offset = 0.0
        if position >= self.end:
            if self.after_end == "hold":
                return self.num_steps - 1, np.inf
            offset = np.floor(position / self.end) * self.end
        k = int(np.searchsorted(self.starts, position - offset, side="right")) - 1
        step_end = self.starts[k + 1] if k + 1 < self.num_steps else self.end
        return k, offset + step_end


def shape_values(shape: str, start: float, end: float, num_steps: int) -> np.ndarray:
    """Values of a built-in shape over `num_steps` steps, shape (num_steps,).

    constant: `start` throughout; linear: `start` to `end`; step: `start` for the first half, `end` for the
    second; quadratic: `start` at both ends and `end` at the midpoint, a parabola (the paper's dip and recovery
    of alpha: pass end < start for a dip).
    """
    if num_steps < 1:
        raise BurstGPTError(f"a schedule needs at least one step, got {num_steps}")
    x = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
    if shape == "constant":
        return np.full(num_steps, float(start))
    if shape == "linear":
        return start + (end - start) * x
    if shape == "step":
        return np.where(np.arange(num_steps) < (num_steps + 1) // 2, float(start), float(end))
    if shape == "quadratic":
        return end + (start - end) * (2.0 * x - 1.0) ** 2
    raise BurstGPTError(f"unknown schedule shape {shape!r}; choose one of {', '.join(SHAPES)}")


def shaped_schedule(
    alpha: tuple[float, float],
    beta_s: tuple[float, float],
    alpha_shape: str,
    beta_shape: str,
    num_steps: int,
    step: float,
    unit: Literal["seconds", "requests"],
) -> ParamSchedule:
    """A regular schedule whose alpha follows `alpha_shape` from alpha[0] to alpha[1] and beta likewise.

    The paper's default is `alpha_shape="quadratic"`, `beta_shape="linear"`.
    """
    return ParamSchedule.regular(
        shape_values(alpha_shape, alpha[0], alpha[1], num_steps),
        shape_values(beta_shape, beta_s[0], beta_s[1], num_steps),
        step,
        unit,
    )


def schedule_from_table(frame: pl.DataFrame, unit: Literal["seconds", "requests"]) -> ParamSchedule:
    """A user table with columns `at` (step start, seconds or request index; the first must be 0), `alpha`,
    `beta_s`. The last step holds for ever."""
    for name in ("at", "alpha", "beta_s"):
        if name not in frame.columns:
            raise BurstGPTError(f"schedule table needs columns at, alpha, beta_s; missing {name!r}")
    frame = frame.select(pl.col("at", "alpha", "beta_s").cast(pl.Float64)).sort("at")
    starts = frame["at"].to_numpy()
    last_len = starts[-1] - starts[-2] if starts.size > 1 else 1.0
    return ParamSchedule(
        starts, frame["alpha"].to_numpy(), frame["beta_s"].to_numpy(), unit, float(starts[-1] + last_len)
    )


def _positive_rate(alpha: np.ndarray, beta_s: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=np.float64)
    beta_s = np.asarray(beta_s, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(alpha) & np.isfinite(beta_s) & (alpha > 0) & (beta_s > 0)


def scheduled_arrivals(
    schedule: ParamSchedule,
    rng: np.random.Generator,
    *,
    num_requests: int | None = None,
    duration_s: float | None = None,
    stationary_start: bool = False,
) -> np.ndarray:
    """Arrivals of the time-varying renewal process of `schedule`, bounded by `num_requests` and/or
    `duration_s` (arrivals strictly before it). At least one bound is required.

    The process starts with an arrival at time 0 (at the first live window of a seconds schedule), unless
    `stationary_start` (seconds schedules only): then it starts in equilibrium, its first arrival after a
    forward-recurrence time (a length-biased gap times a uniform), as if it had been running before 0. Composed
    streams (ServeGen clients) need this, or every stream would add a request at the same instant."""
    if num_requests is None and duration_s is None:
        raise BurstGPTError("give a number of requests or a duration")
    if num_requests is not None and num_requests < 0:
        raise BurstGPTError(f"number of requests must be non-negative, got {num_requests}")
    if duration_s is not None and not duration_s > 0:
        raise BurstGPTError(f"duration must be positive, got {duration_s}")
    if schedule.unit == "requests":
        if stationary_start:
            raise BurstGPTError("a stationary start needs a seconds schedule")
        arrivals = _request_indexed_arrivals(schedule, rng, num_requests, duration_s)
    else:
        arrivals = _time_indexed_arrivals(schedule, rng, num_requests, duration_s, stationary_start)
    if duration_s is not None:
        arrivals = arrivals[: np.searchsorted(arrivals, duration_s, side="left")]
    if num_requests is not None:
        arrivals = arrivals[:num_requests]
    return arrivals


def _request_indexed_arrivals(
    schedule: ParamSchedule, rng: np.random.Generator, num_requests: int | None, duration_s: float | None
) -> np.ndarray:
    """Gap i (before request i, i >= 1) uses the step in force at request index i."""
    if num_requests is not None:
        return _request_chunk(schedule, rng, 1, num_requests, 0.0, first=True)
    # Bounded by duration only: draw chunks until the clock passes it.
    mean_gap = float(np.mean(schedule.mean_gap_s()))
    chunk = int(min(max(duration_s / mean_gap * 1.1, 1024), 10_000_000))
    parts = [np.zeros(1)]
    produced, clock = 1, 0.0
    while clock < duration_s:
        part = _request_chunk(schedule, rng, produced, produced + chunk, clock, first=False)
        parts.append(part)
        produced += part.size
        clock = float(part[-1])
    return np.concatenate(parts)


def _request_chunk(
    schedule: ParamSchedule, rng: np.random.Generator, first_index: int, stop_index: int, clock: float,
    *, first: bool,
) -> np.ndarray:
    count = stop_index - first_index
    gaps = np.empty(count)
    # Position in `gaps` of each step's first request (request indices are integers, steps start at starts[k]).
    bounds = np.clip(np.append(np.ceil(schedule.starts) - first_index, count), 0, count).astype(np.int64)
    steps_used = np.flatnonzero(np.diff(bounds) > 0)
    if (schedule.after_end == "cycle" and stop_index > schedule.end) or steps_used.size * 32 > count:
        index = np.arange(first_index, stop_index, dtype=np.float64)
        if schedule.after_end == "cycle":
            index = np.mod(index, schedule.end)
        step = np.searchsorted(schedule.starts, index, side="right") - 1
        if schedule.step_process is None:
            gaps[:] = get_process(schedule.process).unit_gaps(schedule.alpha[step], rng, count)
        else:  # one draw per family present
            kinds = schedule.step_process[step]
            for kind in np.unique(kinds):
                mask = kinds == kind
                gaps[mask] = get_process(str(kind)).unit_gaps(schedule.alpha[step[mask]], rng, int(mask.sum()))
        gaps *= schedule.beta_s[step]
    else:
        # Requests are contiguous per step: draw each step's gaps with a scalar shape (numpy's per-element
        # shape path is ~8x slower). The loop is over schedule steps (>= 32 requests each), not requests.
        processes = schedule.step_processes()
        for k in steps_used:
            lo, hi = bounds[k], bounds[k + 1]
            gaps[lo:hi] = processes[k].unit_gaps(float(schedule.alpha[k]), rng, int(hi - lo))
            gaps[lo:hi] *= schedule.beta_s[k]
    times = clock + np.cumsum(gaps)
    return np.concatenate([[0.0], times]) if first else times


def _time_indexed_arrivals(
    schedule: ParamSchedule, rng: np.random.Generator, num_requests: int | None, duration_s: float | None,
    stationary_start: bool = False,
) -> np.ndarray:
    """Time-rescaled renewal process. Operational time u = Lambda(t), the integral of the schedule's rate
    1/(mean gap), runs at rate 1; in it gaps have shape alpha_k and mean 1 (Gamma(alpha_k, 1/alpha_k)) with the alpha of the
    window where the gap starts, and arrivals are mapped back through the inverse of Lambda. Inside one window
    this is exactly Gamma(alpha_k, beta_k) gaps; a gap that crosses a boundary is stretched by the next
    window's rate instead of keeping the first window's, so every window gets its expected count
    (rate x length) however few arrivals it holds, and silent windows (rate 0) have zero operational length."""
    clock = _Clock(schedule)
    live = clock.rates > 0
    op_starts = clock.op_edges[:-1][live]
    alpha = schedule.alpha[live]
    unit_mean = schedule.mean_gap_s(schedule.alpha, np.ones(schedule.num_steps))[live]
    operational = ParamSchedule(  # mean gap 1 in operational time
        op_starts - op_starts[0], alpha, 1.0 / unit_mean, "seconds", clock.op_edges[-1] - op_starts[0],
        schedule.after_end if schedule.after_end == "cycle" else "hold", schedule.process,
        None if schedule.step_process is None else schedule.step_process[live],
    )
    op_duration = None if duration_s is None else clock.forward(duration_s) - op_starts[0]
    if schedule.after_end == "hold" and not clock.rates[-1] > 0:
        # Silent for ever after the last live window: nothing can arrive past its operational end.
        op_duration = operational.end if op_duration is None else min(op_duration, operational.end)
    op_arrivals = _renewal_walk(operational, rng, num_requests, op_duration, stationary_start)
    return clock.inverse(op_arrivals + op_starts[0])


class _Clock:
    """Operational time of a seconds schedule: Lambda(t) = integral of its rate, piecewise linear."""

    def __init__(self, schedule: ParamSchedule) -> None:
        self.schedule = schedule
        lengths = np.diff(np.append(schedule.starts, schedule.end))
        positive = _positive_rate(schedule.alpha, schedule.beta_s)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.rates = np.where(positive, 1.0 / schedule.mean_gap_s(), 0.0)
        self.op_edges = np.concatenate([[0.0], np.cumsum(self.rates * lengths)])

    def forward(self, t: float) -> float:
        """Lambda(t) for a time t >= 0 (seconds)."""
        s = self.schedule
        cycles = 0.0
        if t >= s.end:
            if s.after_end == "hold":
                return float(self.op_edges[-1] + (t - s.end) * self.rates[-1])
            cycles, t = np.divmod(t, s.end)
        k = int(np.searchsorted(s.starts, t, side="right")) - 1
        return float(cycles * self.op_edges[-1] + self.op_edges[k] + (t - s.starts[k]) * self.rates[k])

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """Times (seconds) at operational times `u` (sorted), vectorised."""
        s = self.schedule
        total = self.op_edges[-1]
        cycles = np.zeros_like(u)
        if s.after_end == "cycle":
            cycles, u = np.divmod(u, total)
        beyond = u >= total  # hold mode: the last window's rate continues
        # side="right" skips silent windows (zero operational length) to the live window after them.
        k = np.clip(np.searchsorted(self.op_edges, u, side="right") - 1, 0, s.num_steps - 1)
        rate = self.rates[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            within = np.where(rate > 0, (u - self.op_edges[k]) / rate, 0.0)
        t = s.starts[k] + within
        if np.any(beyond):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(beyond, s.end + (u - total) / self.rates[-1], t)
        return cycles * s.end + t


def _renewal_walk(
    schedule: ParamSchedule, rng: np.random.Generator, num_requests: int | None, duration_s: float | None,
    stationary_start: bool = False,
) -> np.ndarray:
    """Renewal process whose gap takes the parameters of the window where it starts; every window live.
    Window by window: draw a batch of gaps, keep the arrivals up to and including the first past the window's
    end, continue from there. The loop is over windows, not requests. Starts with an arrival at 0, or with
    `stationary_start` after a forward-recurrence time of the first window's process."""
    processes = schedule.step_processes() if schedule.step_process is not None else None
    process = get_process(schedule.process)
    clock = _forward_recurrence(schedule, processes, rng) if stationary_start else 0.0
    parts: list[np.ndarray] = [np.array([clock])]
    produced = 1
    mean_gaps = schedule.mean_gap_s()
    while (num_requests is None or produced < num_requests) and (duration_s is None or clock < duration_s):
        k, window_end = schedule._locate(clock)
        if processes is not None:
            process = processes[k]
        alpha, beta_s = float(schedule.alpha[k]), float(schedule.beta_s[k])
        horizon = min(window_end, duration_s if duration_s is not None else np.inf)
        expected = (horizon - clock) / float(mean_gaps[k]) if np.isfinite(horizon) else np.inf
        batch = int(min(expected * 1.2 + 8.0 * np.sqrt(expected + 1.0) + 8.0, 4_000_000))
        if num_requests is not None:
            batch = min(batch, num_requests - produced + 1)
        times = clock + np.cumsum(process.unit_gaps(alpha, rng, batch) * beta_s)
        kept = times[: int(np.searchsorted(times, window_end, side="left")) + 1]
        parts.append(kept)
        produced += kept.size
        clock = float(kept[-1])
    return np.concatenate(parts)


#: Gaps drawn to pick the length-biased gap of a stationary start.
FORWARD_RECURRENCE_SAMPLE = 4096


def _forward_recurrence(schedule: ParamSchedule, processes: list | None, rng: np.random.Generator) -> float:
    """Time to the first arrival of a renewal process in equilibrium, with the first step's gaps: a gap picked
    with probability proportional to its length (from FORWARD_RECURRENCE_SAMPLE draws) times a uniform."""
    process = processes[0] if processes is not None else get_process(schedule.process)
    gaps = process.unit_gaps(float(schedule.alpha[0]), rng, FORWARD_RECURRENCE_SAMPLE) * float(schedule.beta_s[0])
    total = gaps.sum()
    picked = gaps[rng.choice(gaps.size, p=gaps / total)] if total > 0 else 0.0
    return float(picked * rng.uniform())


# --------------------------------------------------------------------------------------------------------------
# Mirroring a trace's per-window parameters


def mirror_schedule(
    window_fits: pl.DataFrame,
    target_rate_rps: float,
    *,
    time_compression: float = 1.0,
    fallback_alpha: float = 1.0,
    after_end: Literal["hold", "cycle"] = "cycle",
    process: str = "gamma",
) -> ParamSchedule:
    """A seconds schedule replaying a trace's per-window Gamma fits at a target mean rate.

    `window_fits` has one row per window, in order, with `window_start_s`, `window_end_s`, `n_arrivals`,
    `alpha` (NaN/null where the window had too few arrivals to fit) — the output of
    `burstgpt.analysis.fits.gamma_fit_per_window`. Each window keeps its alpha (burstiness; `fallback_alpha`
    where unfitted) and gets beta_s = 1 / (alpha * r_w) with r_w its observed rate n_arrivals / length scaled
    by one common factor, so the mean rate over the schedule is `target_rate_rps` and the windows keep their
    relative rates. This is the fitted beta times a common factor, up to the window-edge effect of the fit.
    Windows with no arrival are silent. `time_compression` > 1 shortens every window by that factor.

    `process` (a kind of `burstgpt.workload.processes`) draws every window's gaps from that family instead,
    keeping each window's rate and its fitted CV 1/sqrt(alpha) (the shape comes from `shape_for_cv`).
    """
    _check_rate(target_rate_rps)
    if not time_compression > 0:
        raise BurstGPTError(f"time compression must be positive, got {time_compression}")
    if window_fits.height == 0:
        raise BurstGPTError("no windows to mirror")
    starts = window_fits["window_start_s"].cast(pl.Float64).to_numpy()
    ends = window_fits["window_end_s"].cast(pl.Float64).to_numpy()
    counts = window_fits["n_arrivals"].cast(pl.Float64).to_numpy()
    alpha = window_fits["alpha"].cast(pl.Float64).fill_null(np.nan).to_numpy().copy()
    alpha[~(np.isfinite(alpha) & (alpha > 0))] = fallback_alpha
    lengths = (ends - starts) / time_compression
    if np.any(lengths <= 0):
        raise BurstGPTError("window ends must lie after their starts")
    if counts.sum() <= 0:
        raise BurstGPTError("the trace has no arrivals in the mirrored windows")
    scale = target_rate_rps * lengths.sum() / counts.sum()  # common factor on every window's rate
    window_rate = counts / lengths * scale
    renewal = get_process(process)
    shape = alpha if process == "gamma" else renewal.shape_for_cv(1.0 / np.sqrt(alpha))
    with np.errstate(divide="ignore"):
        beta_s = np.where(window_rate > 0, 1.0 / (renewal.unit_mean(shape) * window_rate), np.inf)
    new_starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return ParamSchedule(new_starts, shape, beta_s, "seconds", float(lengths.sum()), after_end, process)


# --------------------------------------------------------------------------------------------------------------
# Replaying a trace's own timestamps


def quiet_opening_end(timestamps_s: np.ndarray, window_s: float = 1200.0, max_rate_fraction: float = 0.5) -> float:
    """Where a trace's long low-rate opening (e.g. the night before a working day) ends, in trace seconds.

    Counting arrivals in windows of `window_s` from the first timestamp, the opening is the run of whole windows
    from the start that maximises sum(mean count - window count), i.e. the prefix that is most below the
    trace's mean rate in aggregate. It is skipped only when its own rate is below `max_rate_fraction` of the
    mean; otherwise (no quiet opening) the first timestamp is returned.
    """
    timestamps_s = np.asarray(timestamps_s, dtype=np.float64)
    if timestamps_s.size == 0:
        return 0.0
    origin = float(timestamps_s[0])
    counts = np.bincount(np.floor((timestamps_s - origin) / window_s).astype(np.int64))
    deficit = np.cumsum(counts.mean() - counts)
    num_windows = int(np.argmax(deficit)) + 1
    if deficit[num_windows - 1] <= 0 or num_windows >= counts.size:
        return origin
    opening_rate = counts[:num_windows].mean()
    return origin + num_windows * window_s if opening_rate < max_rate_fraction * counts.mean() else origin


def replay_arrivals(timestamps_s: np.ndarray, scale: float = 1.0, origin_s: float | None = None) -> np.ndarray:
    """The trace's timestamps replayed `scale` times faster: (t - origin) / scale, origin defaulting to the first
    timestamp. Order is kept and every gap is divided by `scale`."""
    if not (np.isfinite(scale) and scale > 0):
        raise BurstGPTError(f"replay scale must be positive, got {scale}")
    timestamps_s = np.asarray(timestamps_s, dtype=np.float64)
    if timestamps_s.size == 0:
        return timestamps_s
    origin = float(timestamps_s[0]) if origin_s is None else float(origin_s)
    return (timestamps_s - origin) / scale
