"""What a run's `summary.json` holds, as typed dataclasses: `RunSummary` and its sections.

`burstgpt.metrics` computes the figures (it builds `Stats` and `Accounting`); `burstgpt.report` assembles a
`RunSummary`, writes it (`to_json`) and reads it back (`from_json`) for its tables and comparisons. The JSON
layout is the nested dict of `to_json`; rates are per second, times in seconds, shares as fractions 0-1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from burstgpt.errors import InputError

SUMMARY_FORMAT = "burstgpt-run-summary/2"
#: Formats `from_json` reads (version 1 had no producer / run_id and called never-sent requests cancelled).
READABLE_FORMATS = ("burstgpt-run-summary/1", SUMMARY_FORMAT)

#: The `producer` of a run directory: which command made it.
PRODUCERS = ("bench", "simulate", "serve-sim+bench")


@dataclass(frozen=True)
class Stats:
    """Distribution summary of one metric (seconds unless named otherwise). All null when there are no values."""

    count: int
    mean: float | None
    median: float | None
    p90: float | None
    p99: float | None
    std: float | None  # sample standard deviation (ddof=1); null for fewer than 2 values
    max: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Accounting:
    """Where every request went. `sent == succeeded + failed + cancelled` and `total == sent + not_sent` must
    hold (`balanced`)."""

    total: int  # records (one per workload request)
    sent: int  # records with a send time
    succeeded: int
    failed: int
    cancelled: int  # sent, then stopped in flight (the run stopped before it ended)
    not_sent: int  # never sent (the run stopped first); status not_sent, sent_s null
    failures_by_class: dict[str, int]

    @property
    def balanced(self) -> bool:
        return self.sent == self.succeeded + self.failed + self.cancelled and self.total == self.sent + self.not_sent

    def as_dict(self) -> dict:
        identity = (f"sent {self.sent} = succeeded {self.succeeded} + failed {self.failed} + cancelled "
                    f"{self.cancelled}; total {self.total} = sent {self.sent} + not sent {self.not_sent}")
        return {**asdict(self), "balanced": self.balanced, "identity": identity}


@dataclass(frozen=True)
class Throughput:
    """P: succeeded requests and their tokens per second over the run's span (first send to last end)."""

    duration_s: float
    requests_per_s: float | None
    input_tokens_per_s: float | None
    output_tokens_per_s: float | None
    total_tokens_per_s: float | None
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Schedule:
    """How well the schedule was kept: offered and achieved send rates, dispatch lag (sent_s - scheduled_s)."""

    offered_rate_rps: float | None
    achieved_send_rate_rps: float | None
    dispatch_lag_s: Stats


@dataclass(frozen=True)
class Goodput:
    """Requests that succeeded within every SLO (seconds per metric name)."""

    slo: dict[str, float]
    good_requests: int
    goodput_requests_per_s: float | None
    fraction_of_succeeded: float | None


@dataclass(frozen=True)
class ServerSummary:
    """The server's state over the run: KV usage (fraction), peak queue lengths, counter increases."""

    samples: int
    kv_cache_usage_perc: Stats
    num_requests_running_max: float | None
    num_requests_waiting_max: float | None
    num_preemptions_increase: float | None
    prompt_tokens_increase: float | None
    generation_tokens_increase: float | None


@dataclass(frozen=True)
class RunFacts:
    """How the run went. `extra`: producer-specific facts (e.g. the simulator's step count), kept as given."""

    loop: str  # "open", or "closed" with max_concurrency
    max_concurrency: int | None
    window_s: float
    step_s: float
    interrupted: bool = False
    stop_reason: str | None = None
    started_at_utc: str | None = None
    wall_duration_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**known, **self.extra}

    @classmethod
    def from_dict(cls, data: dict) -> RunFacts:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("loop", "open")
        known.setdefault("max_concurrency", None)
        known.setdefault("window_s", 10.0)
        known.setdefault("step_s", known["window_s"])
        known["warnings"] = list(known.get("warnings") or [])
        known["interrupted"] = bool(known.get("interrupted"))
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


@dataclass(frozen=True)
class RunSummary:
    """Everything `summary.json` holds: run facts, accounting, the paper's R, L, P averages, schedule keeping,
    goodput (with SLOs), the server's state, and the run directory's files."""

    producer: str  # one of PRODUCERS ("unknown" for directories written without one)
    run_id: str | None  # equals config.json's run_id: the summary belongs to that run
    run: RunFacts
    requests: Accounting
    failure_rate: float | None  # R = failed / (succeeded + failed)
    latency_s: dict[str, Stats]  # ttft, tpot, itl, e2e, latency_per_output_token (over succeeded requests)
    throughput: Throughput
    schedule: Schedule
    goodput: Goodput | None
    server: ServerSummary | None
    files: list[str]
    format: str = SUMMARY_FORMAT

    def to_json(self) -> dict:
        """The JSON-ready nested dict written as summary.json."""
        return {
            "format": self.format,
            "producer": self.producer,
            "run_id": self.run_id,
            "run": self.run.as_dict(),
            "requests": self.requests.as_dict(),
            "failure_rate": self.failure_rate,
            "latency_s": {name: stats.as_dict() for name, stats in self.latency_s.items()},
            "throughput": asdict(self.throughput),
            "schedule": {**asdict(self.schedule), "dispatch_lag_s": self.schedule.dispatch_lag_s.as_dict()},
            **({"goodput": asdict(self.goodput)} if self.goodput is not None else {}),
            "server": asdict(self.server) if self.server is not None else None,
            "files": list(self.files),
        }

    @classmethod
    def from_json(cls, data: dict, source: str | Path = "summary.json") -> RunSummary:
        """Parse a summary.json dict; raise `InputError` naming `source` when it is not one."""
        if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
            raise InputError(source, f"not a run summary (format is not one of {', '.join(READABLE_FORMATS)})")
        try:
            requests = dict(data["requests"])
            for derived in ("balanced", "identity"):
                requests.pop(derived, None)
            server = data.get("server")
            schedule = data["schedule"]
            goodput = data.get("goodput")
            return cls(
                format=data["format"],
                producer=data.get("producer") or "unknown",
                run_id=data.get("run_id"),
                run=RunFacts.from_dict(data.get("run") or {}),
                requests=Accounting(**requests),
                failure_rate=data["failure_rate"],
                latency_s={name: Stats(**stats) for name, stats in data["latency_s"].items()},
                throughput=Throughput(**data["throughput"]),
                schedule=Schedule(offered_rate_rps=schedule["offered_rate_rps"],
                                  achieved_send_rate_rps=schedule["achieved_send_rate_rps"],
                                  dispatch_lag_s=Stats(**schedule["dispatch_lag_s"])),
                goodput=Goodput(**goodput) if goodput else None,
                server=(ServerSummary(**{**server, "kv_cache_usage_perc": Stats(**server["kv_cache_usage_perc"])})
                        if server else None),
                files=list(data.get("files") or []),
            )
        except (KeyError, TypeError) as exc:
            raise InputError(source, f"malformed run summary: {exc.__class__.__name__}: {exc}") from None
