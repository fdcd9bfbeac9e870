"""Rate finding on the simulator or a real server: the paper's warm-up rate and the highest rate meeting an SLO.

- `find_rate_kv`: the paper picks beta so that the KV cache sits at 30-40 % before a burst (its warm-up rate):
  the rate whose mean KV usage (over the arrival span; scraped `kv_cache_usage_perc` on a server) lands in a
  band, by bracketing (doubling or halving) then bisection.
- `find_rate_slo`: the highest rate at which the share of requests succeeding within the SLO stays at or above
  a target (e.g. ttft 2 s, tpot 0.1 s, 99 %), by bracketing then bisection to a relative tolerance.

Every evaluation is a sweep point (`burstgpt.sweep.run.run_point`) at one rate with the base's seed; both
searches assume the metric grows (KV) or falls (attainment) with the rate, which holds below overload. The
search path (`RateSearch.path`) has one row per evaluation: `step`, `phase` (bracket, bisect), `verdict`,
the bracket `low_rps` / `high_rps` after it, then the point's row (`burstgpt.sweep.run.POINT_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.metrics.requests import SLO_COLUMNS
from burstgpt.sweep.run import ServerTarget, SimTarget, run_point
from burstgpt.sweep.spec import SweepPoint, SweepSpec

DEFAULT_KV_HALF_WIDTH = 0.05  # `kv=0.35` means the band 0.30-0.40, the paper's "30 % to 40 %"
MIN_RATE_RPS = 1e-3


@dataclass(frozen=True)
class KVBand:
    """Mean KV usage (fraction 0-1) to land in: [low, high]."""

    low: float
    high: float


@dataclass(frozen=True)
class SLOTarget:
    """The SLO (seconds per metric name, `burstgpt.metrics.requests.SLO_COLUMNS`) and the share of requests
    (0-1) that must meet it."""

    slo: dict[str, float]
    attainment: float = 0.99


@dataclass
class RateSearch:
    """`rate_rps`: the rate found (KV: the one in the band; SLO: the highest that met it), None when none was;
    `path`: every evaluation (see the module doc); `resolution_rps`: the bracket width when the search stopped
    (one bisection step); `interrupted`: Ctrl-C stopped it (the path holds the runs that finished)."""

    objective: str
    rate_rps: float | None
    path: pl.DataFrame
    resolution_rps: float | None
    note: str = ""
    interrupted: bool = False


def parse_find_rate(text: str) -> KVBand | SLOTarget:
    """`kv=0.35` (0.30-0.40), `kv=0.3:0.4`, or `slo=ttft:2,tpot:0.1,goodput:0.99` (goodput: the share of requests
    meeting the SLO, default 0.99)."""
    kind, sep, value = text.partition("=")
    if kind == "kv" and sep:
        try:
            parts = [float(v) for v in value.split(":")]
        except ValueError:
            raise BurstGPTError(f"--find-rate {text}: the KV usage must be a fraction, e.g. kv=0.35 or "
                                "kv=0.3:0.4") from None
        if len(parts) == 1:
            parts = [parts[0] - DEFAULT_KV_HALF_WIDTH, parts[0] + DEFAULT_KV_HALF_WIDTH]
        if len(parts) != 2 or not 0 < parts[0] < parts[1] < 1:
            raise BurstGPTError(f"--find-rate {text}: the KV band must lie inside (0, 1), low below high")
        return KVBand(*parts)
    if kind == "slo" and sep:
        slo, attainment = {}, 0.99
        for item in value.split(","):
            name, colon, bound = item.partition(":")
            try:
                number = float(bound)
            except ValueError:
                number = math.nan
            if not colon or not number > 0 or (name != "goodput" and name not in SLO_COLUMNS):
                raise BurstGPTError(f"--find-rate: bad item {item!r}; use NAME:SECONDS with NAME in "
                                    f"{', '.join(SLO_COLUMNS)}, and goodput:SHARE")
            if name == "goodput":
                if not number <= 1:
                    raise BurstGPTError(f"--find-rate: goodput is a share of requests in (0, 1], got {bound}")
                attainment = number
            else:
                slo[name] = number
        if not slo:
            raise BurstGPTError("--find-rate slo=... needs at least one bound, e.g. slo=ttft:2,goodput:0.99")
        return SLOTarget(slo, attainment)
    raise BurstGPTError(f"--find-rate {text!r}: use kv=FRACTION[:HIGH] or slo=ttft:S,tpot:S,...,goodput:SHARE")


def find_rate(spec: SweepSpec, objective: KVBand | SLOTarget, **options) -> RateSearch:
    """`find_rate_kv` or `find_rate_slo`, by the objective's kind."""
    if isinstance(objective, KVBand):
        return find_rate_kv(spec, objective, **options)
    return find_rate_slo(spec, objective, **options)


