"""The live view of a load-generation run on stderr: a rich panel on a terminal, a plain line otherwise.

The runner calls `ProgressDisplay.update` about four times a second: it reads the records written since the
last call from the run's records file (`RecordsTail`; every sender process appends to it), keeps the recent
ones (`RequestOutcomes`), feeds the Prometheus exporter when there is one, takes a `LiveStatus` snapshot and
draws it. The panel shows elapsed vs scheduled time, sent / in flight / ok / failed by class, the send and
completion rates, TTFT and TPOT p50/p99 over the last `window_s` seconds, the dispatch lag with the
"client-limited" verdict of `burstgpt.client.timing` over that window, and the server's KV usage and queue
from the last /metrics scrape. Without a terminal it prints one plain line every `plain_interval_s` seconds
(CI logs); `enabled=False` (bench --quiet) silences both.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from burstgpt.client.exporter import ClientMetricsExporter, EndedRequests
from burstgpt.client.timing import dispatch_verdict
from burstgpt.live import PLAIN_INTERVAL_S, LiveView
from burstgpt.records import REQUEST_RECORD_SCHEMA, STATUS_FAILED

#: Seconds of recent requests the windowed figures are over.
DEFAULT_WINDOW_S = 10.0


class RecordsTail:
    """The records appended to a records JSONL file since the last read (whole lines only: a line still being
    written waits for the next read). Several sender processes may append to the file (O_APPEND, whole lines
    per write), so this sees every sender's records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def read_new(self) -> pl.DataFrame:
        """The whole lines appended since the last call, as a request-records frame (zero rows: none)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        if end == 0:
            return pl.DataFrame(schema=REQUEST_RECORD_SCHEMA)
        self.offset += end
        return pl.read_ndjson(data[:end], schema=REQUEST_RECORD_SCHEMA)


class RequestOutcomes:
    """Ended requests as they are read: failures by class (cumulative) and, for windowed percentiles, the
    recent requests' end and send times, TTFT, TPOT and dispatch lag (seconds, NaN where a request has none)
    in chunks, dropped once they ended before the window."""

    def __init__(self, keep_s: float = DEFAULT_WINDOW_S) -> None:
        self.keep_s = keep_s
        self.chunks: deque[np.ndarray] = deque()  # shape (5, n): end_s, sent_s, ttft, tpot, dispatch lag
        self.failed_by_class: dict[str, int] = {}

    def add(self, ended: EndedRequests) -> None:
        """Take a batch of ended requests."""
        for (status, error_class), count in ended.counts.items():
            if status == STATUS_FAILED:
                self.failed_by_class[error_class] = self.failed_by_class.get(error_class, 0) + count
        names = ("end_s", "sent_s", "ttft_s", "tpot_s", "dispatch_lag_s")
        chunk = np.stack([ended.column(name) for name in names])
        chunk = chunk[:, ~(np.isnan(chunk[0]) | np.isnan(chunk[1]))]  # ended after being sent
        if chunk.shape[1]:
            self.chunks.append(chunk)

    def window(self, now_s: float, window_s: float) -> dict[str, np.ndarray]:
        """TTFT and TPOT of the requests that ended in (now_s - window_s, now_s], and the dispatch lag of those
        sent in it (so the lag says how the client keeps the schedule now), NaNs dropped."""
        chunks = self.chunks
        while chunks and chunks[0][0].max() <= now_s - max(window_s, self.keep_s):  # sent_s <= end_s: all out
            chunks.popleft()
        if not chunks:
            return {name: np.empty(0) for name in ("ttft", "tpot", "lag")}
        end, sent, ttft, tpot, lag = np.concatenate(chunks, axis=1)
        ended, sent_recently = end > now_s - window_s, sent > now_s - window_s
        picked = {"ttft": ttft[ended], "tpot": tpot[ended], "lag": lag[sent_recently]}
        return {name: values[~np.isnan(values)] for name, values in picked.items()}


@dataclass(frozen=True)
class LiveStatus:
    """What the live view shows at one instant (times in seconds, rates in requests/s; None: not known)."""

    elapsed_s: float
    schedule_span_s: float | None  # the last scheduled arrival
    scheduled: int
    sent: int
    in_flight: int
    ok: int
    failed: int
    cancelled: int
    failed_by_class: dict[str, int] = field(default_factory=dict)
    send_rate_rps: float | None = None
    done_rate_rps: float | None = None
    window_s: float = DEFAULT_WINDOW_S
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p99_s: float | None = None
    lag_p99_s: float | None = None
    lag_max_s: float | None = None
    client_limited: bool = False
    closed_loop: bool = False  # --max-concurrency: waits for a slot are lag by design, never "client-limited"
    kv_cache_usage: float | None = None  # fraction 0-1, from the last scrape
    server_running: float | None = None
    server_waiting: float | None = None


def _quantiles(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    p50, p99 = np.quantile(values, [0.5, 0.99])
    return float(p50), float(p99)


def live_status(counters, elapsed_s: float, *, outcomes: RequestOutcomes | None = None,
                window_s: float = DEFAULT_WINDOW_S, schedule_span_s: float | None = None,
                send_rate_rps: float | None = None, done_rate_rps: float | None = None,
                server_row: dict | None = None, closed_loop: bool = False) -> LiveStatus:
    """A snapshot from the runner's live counters (`scheduled`, `sent`, `succeeded`, `failed`, `cancelled`,
    `in_flight`), the windowed outcomes and the last server-metrics row (`burstgpt.records` columns).
    Client-limited: `burstgpt.client.timing.dispatch_verdict` over the window's dispatch lags (never in a
    closed loop, where waiting for a slot is the point)."""
    recent = outcomes.window(elapsed_s, window_s) if outcomes is not None else {}
    ttft = _quantiles(recent.get("ttft", np.empty(0)))
    tpot = _quantiles(recent.get("tpot", np.empty(0)))
    lags = recent.get("lag", np.empty(0))
    verdict = dispatch_verdict(lags) if lags.size else None
    server = server_row or {}
    return LiveStatus(
        elapsed_s=elapsed_s, schedule_span_s=schedule_span_s, scheduled=counters.scheduled, sent=counters.sent,
        in_flight=counters.in_flight, ok=counters.succeeded, failed=counters.failed, cancelled=counters.cancelled,
        failed_by_class=dict(outcomes.failed_by_class) if outcomes is not None else {},
        send_rate_rps=send_rate_rps, done_rate_rps=done_rate_rps, window_s=window_s,
        ttft_p50_s=ttft[0], ttft_p99_s=ttft[1], tpot_p50_s=tpot[0], tpot_p99_s=tpot[1],
        lag_p99_s=verdict.lag_p99_s if verdict else None, lag_max_s=verdict.lag_max_s if verdict else None,
        client_limited=bool(verdict and verdict.client_limited) and not closed_loop, closed_loop=closed_loop,
        kv_cache_usage=server.get("kv_cache_usage_perc"), server_running=server.get("num_requests_running"),
        server_waiting=server.get("num_requests_waiting"),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _failures(status: LiveStatus) -> str:
    if not status.failed_by_class:
        return str(status.failed)
    classes = ", ".join(f"{name} {count}" for name, count in
                        sorted(status.failed_by_class.items(), key=lambda item: (-item[1], item[0])))
    return f"{status.failed} ({classes})"


def _elapsed(status: LiveStatus) -> str:
    if status.schedule_span_s is None:
        return f"{status.elapsed_s:.1f} s"
    return f"{status.elapsed_s:.1f} s of {status.schedule_span_s:.1f} s scheduled"


def render_panel(status: LiveStatus, title: str = "burstgpt bench") -> Panel:
    """The terminal panel of one snapshot (styled text in a panel: a rich Table measures its cells on every
    redraw, five times the cost, and the redraw runs on the dispatcher's event loop)."""
    text = Text()

    def row(label: str, *parts) -> None:
        text.append(f"{label:<14}", style="bold")
        text.append_text(Text.assemble(*parts))
        text.append("\n")

    row("elapsed", _elapsed(status))
    row("requests", f"sent {status.sent}/{status.scheduled}  in flight {status.in_flight}  ",
        (f"ok {status.ok}", "green"), "  ", (f"failed {_failures(status)}", "red" if status.failed else ""),
        (f"  cancelled {status.cancelled}", "yellow") if status.cancelled else "")
    row("rate", f"sent {_rate(status.send_rate_rps)}  done {_rate(status.done_rate_rps)}")
    row(f"last {status.window_s:g} s", f"TTFT p50 {_ms(status.ttft_p50_s)} p99 {_ms(status.ttft_p99_s)}   "
        f"TPOT p50 {_ms(status.tpot_p50_s)} p99 {_ms(status.tpot_p99_s)}")
    verdict = ""
    if status.client_limited:
        verdict = ("  CLIENT-LIMITED", "bold red")
    elif status.closed_loop:
        verdict = ("  (closed loop: includes waits for a free slot)", "dim")
    row("dispatch lag", f"p99 {_ms(status.lag_p99_s)}  max {_ms(status.lag_max_s)}", verdict)
    if status.kv_cache_usage is not None or status.server_waiting is not None:
        kv = "-" if status.kv_cache_usage is None else f"{status.kv_cache_usage:.1%}"
        row("server", f"KV {kv}  running {_count(status.server_running)}  waiting {_count(status.server_waiting)}")
    text.rstrip()
    return Panel(text, title=title, title_align="left", expand=False)


def plain_line(status: LiveStatus) -> str:
    """One line of plain text for logs (no terminal)."""
    parts = [
        f"[{_elapsed(status)}]",
        f"sent {status.sent}/{status.scheduled}",
        f"in flight {status.in_flight}",
        f"ok {status.ok}",
        f"failed {_failures(status)}",
    ]
    if status.cancelled:
        parts.append(f"cancelled {status.cancelled}")
    parts += [f"rate {_rate(status.send_rate_rps)}",
              f"TTFT p50 {_ms(status.ttft_p50_s)} p99 {_ms(status.ttft_p99_s)}",
              f"TPOT p50 {_ms(status.tpot_p50_s)} p99 {_ms(status.tpot_p99_s)}",
              f"lag p99 {_ms(status.lag_p99_s)}"]
    if status.client_limited:
        parts.append("CLIENT-LIMITED")
    if status.kv_cache_usage is not None:
        parts.append(f"KV {status.kv_cache_usage:.1%}")
    if status.server_waiting is not None:
        parts.append(f"waiting {_count(status.server_waiting)}")
    return "  ".join(parts)


class RateMeter:
    """Rates of running totals over the last `window_s` seconds, from (time, totals) samples taken at each
    update (exact however many events happened, unlike a bounded list of event times)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def update(self, now: float, *totals: int) -> tuple[float | None, ...]:
        samples = self.samples
        samples.append((now, totals))
        while len(samples) > 2 and samples[1][0] <= now - self.window_s:
            samples.popleft()
        then, before = samples[0]
        if now - then <= 0:
            return tuple(None for _ in totals)
        return tuple((total - old) / (now - then) for total, old in zip(totals, before, strict=True))


class ProgressDisplay:
    """The live view of a bench run (see the module doc), drawn through `burstgpt.live.LiveView`, and the feed
    of the Prometheus exporter. The runner calls `update` on its own timer (about 4 times a second, after
    flushing its records) and `close` once, after the last flush.

    `records_path`: the run's records JSONL file, read as it grows (`RecordsTail`) for the windowed latencies,
    the failure classes and `exporter` (fed even when the view is disabled). `server_rows`: the scraper's
    list of rows (the last one is shown). `schedule_span_s`: the last scheduled arrival. `closed_loop`: the run
    has --max-concurrency.
    """

    def __init__(self, enabled: bool = True, *, records_path: str | Path | None = None,
                 exporter: ClientMetricsExporter | None = None, window_s: float = DEFAULT_WINDOW_S,
                 schedule_span_s: float | None = None, closed_loop: bool = False,
                 plain_interval_s: float = PLAIN_INTERVAL_S, console: Console | None = None,
                 title: str = "burstgpt bench") -> None:
        self.view = LiveView(enabled, plain_interval_s=plain_interval_s, console=console)
        self.tail = RecordsTail(records_path) if records_path is not None else None
        self.exporter = exporter
        self.window_s = window_s
        self.schedule_span_s = schedule_span_s
        self.closed_loop = closed_loop
        self.title = title
        self.outcomes = RequestOutcomes(keep_s=window_s)
        self.server_rows: list[dict] | None = None
        self.rates = RateMeter()

    def feed(self) -> None:
        """Read the records written since the last call into the outcomes and the exporter."""
        if self.tail is None or not (self.view.enabled or self.exporter is not None):
            return
        records = self.tail.read_new()
        if records.height == 0:
            return
        ended = EndedRequests.from_records(records)
        if self.view.enabled:
            self.outcomes.add(ended)
        if self.exporter is not None:
            self.exporter.observe(ended)

    def status(self, counters, elapsed_s: float, rates: tuple[float | None, float | None] | None = None
               ) -> LiveStatus:
        """The snapshot; `rates` (send, done) from `self.rates`, or None for the run's averages (at the end)."""
        if rates is None:
            ended = counters.succeeded + counters.failed + counters.cancelled
            rates = (counters.sent / elapsed_s, ended / elapsed_s) if elapsed_s > 0 else (None, None)
        rows = self.server_rows
        return live_status(counters, elapsed_s, outcomes=self.outcomes, window_s=self.window_s,
                           schedule_span_s=self.schedule_span_s, send_rate_rps=rates[0], done_rate_rps=rates[1],
                           server_row=rows[-1] if rows else None, closed_loop=self.closed_loop)

    def update(self, counters, elapsed_s: float, now: float) -> None:
        """Feed the new records, sample the rates (`now`: the loop clock, seconds) and draw when due. The
        records are read every call for the exporter, else only when drawing (plain lines: every 5 s)."""
        due = self.view.due()
        if due or self.exporter is not None:
            self.feed()
        if not self.view.enabled:
            return
        rates = self.rates.update(now, counters.sent, counters.succeeded + counters.failed + counters.cancelled)
        if due:
            status = self.status(counters, elapsed_s, rates)
            self.view.show(lambda: render_panel(status, self.title), lambda: plain_line(status))

    def close(self, counters, elapsed_s: float) -> None:
        """Feed the last records; the final state: the panel left on screen, or a last plain line (rates: the
        run's averages)."""
        self.feed()
        if self.view.enabled:
            status = self.status(counters, elapsed_s)
            self.view.close(lambda: render_panel(status, self.title), lambda: plain_line(status))
