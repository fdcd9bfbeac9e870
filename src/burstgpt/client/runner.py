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

Connections: at most `max_connections` requests are in flight at once (HTTP/1.1: one connection each). A request
due while all are busy waits for one, and the wait counts as dispatch lag (it is the client's limit, not the
server's); the run then warns. Connection errors that are the client's own (out of file descriptors or local
ports) are failures of class `client_limit`, never `connection_refused`/`connection_reset`.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl

from burstgpt.client.exporter import ClientMetricsExporter
from burstgpt.client.openai import EndpointOptions, RequestSender, request_body
from burstgpt.client.progress import ProgressDisplay
from burstgpt.client.prompts import PromptSynthesizer
from burstgpt.client.scrape import ServerMetricsScraper
from burstgpt.client.timing import DEFAULT_MAX_CONNECTIONS
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
#: Shortest sleep of the dispatcher, seconds. uvloop's timers count whole milliseconds: a sleep under 0.5 ms
#: returns at once, so waiting for a request due in 0.3 ms would spin the loop (a core's worth of CPU taken
#: from the other senders and the server at high rates); asyncio's own loop sleeps >= 1 ms anyway. Requests
#: due meanwhile leave together at the wake-up, at most ~1 ms late, far under the client-limited threshold.
MIN_SLEEP_S = 0.001
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
    progress: bool = True  # live view on stderr: a panel on a terminal, else a plain line every 5 s
    check_server: bool = True  # probe /v1/models first; refuse to start when nothing listens
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS  # cap of open connections; None: no cap
    worker: int = 0  # index of this sender process (bench --workers), stamped into every record


@dataclass
class LiveCounters:
    """Running totals shown by the progress display."""

    scheduled: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def in_flight(self) -> int:
        return self.sent - self.succeeded - self.failed - self.cancelled


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
    connection_waits: int = 0  # requests that waited for a free connection (the --max-connections cap)
    workers: int = 1  # sender processes
    cpu_s: float | None = None  # client CPU time (user + system) of sending, all senders, seconds


@dataclass
class SendOutcome:
    """How one sender's part of a run went (its records are in its records file)."""

    model: str | None
    interrupted: bool
    stop_reason: str | None
    started_at_utc: str
    wall_duration_s: float
    warnings: list[str]
    sim_server: bool
    connection_waits: int
    cpu_s: float = 0.0  # CPU time (user + system) the sender's process spent on the run, seconds


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
        append_records: bool = False,
        exporter: ClientMetricsExporter | None = None,
    ) -> None:
        """`workload`: a workload table (`burstgpt.workload.schema`), checked here (InputError naming
        `workload_source`, row and column for a non-finite or decreasing arrival_s, ...). `headers`: extra
        HTTP headers (the API key's Authorization goes here, never into options). `records_path`: the JSONL
        file records are appended to as requests end (None: a temporary file, removed after the run);
        `append_records`: append to it (several sender processes share one file) instead of truncating it.
        `exporter`: the Prometheus exporter (`bench --prometheus-port`) the live view feeds as records end."""
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
        self._append_records = append_records
        self.exporter = exporter
        self.connection_waits = 0
        self._scraper: ServerMetricsScraper | None = None
        self._columns: dict | None = None  # `prepare()`'s dispatcher columns
        self.prepare()  # the heavy part of the set-up, now: a run then starts sending at once
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

        return run_event_loop(main())

    async def run(self, *, start_unix: float | None = None) -> BenchResult:
        """Run the whole workload; `start_unix`: the wall-clock instant of schedule time 0 (default: now)."""
        outcome = await self.send_schedule(start_unix=start_unix)
        records = read_records_jsonl(self.records_path)
        if self._temporary_records:
            self.records_path.unlink(missing_ok=True)
        records = complete_records(self.workload, records, outcome.model)
        return BenchResult(
            records=records,
            server_metrics=self._scraper.frame() if self._scraper is not None else None,
            interrupted=outcome.interrupted,
            stop_reason=outcome.stop_reason,
            started_at_utc=outcome.started_at_utc,
            wall_duration_s=outcome.wall_duration_s,
            model=outcome.model,
            warnings=outcome.warnings,
            sim_server=outcome.sim_server,
            connection_waits=outcome.connection_waits,
            cpu_s=outcome.cpu_s,
        )

    async def send_schedule(self, *, start_unix: float | None = None) -> SendOutcome:
        """Send the schedule and write the records to `records_path`, without reading them back (what each
        sender process of a multi-process run does). `start_unix`: wall-clock instant (time.time()) of schedule
        time 0, shared by all senders; None: a moment from now."""
        _raise_open_files_limit()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        wall_start = time.perf_counter()
        cpu_start = time.process_time()
        limit = self._slot_count() or 0
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
        self._scraper = None
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
            writer = RecordWriter(self.records_path, append=self._append_records)
            display = ProgressDisplay(enabled=self.options.progress, records_path=self.records_path,
                                      exporter=self.exporter, schedule_span_s=self.workload["arrival_s"].max(),
                                      closed_loop=self.options.max_concurrency is not None)
            # Objects alive now (imports, the workload's lists) never need collecting: freezing them keeps
            # the collector's full passes short, which would otherwise delay the dispatcher by tens of ms. No
            # gc.collect() first: it takes 50 ms or more, all before the first request, and the little garbage
            # frozen with them is collected after the run (unfreeze).
            columns = self.prepare()
            self._columns = None  # made again for another run: the synthesizer and sessions start afresh
            gc.freeze()
            # Time 0 of the schedule on the monotonic clock (the records' clock): the shared wall-clock start,
            # or a little ahead so the first requests are not late by the set-up below.
            if start_unix is None:
                t0 = time.monotonic() + _START_LEAD_S
            else:
                t0 = time.monotonic() + (start_unix - time.time())
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
                self._scraper = scraper
                display.server_rows = scraper.rows
                background.append(asyncio.create_task(scraper.run()))
            background.append(asyncio.create_task(self._tick(writer, display, t0)))
            try:
                await self._dispatch_and_drain(session, writer, t0, model, columns)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                writer.flush()  # the display reads the last records from the file
                display.close(self.counters, time.monotonic() - t0)
                writer.close()
                gc.unfreeze()
        if self.connection_waits:
            self.warn(f"{self.connection_waits} request(s) waited for a free connection: all "
                      f"{self.options.max_connections} allowed (--max-connections) were busy; the waits count as "
                      "dispatch lag. Raise --max-connections if the server can take more connections.")
        return SendOutcome(
            model=model,
            interrupted=self.stop.is_set(),
            stop_reason=self.stop_reason,
            started_at_utc=started_at,
            wall_duration_s=time.perf_counter() - wall_start,
            warnings=self.warnings,
            sim_server=sim_server,
            connection_waits=self.connection_waits,
            cpu_s=time.process_time() - cpu_start,
        )

    def _slot_count(self) -> int | None:
        """Requests allowed in flight at once: the smaller of max_concurrency and max_connections (None: no cap)."""
        caps = [c for c in (self.options.max_concurrency, self.options.max_connections) if c]
        return min(caps) if caps else None

    def prepare(self) -> dict:
        """The workload's columns as Python lists / arrays for the dispatcher, and the prompt synthesizer: made
        before the schedule starts (for a large workload, or the synthesizer's word pool, this takes long
        enough to make the first requests late). Made when the generator is; a second run makes them again."""
        if self._columns is not None:
            return self._columns
        wl = self.workload
        columns = {name: wl[name].to_list() for name in (
            "request_id", "input_tokens", "output_tokens", "max_output_tokens", "prompt", "model", "service",
            "session_id", "turn", "prefix_block_ids", "prefix_block_size")}
        columns["arrival_s"] = wl["arrival_s"].to_numpy()
        columns["think_time_s"] = wl["think_time_s"].fill_null(float("nan")).to_numpy()
        columns["next_turn"], columns["follows"] = session_successors(wl)
        columns["synth"] = PromptSynthesizer(self.options.prompt_seed, tokenizer=self.tokenizer)
        self._columns = columns
        return columns

    async def _dispatch_and_drain(self, session, writer: RecordWriter, t0: float, model: str | None,
                                  columns: dict) -> None:
        """Send the schedule, then wait for the requests in flight (after a stop: for the grace period)."""
        sender = RequestSender(session, self.endpoint, self.headers, t0)
        clock = time.monotonic  # the records' clock (see RequestSender): not uvloop's loop.time(), in whole ms
        synth = columns["synth"]
        arrivals = columns["arrival_s"]
        ids = columns["request_id"]
        input_tokens = columns["input_tokens"]
        output_tokens = columns["output_tokens"]
        caps = columns["max_output_tokens"]
        prompts = columns["prompt"]
        models = columns["model"]
        services = columns["service"]
        sessions = columns["session_id"]
        turns = columns["turn"]
        block_ids = columns["prefix_block_ids"]
        block_sizes = columns["prefix_block_size"]
        think_s = columns["think_time_s"]
        next_turn, follows = columns["next_turn"], columns["follows"]
        slot_count = self._slot_count()
        slots = asyncio.Semaphore(slot_count) if slot_count else None
        # Waits for a slot are counted only when the connection cap (not a chosen max_concurrency) is the limit.
        count_waits = slot_count is not None and slot_count != self.options.max_concurrency
        worker = self.options.worker
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
                worker=worker,
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
                    delay = t0 + due - clock()
                    if delay <= 0:
                        break
                    await asyncio.sleep(min(max(delay, MIN_SLEEP_S), 0.25))
                if self.stop.is_set() or (slots is not None and not await self._acquire(slots, count_waits)):
                    return  # never sent: recorded as not_sent after the run
                counters.sent += 1
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
            delay = t0 + arrivals[i] - clock()
            if delay > 0:
                # Short sleeps so a stop is noticed within 0.25 s even in a long quiet gap; never shorter than
                # MIN_SLEEP_S, so a sub-millisecond gap is not spent spinning (see MIN_SLEEP_S).
                await asyncio.sleep(min(max(delay, MIN_SLEEP_S), 0.25))
                continue
            if slots is not None and not await self._acquire(slots, count_waits):
                break
            counters.sent += 1
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

    async def _acquire(self, slots: asyncio.Semaphore, count_waits: bool = False) -> bool:
        """Take a concurrency slot; False when the run is stopped while waiting. `count_waits`: count the
        requests that found every slot taken (`connection_waits`)."""
        if not slots.locked():  # the common case: a slot is free, take it without a timeout's cost
            await slots.acquire()
            return True
        if count_waits:
            self.connection_waits += 1
        while not self.stop.is_set():
            try:
                async with asyncio.timeout(0.25):
                    await slots.acquire()
                return True
            except TimeoutError:
                continue
        return False

    async def _tick(self, writer: RecordWriter, display: ProgressDisplay, t0: float) -> None:
        while True:
            await asyncio.sleep(0.25)  # the live view's refresh: about 4 times a second
            writer.flush()
            now = time.monotonic()
            display.update(self.counters, now - t0, now)

def run_event_loop(coroutine):
    """Run a coroutine to completion on a new event loop: uvloop's when installed (it measures faster on the
    dispatcher's hot path, see benchmarks/bench_loadgen.py) unless BURSTGPT_EVENT_LOOP=asyncio."""
    factory = None
    if os.environ.get("BURSTGPT_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def complete_records(workload: pl.DataFrame, records: pl.DataFrame, model: str | None) -> pl.DataFrame:
    """The run's records, one per workload row, sorted by request_id: `records` plus a `not_sent` record for
    each row without one (never sent because the run stopped first, or a task cancelled before it ran)."""
    rest = workload.join(records.select("request_id"), on="request_id", how="anti")
    unsent = rest.select(
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
    return pl.concat([records, conform_request_records(unsent)]).sort("request_id")


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
