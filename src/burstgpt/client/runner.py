"""The open-loop load generator: sends every workload request at its scheduled time and records its outcome.

Schedule: request i is due at `t0 + arrival_s[i]`, an absolute deadline from one start instant `t0` (never
accumulated sleeps, so lateness does not build up); the dispatcher sleeps until the next deadline and sends
every request already due, whatever the ones in flight are doing. `max_concurrency` turns this into a
closed loop: a request then also waits for a free slot, and the wait shows as dispatch lag.

Sessions (multi-turn): a row with a `session_id` and a `turn` after an earlier row of the same session is not
sent on its own schedule: it is sent when its predecessor (the previous turn present in the workload) has
ended, plus its `think_time_s` (when null: at max(predecessor's end, its arrival_s)), whatever that
predecessor's outcome. Its record's `scheduled_s` is that due time. First turns keep the open-loop schedule,
so the timeline of sessions stays open-loop; only turns within a session wait for each other.

Prompts: a row without prompt text gets a synthetic one of exactly input_tokens tokens under
`RunOptions.tokenizer`, starting with the shared texts of its `prefix_block_ids` (`burstgpt.client.prompts`).

Start: the workload is checked (`validate_workload`: finite, sorted arrivals) and the server probed at
`/v1/models` (which also names the model when none is given); nothing listening there is a `BurstGPTError`,
before any request is scheduled.

Stopping (Ctrl-C / SIGTERM, or the `stop` event): no new request is sent (later turns waiting for their
think time included); in-flight ones get `grace_s` seconds to finish (a second signal ends the grace at
once); the rest are `cancelled`. Requests never sent are recorded as `not_sent` with a null `sent_s`. Every
workload row yields exactly one record.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl

from burstgpt.client.openai import EndpointOptions, RequestSender, request_body
from burstgpt.client.progress import ProgressDisplay
from burstgpt.client.prompts import PromptSynthesizer
from burstgpt.client.scrape import ServerMetricsScraper
from burstgpt.errors import BurstGPTError
from burstgpt.records import (
    STATUS_FAILED,
    STATUS_NOT_SENT,
    STATUS_OK,
    RecordWriter,
    RequestRecord,
    conform_request_records,
    read_records_jsonl,
)
from burstgpt.workload.schema import conform_workload, validate_workload
from burstgpt.workload.tokenizer import load_tokenizer

_START_LEAD_S = 0.05  # schedule time 0 is this long after the run's set-up starts
_PROBE_TIMEOUT_S = 10.0  # how long the start-up probe of /v1/models may take
#: `owned_by` of the models burstgpt's own simulated server (`burstgpt serve-sim`) lists.
SIM_SERVER_OWNER = "burstgpt"
NOT_SENT_MESSAGE = "not sent: run stopped first"


@dataclass(frozen=True)
class RunOptions:
    """How to run the schedule (besides the endpoint)."""

    model: str | None = None  # for rows without a model; None: ask the server's /v1/models
    max_concurrency: int | None = None  # None: open loop
    grace_s: float = 5.0  # after a stop, how long in-flight requests may still finish
    prompt_seed: int = 0  # seed of the synthetic prompts
    tokenizer: str = "builtin"  # synthetic prompts' exact length: builtin, a tokenizer.json, a cached name
    metrics_url: str | None = None  # Prometheus endpoint; None: no scraping
    scrape_interval_s: float = 1.0
    progress: bool = True  # live progress on stderr (only when it is a terminal)
    check_server: bool = True  # probe /v1/models first; refuse to start when nothing listens


@dataclass
class LiveCounters:
    """Running totals shown by the progress display."""

    scheduled: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    recent_sends: deque = field(default_factory=lambda: deque(maxlen=4096))  # loop times of recent sends

    @property
    def in_flight(self) -> int:
        return self.sent - self.succeeded - self.failed - self.cancelled

    def send_rate(self, now: float, horizon_s: float = 5.0) -> float:
        """Requests sent per second over the last `horizon_s` seconds."""
        times = self.recent_sends
        count = sum(1 for t in reversed(times) if now - t <= horizon_s) if times else 0
        return count / horizon_s


@dataclass
class BenchResult:
    """What a run produced: one record per workload row, server metrics when scraped, and how it ended."""

    records: pl.DataFrame  # REQUEST_RECORD_SCHEMA, sorted by request_id
    server_metrics: pl.DataFrame | None
    interrupted: bool
    stop_reason: str | None
    started_at_utc: str
    wall_duration_s: float
    model: str | None
    warnings: list[str] = field(default_factory=list)
    sim_server: bool = False  # the server is burstgpt's simulated one (`burstgpt serve-sim`)


class LoadGenerator:
    """One run of a workload against one endpoint: `run_sync()` from plain code, `await run()` in a loop."""

    def __init__(
        self,
        workload: pl.DataFrame,
        endpoint: EndpointOptions,
        options: RunOptions | None = None,
        *,
        headers: dict[str, str] | None = None,
        records_path: str | Path | None = None,
        warn: Callable[[str], None] = lambda message: None,
        workload_source: str = "workload",
    ) -> None:
        """`workload`: a workload table (`burstgpt.workload.schema`), checked here (InputError naming
        `workload_source`, row and column for a non-finite or decreasing arrival_s, ...). `headers`: extra
        HTTP headers (the API key's Authorization goes here, never into options). `records_path`: the JSONL
        file records are appended to as requests end (None: a temporary file, removed after the run)."""
        self.workload = validate_workload(conform_workload(workload), workload_source)
        self.endpoint = endpoint
        self.options = options or RunOptions()
        self.tokenizer = load_tokenizer(self.options.tokenizer)  # a bad spec fails here, before any request
        self.headers = dict(headers or {})
        self._temporary_records = records_path is None
        if records_path is None:
            handle, records_path = tempfile.mkstemp(prefix="burstgpt-records-", suffix=".jsonl")
            os.close(handle)
        self.records_path = Path(records_path)
        self.warnings: list[str] = []
        self._warn_sink = warn
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.stop_reason: str | None = None
        self.counters = LiveCounters(scheduled=self.workload.height)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._warn_sink(message)

    def request_stop(self, reason: str) -> None:
        """First call: stop sending and start the grace period. Second call: end the grace period now."""
        if self.stop.is_set():
            self.force.set()
        else:
            self.stop_reason = reason
            self.stop.set()

    def run_sync(self) -> BenchResult:
        """Run to completion or until SIGINT/SIGTERM, from synchronous code (owns the event loop)."""

        async def main() -> BenchResult:
            loop = asyncio.get_running_loop()
            installed = []
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self.request_stop, sig.name)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # not the main thread / platform without it
                    pass
            try:
                return await self.run()
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)

        return asyncio.run(main())

    async def run(self) -> BenchResult:
        _raise_open_files_limit()
        loop = asyncio.get_running_loop()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        wall_start = time.perf_counter()
        limit = self.options.max_concurrency or 0
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            read_bufsize=1 << 20,  # long SSE lines (big chunks, usage) must fit a line buffer
            trust_env=False,
        ) as session:
            model = self.options.model
            needs_model = model is None and self.workload["model"].null_count() > 0
            served: list[dict] | None = None
            if self.options.check_server or needs_model:
                served = await _served_models(session, self.endpoint, self.headers, required=needs_model)
            if needs_model:
                model = str(served[0]["id"])
            sim_server = any(entry.get("owned_by") == SIM_SERVER_OWNER for entry in served or [])
            writer = RecordWriter(self.records_path)
            display = ProgressDisplay(enabled=self.options.progress)
            # Objects alive now (imports, the workload's lists) never need collecting: freezing them keeps
            # the collector's full passes short, which would otherwise delay the dispatcher by tens of ms.
            gc.collect()
            gc.freeze()
            # Time 0 of the schedule, a little ahead so the first requests are not late by the set-up below.
            t0 = loop.time() + _START_LEAD_S
            scraper = None
            background: list[asyncio.Task] = []
            if self.options.metrics_url:
                scraper = ServerMetricsScraper(
                    session,
                    self.options.metrics_url,
                    t0,
                    interval_s=self.options.scrape_interval_s,
                    headers=self.headers,
                    warn=self.warn,
                )
                background.append(asyncio.create_task(scraper.run()))
            background.append(asyncio.create_task(self._tick(writer, display, t0)))
            try:
                await self._dispatch_and_drain(session, writer, t0, model)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                display.close(self.counters, loop.time() - t0)
                writer.close()
                gc.unfreeze()
        records = read_records_jsonl(self.records_path)
        if self._temporary_records:
            self.records_path.unlink(missing_ok=True)
        unsent = self._unsent_records(records, model)
        records = pl.concat([records, conform_request_records(unsent)]).sort("request_id")
        return BenchResult(
            records=records,
            server_metrics=scraper.frame() if scraper is not None else None,
            interrupted=self.stop.is_set(),
            stop_reason=self.stop_reason,
            started_at_utc=started_at,
            wall_duration_s=time.perf_counter() - wall_start,
            model=model,
            warnings=self.warnings,
            sim_server=sim_server,
        )

    async def _dispatch_and_drain(self, session, writer: RecordWriter, t0: float, model: str | None) -> None:
        """Send the schedule, then wait for the requests in flight (after a stop: for the grace period)."""
        loop = asyncio.get_running_loop()
        sender = RequestSender(session, self.endpoint, self.headers, t0)
        synth = PromptSynthesizer(self.options.prompt_seed, tokenizer=self.tokenizer)
        wl = self.workload
        arrivals = wl["arrival_s"].to_numpy()
        ids = wl["request_id"].to_list()
        input_tokens = wl["input_tokens"].to_list()
        output_tokens = wl["output_tokens"].to_list()
        caps = wl["max_output_tokens"].to_list()
        prompts = wl["prompt"].to_list()
        models = wl["model"].to_list()
        services = wl["service"].to_list()
        sessions = wl["session_id"].to_list()
        turns = wl["turn"].to_list()
        block_ids = wl["prefix_block_ids"].to_list()
        block_sizes = wl["prefix_block_size"].to_list()
        think_s = wl["think_time_s"].fill_null(float("nan")).to_numpy()
        next_turn, follows = session_successors(wl)
        slots = asyncio.Semaphore(self.options.max_concurrency) if self.options.max_concurrency else None
        tasks: set[asyncio.Task] = set()
        idle = asyncio.Event()
        counters = self.counters

        async def one(i: int, due_s: float) -> None:
            nonlocal pending_turns
            record = RequestRecord(
                request_id=ids[i],
                model=models[i] or model,
                service=services[i],
                scheduled_s=due_s,
                input_tokens=input_tokens[i],
                session_id=sessions[i],
                turn=turns[i],
            )
            try:
                prompt = prompts[i]
                if prompt is None:
                    prompt = synth.prompt(input_tokens[i], ids[i], prefix_block_ids=block_ids[i],
                                          prefix_block_size=block_sizes[i])
                body = request_body(
                    self.endpoint,
                    model=record.model,
                    prompt=prompt,
                    output_tokens=output_tokens[i],
                    max_output_tokens=caps[i],
                )
                await sender.send(record, body)
            finally:
                if record.sent_s is None:  # stopped before it was handed to the sender
                    record.status = STATUS_NOT_SENT
                    record.error_message = NOT_SENT_MESSAGE
                writer.write(record)
                if record.status == STATUS_OK:
                    counters.succeeded += 1
                elif record.status == STATUS_FAILED:
                    counters.failed += 1
                else:
                    counters.cancelled += 1
                if slots is not None:
                    slots.release()
                j = next_turn[i]
                if j >= 0 and record.sent_s is not None and not self.stop.is_set():
                    # The session's next turn: due at this end plus its think time (counted as pending
                    # before this request stops counting as in flight, so the run never looks idle between).
                    pending_turns += 1
                    task = asyncio.create_task(next_one(j, record.end_s))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if dispatch_done and counters.in_flight == 0 and pending_turns == 0:
                    idle.set()

        async def next_one(j: int, previous_end_s: float) -> None:
            """A later turn: wait for its due time (stop-aware), then send it like any other request."""
            nonlocal pending_turns
            think = think_s[j]  # NaN: no think time recorded; then never before the row's own arrival_s
            due = max(previous_end_s, float(arrivals[j])) if np.isnan(think) else previous_end_s + float(think)
            try:
                while not self.stop.is_set():
                    delay = t0 + due - loop.time()
                    if delay <= 0:
                        break
                    await asyncio.sleep(min(delay, 0.25))
                if self.stop.is_set() or (slots is not None and not await self._acquire(slots)):
                    return  # never sent: recorded as not_sent after the run
                counters.sent += 1
                counters.recent_sends.append(loop.time())
            finally:
                pending_turns -= 1
                if dispatch_done and counters.in_flight == 0 and pending_turns == 0:
                    idle.set()
            await one(j, due)

        dispatch_done = False
        pending_turns = 0  # later turns waiting for their predecessor's end or think time
        i = 0
        n = len(ids)
        while i < n and not self.stop.is_set():
            if follows[i]:  # a later turn: sent by its predecessor's completion, not on the schedule
                i += 1
                continue
            delay = t0 + arrivals[i] - loop.time()
            if delay > 0:
                # Short sleeps so a stop is noticed within 0.25 s even in a long quiet gap.
                await asyncio.sleep(min(delay, 0.25))
                continue
            if slots is not None and not await self._acquire(slots):
                break
            counters.sent += 1
            counters.recent_sends.append(loop.time())
            task = asyncio.create_task(one(i, float(arrivals[i])))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        dispatch_done = True
        if counters.in_flight == 0 and pending_turns == 0:
            idle.set()
        stop_wait = asyncio.create_task(self.stop.wait())
        idle_wait = asyncio.create_task(idle.wait())
        force_wait = asyncio.create_task(self.force.wait())
        try:
            await asyncio.wait({stop_wait, idle_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not idle.is_set():  # stopped with requests in flight: grace period, then cancel the rest
                await asyncio.wait({idle_wait, force_wait}, timeout=self.options.grace_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                for task in list(tasks):
                    task.cancel()
                await asyncio.gather(*list(tasks), return_exceptions=True)
        finally:
            for waiter in (stop_wait, idle_wait, force_wait):
                waiter.cancel()

    async def _acquire(self, slots: asyncio.Semaphore) -> bool:
        """Take a concurrency slot; False when the run is stopped while waiting."""
        while not self.stop.is_set():
            try:
                async with asyncio.timeout(0.25):
                    await slots.acquire()
                return True
            except TimeoutError:
                continue
        return False

    async def _tick(self, writer: RecordWriter, display: ProgressDisplay, t0: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            writer.flush()
            display.update(self.counters, loop.time() - t0, loop.time())

    def _unsent_records(self, records: pl.DataFrame, model: str | None) -> pl.DataFrame:
        """Records for the workload rows without one: never sent because the run stopped first (or a task
        cancelled before it ever ran). Status not_sent, sent_s null."""
        rest = self.workload.join(records.select("request_id"), on="request_id", how="anti")
        return rest.select(
            pl.col("request_id"),
            pl.col("model").fill_null(pl.lit(model, dtype=pl.Utf8)),
            pl.col("service"),
            pl.col("arrival_s").alias("scheduled_s"),
            pl.col("input_tokens"),
            pl.col("session_id"),
            pl.col("turn"),
            pl.lit(STATUS_NOT_SENT).alias("status"),
            pl.lit(NOT_SENT_MESSAGE).alias("error_message"),
            pl.lit(0, dtype=pl.Int64).alias("bytes_received"),
        )


def session_successors(workload: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a workload: the row index of the next turn of its session (-1 for none), and whether
    the row follows an earlier turn present in the workload (then it is sent by that turn's completion).
    Rows without session_id or turn are independent requests. Both arrays have shape (rows,)."""
    n = workload.height
    next_turn = np.full(n, -1, dtype=np.int64)
    follows = np.zeros(n, dtype=bool)
    if n == 0 or workload["turn"].null_count() == n:
        return next_turn, follows
    chained = (
        workload.with_row_index("row")
        .filter(pl.col("session_id").is_not_null() & pl.col("turn").is_not_null())
        .sort("session_id", "turn", "row")
        .select("row", pl.col("row").shift(-1).over("session_id").alias("next_row"))
        .drop_nulls("next_row")
    )
    rows, successors = chained["row"].to_numpy(), chained["next_row"].to_numpy()
    next_turn[rows] = successors
    follows[successors] = True
    return next_turn, follows


def _raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one: an open loop against a slow server can hold thousands
    of connections, and running out of descriptors must not pass for the server refusing connections."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 16, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


async def _served_models(
    session: aiohttp.ClientSession, endpoint: EndpointOptions, headers: dict, *, required: bool
) -> list[dict] | None:
    """The server's /v1/models entries (a list of dicts with `id`, maybe `owned_by`), probed before the run.

    Nothing listening (connection refused, unknown host) is a `BurstGPTError`: a run that cannot start must not
    be recorded as one. Any other failure (an HTTP error, a timeout, not the OpenAI JSON) gives None, or a
    `BurstGPTError` when `required` (no --model given, so the server must name one).
    """
    base = endpoint.url.split("/v1/")[0]
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            async with session.get(f"{base}/v1/models", headers=headers) as response:
                response.raise_for_status()
                data = await response.json(content_type=None)
        entries = [entry for entry in data["data"] if isinstance(entry, dict) and "id" in entry]
        if not entries:
            raise ValueError("no models listed")
        return entries
    except aiohttp.ClientConnectorError as exc:
        raise BurstGPTError(f"no server at {base}: {exc.__class__.__name__}: {exc}") from None
    except Exception as exc:  # any other failure: only fatal when the server must name the model
        if required:
            raise BurstGPTError(f"no --model given and {base}/v1/models did not name one "
                                f"({exc.__class__.__name__}: {exc}); pass --model") from None
        return None