def find_rate_kv(spec: SweepSpec, band: KVBand, *, start_rate_rps: float = 1.0, max_evaluations: int = 24,
                 target: SimTarget | ServerTarget | None = None, seed: int | None = None,
                 progress: Callable[[dict], None] | None = None) -> RateSearch:
    """The rate (requests/s) whose mean KV usage lies in `band`, starting from `start_rate_rps`."""
    search = _Search(spec, target, seed, progress, metric="kv_usage_mean")

    def side(value: float | None) -> int:  # -1: too little load, 0: in the band, 1: too much
        value = value or 0.0
        return -1 if value < band.low else (1 if value > band.high else 0)

    labels = {-1: "below band", 0: "in band", 1: "above band"}
    end = _bracket_and_bisect(search, start_rate_rps, max_evaluations, side, lambda value: labels[side(value)],
                              converged=lambda low, high: False)
    if end.outcome == "found":  # the step that led there: the bracket bisected, or the doubling / halving
        if end.low > 0:
            step = (end.high if math.isfinite(end.high) else end.rate) - end.low
        else:
            step = end.high - end.rate if math.isfinite(end.high) else None  # the first rate tried was in the band
        return search.done("kv", end.rate, step)
    if end.outcome == "floor":
        return search.done("kv", None, None, f"even {MIN_RATE_RPS:g} req/s fills the KV cache above the band")
    if end.outcome == "interrupted":
        return search.done("kv", None, end.width, "interrupted", interrupted=True)
    return search.done("kv", None, end.width,
                       f"no rate in the band after {max_evaluations} evaluations (is KV usage monotone here?)")


def find_rate_slo(spec: SweepSpec, objective: SLOTarget, *, start_rate_rps: float = 1.0,
                  max_evaluations: int = 24, relative_tolerance: float = 0.02,
                  target: SimTarget | ServerTarget | None = None, seed: int | None = None,
                  progress: Callable[[dict], None] | None = None) -> RateSearch:
    """The highest rate (requests/s) at which at least `objective.attainment` of the requests succeed within the
    SLO, to `relative_tolerance` of the rate."""
    spec = dataclasses.replace(spec, slo=dict(objective.slo))
    search = _Search(spec, target, seed, progress, metric="slo_attainment")

    def meets(value: float | None) -> bool:
        return value is not None and value >= objective.attainment

    end = _bracket_and_bisect(search, start_rate_rps, max_evaluations, lambda value: -1 if meets(value) else 1,
                              lambda value: "meets" if meets(value) else "misses",
                              converged=lambda low, high: low > 0 and high - low <= relative_tolerance * high)
    if end.outcome == "converged":
        return search.done("slo", end.low, end.width)
    if end.outcome == "floor":
        return search.done("slo", None, None, f"not met even at {MIN_RATE_RPS:g} req/s")
    if end.outcome == "interrupted":
        return search.done("slo", None, end.width, "interrupted", interrupted=True)
    return search.done("slo", end.low or None, end.width, f"stopped after {max_evaluations} evaluations")


