"""One schedule sent by several sender processes: all cores of this machine, or Ray actors on many machines.

    result = MultiSenderRun(workload, endpoint, options, workers=4, records_path=run_dir / "requests.jsonl"
                            ).run_sync()          # a BenchResult, as from LoadGenerator.run_sync()

How the work is split: requests are dealt round-robin to the senders in arrival order, one *unit* at a time,
where a unit is a request or a whole multi-turn session (its turns wait for each other, so they stay within
one sender). Each sender's share is then the schedule thinned by N: the same bursts at 1/N of the rate.

One clock: the parent waits until every sender is ready (imports done, prompts' tokenizer loaded), then picks
one wall-clock start instant (`time.time()` + a short lead) and hands it to all; each sender maps it onto its
own monotonic clock, so every record's times are seconds since the same instant. On Ray the parent first measures
each actor's clock offset (best of several round trips, as NTP does) and gives each actor the start instant on
its own clock; the offsets are reported (on one machine they are ~0).

Records: local senders append whole lines to the one `requests.jsonl` (O_APPEND, one write per flush, so lines
never interleave); Ray actors, which may run on other machines, return their records and the parent appends
them. The parent then adds a `not_sent` record for every row without one, exactly as a single sender does.

Stopping: senders ignore SIGINT/SIGTERM themselves (a terminal's Ctrl-C reaches the whole process group);
the parent forwards each signal it gets as one stop request, so the first starts every sender's grace period
and a second ends it, as in a single-process run. Server metrics are scraped once, by the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl

from burstgpt.client.exporter import ClientMetricsExporter
from burstgpt.client.openai import EndpointOptions
from burstgpt.client.progress import ProgressDisplay
from burstgpt.client.runner import (
    SIM_SERVER_OWNER,
    BenchResult,
    LiveCounters,
    LoadGenerator,
    RunOptions,
    SendOutcome,
    _served_models,
    complete_records,
    run_event_loop,
)
from burstgpt.client.scrape import ServerMetricsScraper
from burstgpt.errors import BurstGPTError
from burstgpt.machine import available_cores
from burstgpt.records import RecordWriter, read_records_jsonl
from burstgpt.workload.schema import conform_workload, validate_workload

#: Schedule time 0 is this long after the last sender reported ready (the senders open their sessions).
START_LEAD_S = 0.3
#: A peak 1-second rate above this needs more than one sender (`auto_worker_count`), requests/s.
ONE_SENDER_PEAK_RPS = 1000.0
_LIVE_FIELDS = 4  # sent, succeeded, failed, cancelled per sender in the shared live array
_CLOCK_ROUNDS = 5  # round trips per actor for its clock offset


def auto_worker_count(workload: pl.DataFrame, cores: int | None = None) -> int:
    """Senders for `--workers auto`: one per available core, but one when the workload's peak rate (requests
    in its busiest second) is one sender's easy work (<= ONE_SENDER_PEAK_RPS): a single process then keeps
    the schedule and starts faster."""
    cores = cores or available_cores()
    arrivals = workload["arrival_s"].to_numpy()
    if cores <= 1 or arrivals.size == 0:
        return 1
    peak = int(np.bincount(np.floor(arrivals - arrivals.min()).astype(np.int64)).max())
    return cores if peak > ONE_SENDER_PEAK_RPS else 1


def share_of(total: int | None, workers: int, worker: int) -> int | None:
    """Sender `worker`'s part of a cap (connections, concurrency) over `workers` senders: the parts add up to
    `total` (the first ones get the remainder), at least 1 each; None (no cap) stays None."""
    if total is None:
        return None
    return max(1, total // workers + (1 if worker < total % workers else 0))


def deal_workload(workload: pl.DataFrame, workers: int) -> np.ndarray:
    """The sender (0..workers-1) of each row: units (a request, or a whole session of turns) dealt round-robin
    in order of their first row. Shape (rows,), int64."""
    n = workload.height
    if workers <= 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    chained = pl.col("session_id").is_not_null() & pl.col("turn").is_not_null()
    rows = workload.select(
        pl.when(chained).then(pl.lit("s:") + pl.col("session_id"))
        .otherwise(pl.lit("r:") + pl.int_range(pl.len()).cast(pl.Utf8)).alias("unit")
    ).with_row_index("row")
    # Units in order of their first row, numbered 0, 1, 2, ...; each row takes its unit's number mod workers.
    order = rows.group_by("unit", maintain_order=True).agg(pl.col("row").first()).select("unit").with_row_index("rank")
    ranks = rows.join(order, on="unit", how="left").sort("row")["rank"].to_numpy()
    return ranks.astype(np.int64) % workers


@dataclass
class SenderFacts:
    """One sender's part of a multi-sender run: where it ran and how its part went."""

    worker: int
    requests: int  # rows dealt to it
    node: str | None = None  # Ray: the node's IP; local: None
    clock_offset_s: float | None = None  # Ray: its clock minus the parent's (seconds), best-of-N estimate
    clock_rtt_s: float | None = None  # the round trip of that estimate (its uncertainty is half of it)
    outcome: dict = field(default_factory=dict)  # SendOutcome as a dict


class MultiSenderRun:
    """A run of one workload by `workers` sender processes (local), or Ray actors when `ray_address` is set
    ("local": an in-process Ray cluster; "auto": the running cluster; else a cluster address)."""

    def __init__(
        self,
        workload: pl.DataFrame,
        endpoint: EndpointOptions,
        options: RunOptions | None = None,
        *,
        workers: int | None,
        records_path: str | Path,
        headers: dict[str, str] | None = None,
        warn: Callable[[str], None] = lambda message: None,
        workload_source: str = "workload",
        ray_address: str | None = None,
        exporter: ClientMetricsExporter | None = None,
    ) -> None:
        """`exporter`: the Prometheus exporter, fed in this (the parent) process from the records file the
        senders append to (Ray actors' records: when they return them, at the end)."""
        if workers is not None and workers < 1:
            raise BurstGPTError("--workers must be >= 1")
        self.workload = validate_workload(conform_workload(workload), workload_source)
        self.endpoint = endpoint
        self.options = options or RunOptions()
        self.workers = workers
        self.records_path = Path(records_path)
        self.headers = dict(headers or {})
        self.workload_source = workload_source
        self.ray_address = ray_address
        self.exporter = exporter
        self.warnings: list[str] = []
        self._warn_sink = warn
        self.assignment = deal_workload(self.workload, workers) if workers else None  # None: dealt at the start
        self.facts: list[SenderFacts] = []
        self.counters = LiveCounters(scheduled=self.workload.height)
        self.stop_reason: str | None = None
        self.stops = 0
        self._group = None  # the running senders, which signals are forwarded to
        self._server_metrics: pl.DataFrame | None = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._warn_sink(message)

    def run_sync(self) -> BenchResult:
        """Run to completion or until SIGINT/SIGTERM (forwarded to the senders)."""
        return run_event_loop(self.run())

    async def run(self) -> BenchResult:
        loop = asyncio.get_running_loop()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        wall_start = time.perf_counter()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):  # first thing: a signal during the start-up is a stop too
            try:
                loop.add_signal_handler(sig, self._on_signal, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            return await self._run(started_at, wall_start)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _run(self, started_at: str, wall_start: float) -> BenchResult:
        model, sim_server = await self._probe()
        group = (_RaySenders(self.ray_address) if self.ray_address is not None else _LocalSenders())
        try:
            if self.workers is None:  # one per core: of the Ray cluster, or of this machine
                self.workers = group.connect() if self.ray_address is not None else available_cores()
                self.assignment = deal_workload(self.workload, self.workers)
            RecordWriter(self.records_path).close()  # a fresh, empty records file the senders append to
            shares = [self.workload.filter(pl.Series(self.assignment == k)) for k in range(self.workers)]
            self.facts = [SenderFacts(worker=k, requests=share.height) for k, share in enumerate(shares)]
            sender_options = [
                replace(self.options, model=model, check_server=False, progress=False, metrics_url=None, worker=k,
                        max_connections=share_of(self.options.max_connections, self.workers, k),
                        max_concurrency=share_of(self.options.max_concurrency, self.workers, k))
                for k in range(self.workers)
            ]
            outcomes: list[SendOutcome] = []
            parent_cpu_s = 0.0
            await group.start(shares, self.endpoint, sender_options, self.headers, self.records_path,
                              self.workload_source)
            await group.measure_clocks(self.facts)
            if not self.stops:  # stopped during the start-up: nothing is sent, every request is not_sent
                start_unix = time.time() + START_LEAD_S
                cpu_start = time.process_time()  # the parent's share of the client's CPU: scraping, live view
                self._group = group  # from now on, signals are forwarded to the senders
                outcomes = await self._supervise(group, start_unix)
                parent_cpu_s = time.process_time() - cpu_start
        finally:
            self._group = None
            await group.close()
        records = read_records_jsonl(self.records_path)
        records = complete_records(self.workload, records, model)
        # Never-sent rows are stamped with the sender they were dealt to (sent ones carry it already).
        dealt = pl.DataFrame({"request_id": self.workload["request_id"], "_dealt": self.assignment})
        records = (records.join(dealt, on="request_id", how="left")
                   .with_columns(pl.col("worker").fill_null(pl.col("_dealt"))).drop("_dealt"))
        warnings = list(self.warnings)
        for outcome in outcomes:
            for message in outcome.warnings:
                if message not in warnings:
                    warnings.append(message)
        return BenchResult(
            records=records,
            server_metrics=self._server_metrics,
            interrupted=self.stops > 0 or any(o.interrupted for o in outcomes),
            stop_reason=self.stop_reason or next((o.stop_reason for o in outcomes if o.stop_reason), None),
            started_at_utc=started_at,
            wall_duration_s=time.perf_counter() - wall_start,
            model=model,
            warnings=warnings,
            sim_server=sim_server,
            connection_waits=sum(o.connection_waits for o in outcomes),
            workers=self.workers,
            cpu_s=parent_cpu_s + sum(o.cpu_s for o in outcomes),
        )

    async def _probe(self) -> tuple[str | None, bool]:
        """The model to use and whether the server is burstgpt serve-sim, from /v1/models (as a single sender
        would check it, before anything is started)."""
        model = self.options.model
        needs_model = model is None and self.workload["model"].null_count() > 0
        if not (self.options.check_server or needs_model):
            return model, False
        async with aiohttp.ClientSession(trust_env=False) as session:
            served = await _served_models(session, self.endpoint, self.headers, required=needs_model)
        if needs_model:
            model = str(served[0]["id"])
        return model, any(entry.get("owned_by") == SIM_SERVER_OWNER for entry in served or [])

    def _on_signal(self, name: str) -> None:
        """A signal: forwarded to the senders once they run (before, it stops the run from starting)."""
        self.stops += 1
        if self.stop_reason is None:
            self.stop_reason = name
        if self._group is not None:
            self._group.request_stop(name)

    async def _supervise(self, group, start_unix: float) -> list[SendOutcome]:
        """Start the senders at `start_unix`, scrape the server and show progress until all have finished."""
        loop = asyncio.get_running_loop()
        t0 = loop.time() + (start_unix - time.time())  # the scraper and the live view run on the loop's clock
        display = ProgressDisplay(enabled=self.options.progress, records_path=self.records_path,
                                  exporter=self.exporter, schedule_span_s=self.workload["arrival_s"].max(),
                                  closed_loop=self.options.max_concurrency is not None)
        background: list[asyncio.Task] = []
        session = aiohttp.ClientSession(trust_env=False) if self.options.metrics_url else None
        scraper = None
        try:
            if session is not None:
                scraper = ServerMetricsScraper(session, self.options.metrics_url, t0,
                                               interval_s=self.options.scrape_interval_s, headers=self.headers,
                                               warn=self.warn)
                display.server_rows = scraper.rows
                background.append(asyncio.create_task(scraper.run()))
            runs = asyncio.ensure_future(group.run(start_unix, self.facts))
            while not runs.done():
                await asyncio.wait({runs}, timeout=0.25)
                self._update_counters(await group.live())
                display.update(self.counters, loop.time() - t0, loop.time())
            outcomes = [self._failed_sender(k, outcome) if isinstance(outcome, str) else outcome
                        for k, outcome in enumerate(runs.result())]
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if session is not None:
                await session.close()
            display.close(self.counters, loop.time() - t0)
        if scraper is not None:
            self._server_metrics = scraper.frame()
        for facts, outcome in zip(self.facts, outcomes, strict=True):
            facts.outcome = asdict(outcome)
        return outcomes

    def _failed_sender(self, worker: int, error: str) -> SendOutcome:
        """The outcome of a sender that died or failed mid-run: a loud warning; the run goes on and is
        accounted (its rows without a record become not_sent)."""
        self.warn(f"sender {worker} failed during the run ({error.strip().splitlines()[0]}): its requests "
                  "without a record are counted as not sent")
        return SendOutcome(model=None, interrupted=True, stop_reason=f"sender {worker} failed", started_at_utc="",
                           wall_duration_s=0.0, warnings=[], sim_server=False, connection_waits=0)

    def _update_counters(self, live: np.ndarray) -> None:
        totals = live.reshape(-1, _LIVE_FIELDS).sum(axis=0)
        c = self.counters
        c.sent, c.succeeded, c.failed, c.cancelled = (int(v) for v in totals)


# ----------------------------------------------------------------------------------------------------------
# Local sender processes (multiprocessing, spawn)


class _LocalSenders:
    """Sender processes on this machine, driven through one pipe each; live counters in shared memory."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads and loops
        self.processes: list = []
        self.pipes: list = []
        self.live_array = None

    async def start(self, shares, endpoint, options, headers, records_path, workload_source) -> None:
        self.live_array = self.context.Array("q", len(shares) * _LIVE_FIELDS, lock=False)
        for k, share in enumerate(shares):
            parent_end, child_end = self.context.Pipe()
            process = self.context.Process(
                target=_sender_process, name=f"burstgpt-sender-{k}", daemon=True,
                args=(child_end, share, endpoint, options[k], headers, str(records_path), workload_source,
                      self.live_array, k))
            process.start()
            child_end.close()
            self.processes.append(process)
            self.pipes.append(parent_end)
        for k in range(len(shares)):  # every sender ready (or failed) before the start instant is chosen
            kind, payload = await self._receive(k)
            if kind != "ready":
                raise BurstGPTError(f"sender {k} failed to start: {payload}")

    async def measure_clocks(self, facts: list[SenderFacts]) -> None:
        """One machine, one clock: nothing to measure."""

    async def run(self, start_unix: float, facts: list[SenderFacts]) -> list[SendOutcome | str]:
        """Start all senders at `start_unix`; their outcomes, or the error of a sender that failed."""
        for pipe in self.pipes:
            pipe.send(("start", start_unix))
        results = await asyncio.gather(*(self._receive(k) for k in range(len(self.pipes))))
        return [SendOutcome(**payload) if kind == "done" else str(payload) for kind, payload in results]

    async def live(self) -> np.ndarray:
        return np.frombuffer(self.live_array, dtype=np.int64).copy()

    def request_stop(self, reason: str) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop", reason))
            except (BrokenPipeError, OSError):  # that sender has already ended
                pass

    async def _receive(self, k: int) -> tuple[str, object]:
        """The next message from sender k; ("died", ...) when its process ends without one."""
        pipe = self.pipes[k]
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(pipe.fileno(), readable)
        try:
            await ready
        finally:
            loop.remove_reader(pipe.fileno())
        try:
            return pipe.recv()
        except (EOFError, OSError):
            process = self.processes[k]
            process.join(5)
            return "died", f"sender process exited with status {process.exitcode}"

    async def close(self) -> None:
        for pipe in self.pipes:  # a sender still waiting for its start sees the pipe close and exits
            pipe.close()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)


def _sender_process(pipe, share: pl.DataFrame, endpoint: EndpointOptions, options: RunOptions, headers: dict,
                    records_path: str, workload_source: str, live, worker: int) -> None:
    """Entry point of a local sender process: get ready, wait for the start instant, send, report."""
    # Signals go to the parent, which forwards them as stop requests: a terminal's Ctrl-C reaching this
    # process too would otherwise count twice (and end the grace period at once).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        generator = LoadGenerator(share, endpoint, options, headers=headers, records_path=records_path,
                                  workload_source=workload_source, append_records=True)
    except Exception as exc:  # reported to the parent, which stops the run with it
        with contextlib.suppress(BrokenPipeError, OSError):
            pipe.send(("error", f"{exc.__class__.__name__}: {exc}"))
        return
    try:
        pipe.send(("ready", None))
        kind, start_unix = pipe.recv()
    except (EOFError, OSError):  # the parent gave up before the start (another sender failed)
        return
    if kind != "start":  # stopped before its start: nothing sent (its rows become not_sent)
        with contextlib.suppress(BrokenPipeError, OSError):
            pipe.send(("done", asdict(SendOutcome(
                model=options.model, interrupted=True, stop_reason=str(start_unix), started_at_utc="",
                wall_duration_s=0.0, warnings=[], sim_server=False, connection_waits=0))))
        return
    counters = np.frombuffer(live, dtype=np.int64)[worker * _LIVE_FIELDS:(worker + 1) * _LIVE_FIELDS]

    async def main() -> SendOutcome:
        loop = asyncio.get_running_loop()

        def on_message() -> None:
            try:
                message = pipe.recv()
            except (EOFError, OSError):  # the parent is gone: stop as on a signal
                loop.remove_reader(pipe.fileno())
                message = ("stop", "parent exited")
            if message[0] == "stop":
                generator.request_stop(message[1])

        loop.add_reader(pipe.fileno(), on_message)

        async def publish() -> None:  # the parent's live view reads these
            c = generator.counters
            while True:
                counters[:] = (c.sent, c.succeeded, c.failed, c.cancelled)
                await asyncio.sleep(0.25)

        publisher = asyncio.create_task(publish())
        try:
            return await generator.send_schedule(start_unix=start_unix)
        finally:
            publisher.cancel()
            c = generator.counters
            counters[:] = (c.sent, c.succeeded, c.failed, c.cancelled)
            loop.remove_reader(pipe.fileno())

    try:
        message = ("done", asdict(run_event_loop(main())))
    except Exception as exc:
        message = ("error", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=3)}")
    try:
        pipe.send(message)
    except (BrokenPipeError, OSError):  # the parent is gone: its records are in the file all the same
        pass


# ----------------------------------------------------------------------------------------------------------
# Ray actors


class _RaySenders:
    """Sender actors on a Ray cluster ("local": start one in this process; "auto" or an address: join one)."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise BurstGPTError("--ray-address needs Ray: pip install 'burstgpt[ray]'") from None
        self.ray = ray
        self.address = address
        self.actors: list = []
        self.started_ray = False
        self.records_path: Path | None = None

    def connect(self) -> int:
        """Join (or start, for "local") the Ray cluster; its CPU count."""
        ray = self.ray
        if not ray.is_initialized():
            address = None if self.address == "local" else self.address
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise BurstGPTError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
            self.started_ray = True
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    async def start(self, shares, endpoint, options, headers, records_path, workload_source) -> None:
        ray = self.ray
        self.records_path = Path(records_path)
        cpus = float(self.connect())
        per_actor = min(1.0, cpus / len(shares))  # several actors per core when asked for more than the cores
        actor_class = ray.remote(num_cpus=per_actor, scheduling_strategy="SPREAD")(RaySender)
        self.actors = [actor_class.remote(share, endpoint, options[k], headers, workload_source)
                       for k, share in enumerate(shares)]
        try:
            await asyncio.gather(*(actor.ready.remote() for actor in self.actors))
        except Exception as exc:  # a RayTaskError wrapping the sender's own error
            raise BurstGPTError(f"a Ray sender failed to start: {_ray_cause(exc)}") from None

    async def measure_clocks(self, facts: list[SenderFacts]) -> None:
        """Each actor's clock offset from this process's (best of several round trips) and its node."""
        for fact, actor in zip(facts, self.actors, strict=True):
            best = None
            for _ in range(_CLOCK_ROUNDS):
                before = time.time()
                node, remote = await actor.clock.remote()
                after = time.time()
                if best is None or after - before < best[0]:
                    best = (after - before, remote - (before + after) / 2, node)
            fact.clock_rtt_s, fact.clock_offset_s, fact.node = best

    async def run(self, start_unix: float, facts: list[SenderFacts]) -> list[SendOutcome]:
        try:
            results = await asyncio.gather(*(actor.run.remote(start_unix + (fact.clock_offset_s or 0.0))
                                             for actor, fact in zip(self.actors, facts, strict=True)))
        except Exception as exc:
            raise BurstGPTError(f"a Ray sender failed: {_ray_cause(exc)}") from None
        with self.records_path.open("ab") as out:  # the actors' records, into the run's one records file
            for _, records in results:
                if records.height:
                    records.write_ndjson(out)
        return [SendOutcome(**outcome) for outcome, _ in results]

    async def live(self) -> np.ndarray:
        rows = await asyncio.gather(*(actor.live.remote() for actor in self.actors))
        return np.asarray(rows, dtype=np.int64).reshape(-1)

    def request_stop(self, reason: str) -> None:
        for actor in self.actors:
            actor.stop.remote(reason)

    async def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()


def _ray_cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return f"{cause.__class__.__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


class RaySender:
    """A sender as a Ray actor (async: `stop` and `live` run while `run` is sending). Its records go to a
    temporary file on its own node and come back to the parent with its outcome."""

    def __init__(self, share: pl.DataFrame, endpoint: EndpointOptions, options: RunOptions, headers: dict,
                 workload_source: str) -> None:
        self.generator = LoadGenerator(share, endpoint, options, headers=headers, records_path=None,
                                       workload_source=workload_source)

    async def ready(self) -> bool:
        return True

    async def clock(self) -> tuple[str, float]:
        import ray

        return ray.util.get_node_ip_address(), time.time()

    async def run(self, start_unix: float) -> tuple[dict, pl.DataFrame]:
        generator = self.generator
        try:
            outcome = await generator.send_schedule(start_unix=start_unix)
            records = read_records_jsonl(generator.records_path)
        finally:
            generator.records_path.unlink(missing_ok=True)
        return asdict(outcome), records

    async def stop(self, reason: str) -> None:
        self.generator.request_stop(reason)

    async def live(self) -> tuple[int, int, int, int]:
        c = self.generator.counters
        return c.sent, c.succeeded, c.failed, c.cancelled