@dataclass(frozen=True)
class _End:
    """How a search ended: `outcome` found (a rate classed 0), converged, floor (halved below MIN_RATE_RPS),
    exhausted (out of evaluations) or interrupted (Ctrl-C); the last `rate` tried and the bracket [low, high]
    (0 / inf: open)."""

    outcome: str
    rate: float
    low: float
    high: float

    @property
    def width(self) -> float | None:
        return self.high - self.low if math.isfinite(self.high) else None


def _bracket_and_bisect(search: _Search, rate: float, max_evaluations: int, side: Callable[[float | None], int],
                        label: Callable[[float | None], str], converged: Callable[[float, float], bool]) -> _End:
    """From `rate`, double while the metric says too little load (`side` -1) and halve while too much (1) until
    both ends are known, then bisect; stop at a rate classed 0 or once `converged(low, high)`."""
    low, high = 0.0, math.inf
    while search.count < max_evaluations:
        phase = "bisect" if low > 0 and math.isfinite(high) else "bracket"
        try:
            value = search.evaluate(rate, phase, label, low, high)
        except KeyboardInterrupt:  # Ctrl-C: the path so far is still worth keeping
            return _End("interrupted", rate, low, high)
        verdict = side(value)
        if verdict == 0:
            return _End("found", rate, low, high)
        if verdict < 0:
            low = rate
        else:
            high = rate
        search.set_bracket(low, high)
        if math.isfinite(high) and converged(low, high):
            return _End("converged", rate, low, high)
        if math.isinf(high):
            rate = 2 * rate
        elif low == 0:
            rate = rate / 2
            if rate < MIN_RATE_RPS:
                return _End("floor", rate, low, high)
        else:
            rate = (low + high) / 2
    return _End("exhausted", rate, low, high)


class _Search:
    """Evaluations at one rate each, and the path table."""

    def __init__(self, spec: SweepSpec, target, seed: int | None, progress, *, metric: str) -> None:
        self.spec = dataclasses.replace(spec, axes=(), mode="grid")
        self.target = target
        self.seed = spec.seeds[0] if seed is None else seed
        self.progress = progress
        self.metric = metric
        self.rows: list[pl.DataFrame] = []
        self.count = 0

    def evaluate(self, rate: float, phase: str, verdict: Callable[[float | None], str], low: float,
                 high: float) -> float | None:
        row = run_point(self.spec, SweepPoint({"rate": rate}, self.seed), self.target)
        value = row[self.metric][0]
        self.count += 1
        info = {"step": self.count, "phase": phase, "verdict": verdict(value)}
        self.rows.append(pl.DataFrame([info]).hstack(row))
        self.set_bracket(low, high)  # the bracket it was chosen in, until the caller narrows it
        if self.progress is not None:
            self.progress({**info, "rate_rps": rate, self.metric: value})
        return value

    def set_bracket(self, low: float, high: float) -> None:
        """Record the bracket after the last evaluation (null for an open end), after its verdict."""
        row = self.rows[-1].drop("low_rps", "high_rps", strict=False)
        bracket = pl.DataFrame({"low_rps": [low if low > 0 else None],
                                "high_rps": [high if math.isfinite(high) else None]},
                               schema={"low_rps": pl.Float64, "high_rps": pl.Float64})
        self.rows[-1] = pl.concat([row.select("step", "phase", "verdict"), bracket,
                                   row.drop("step", "phase", "verdict")], how="horizontal")

    def done(self, objective: str, rate: float | None, resolution: float | None, note: str = "", *,
             interrupted: bool = False) -> RateSearch:
        path = pl.concat(self.rows, how="diagonal_relaxed") if self.rows else pl.DataFrame()
        return RateSearch(objective, rate, path, resolution, note, interrupted)


__all__ = ["KVBand", "RateSearch", "SLOTarget", "find_rate", "find_rate_kv", "find_rate_slo", "parse_find_rate"]
