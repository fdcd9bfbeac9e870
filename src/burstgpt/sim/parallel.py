"""A workload simulated in parts, one process per part, with exactly the results of one engine.

An engine that is idle, with nothing in its prefix cache and no preemption so far
(`ServingEngine.carries_nothing_over`), holds nothing a later request could notice: a new engine given the
requests still to come runs them exactly as it would (the same decisions and the same float operations; only
its decode clock and counters start elsewhere, and only their differences matter). An offline run at a moderate
load is idle like that every few hundred requests. So `simulate_in_parts` picks where later parts start, where
the arrivals leave the longest expected idle time (`part_bounds`), simulates the first part here and each later
one in a process of its own, from a new engine, which notes where near its start its engine was idle and fresh
(`Part.marks`). The run before a part stops at its first idle, fresh moment from the part's start on
(`ServingEngine.run(when_fresh=...)`), usually the start itself; the part is used from that moment if it noted
it too (`Part.tail`), else the stretch from there is simulated here. The step digests are joined
(`IntervalDigest.append`, `since`), per-request columns concatenated (`join_parts`). Each part's process is a
new interpreter (`python -c`, fed and read through pipes with pickle): it neither re-runs the caller's main
module nor copies its libraries' threads.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from burstgpt.machine import available_cores
from burstgpt.sim.engine import EngineConfig, ServingEngine
from burstgpt.sim.latency import LatencyModel
from burstgpt.sim.step_log import IntervalDigest, StepLog

#: `default_workers`: parallel only for workloads this large (a part's process takes about half a second to start
#: and import) and on at most this many processes.
PARALLEL_MIN_REQUESTS = 100_000
PARALLEL_MAX_WORKERS = 4
#: Where part i of n starts, as a fraction of the requests: i / n + `_BOUND_SHIFT` (the first part starts at once,
#: the others once their process is up and sends its results back), give or take `_BOUND_WINDOW`.
_BOUND_SHIFT = 0.03
_BOUND_WINDOW = 0.01
#: A later part notes where its engine is idle carrying nothing over (where the run before it may stop) over this
#: fraction of the workload's requests from its start.
_MARK_WINDOW = 0.05


def default_workers(num_requests: int) -> int:
    """Processes for a workload of `num_requests`: one per CPU this process may use, up to
    `PARALLEL_MAX_WORKERS`, from `PARALLEL_MIN_REQUESTS` requests on; else 1."""
    if num_requests < PARALLEL_MIN_REQUESTS:
        return 1
    return max(1, min(available_cores(), PARALLEL_MAX_WORKERS))


def part_bounds(arrival: np.ndarray, parts: int, busy_until: np.ndarray) -> list[int]:
    """Where to start parts 2..`parts` of requests (arrival times in seconds, sorted; `busy_until`: when each is
    expected to have ended, `expected_ends`): per part, near its share of the requests, the request with the
    most expected idle time before it (its arrival minus the latest expected end before it), where the engine
    is most likely idle. No start where the arrivals there all tie."""
    count = len(arrival)
    window = max(int(count * _BOUND_WINDOW), min(count // 10, 100), 1)
    idle_before = np.full(count, -np.inf)
    idle_before[1:] = arrival[1:] - np.maximum.accumulate(busy_until)[:-1]
    bounds: list[int] = []
    for index in range(1, parts):
        target = int(count * (index / parts + _BOUND_SHIFT))
        lo, hi = max(target - window, (bounds[-1] if bounds else 0) + 1), min(target + window, count - 1)
        if lo > hi:
            continue
        best = lo + int(np.argmax(idle_before[lo:hi + 1]))
        if arrival[best] > arrival[best - 1]:  # (a guess: `simulate_in_parts` copes with a busy engine there)
            bounds.append(best)
    return bounds


def expected_ends(config: EngineConfig, latency: LatencyModel, arrival: np.ndarray, output: np.ndarray
                  ) -> np.ndarray:
    """When each request is expected to end (s), for `part_bounds`: its arrival plus its output tokens at the
    step time of a lone decoding request (the engine's fastest step, a rough guess that ranks well), at most
    its client's timeout (and the abort delay) after it arrived, when it certainly ends."""
    duration = output * latency.step_time(0, 1, 0, 1, 0, 0)
    if config.timeout_s is not None:
        np.minimum(duration, config.timeout_s + config.abort_delay_s, out=duration)
    return arrival + duration


@dataclass(frozen=True)
class PartTask:
    """What every part of a workload is simulated with: the engine, and the digest of its steps (server metrics
    every `metrics_interval_s` seconds; the sampled steps if `sample`)."""

    config: EngineConfig
    latency: LatencyModel
    metrics_interval_s: float
    num_gpu_blocks: int
    sample: bool


@dataclass
class Part:
    """What simulating a part produced: requests `start` to `end` - 1 of the workload (up to where its run
    `stopped`, else to the workload's end): their per-request `columns` (`Scheduler.columns`), the `digest` of its
    steps and their number (`num_steps`), its engine's clock (`now`, s) and preemptions at its end, and `marks`:
    per request index where its engine was idle carrying nothing over (only within its mark window), the
    digest's `IntervalDigest.mark` and the steps taken before it (for `tail`)."""

    start: int
    end: int
    stopped: bool
    columns: dict[str, np.ndarray]
    digest: IntervalDigest
    num_steps: int
    now: float
    preemptions: int
    marks: dict[int, tuple[tuple, int]]

    def tail(self, start: int) -> Part:
        """The part from request `start` on (one of its `marks`): exactly what a new engine started there makes."""
        if start == self.start:
            return self
        mark, steps_before = self.marks[start]
        offset = start - self.start
        return Part(start, self.end, self.stopped, {name: column[offset:] for name, column in self.columns.items()},
                    self.digest.since(mark, steps_before), self.num_steps - steps_before, self.now, self.preemptions,
                    {})


def simulate_part(task: PartTask, arrival, prompt, output, *, first: int = 0, stop_from: int | None = None,
                  mark_until: int | None = None, progress=None) -> Part:
    """Simulate requests `first`.. of a workload (per-request arrays from its request `first` to its end) on a new
    engine. Stop at the first moment, from request `stop_from` on, the engine is idle carrying nothing over;
    note such moments up to request `mark_until` (`Part.marks`). `progress(engine)` is called now and then."""
    engine = ServingEngine(task.config, task.latency)
    digest = IntervalDigest(task.metrics_interval_s, task.num_gpu_blocks, sample=task.sample)
    log = engine.steps = StepLog(task.config.block_size, consumers=(digest,), keep=False)
    engine.submit(arrival, prompt, output)
    marks: dict[int, tuple[tuple, int]] = {}

    def when_fresh(next_request: int) -> bool:
        index = first + next_request
        if stop_from is not None and index >= stop_from:
            return True
        if mark_until is not None and index <= mark_until:
            log.flush()  # the steps so far into the digest, so that it can be cut here
            marks[index] = (digest.mark(), log.size)
        return False

    stopped = engine.run(jump=True, progress=None if progress is None else lambda absorbed: progress(engine),
                         when_fresh=when_fresh)
    log.finish()
    end = engine.next_arrival if stopped else engine.num_submitted
    return Part(first, first + end, stopped, engine.columns(end), digest, log.size, engine.now,
                engine.total_preemptions, marks)


def part_worker_main() -> None:
    """A part's process: read (task, arrival, prompt, output, keyword arguments of `simulate_part`) pickled on
    stdin, write the `Part` pickled on stdout."""
    task, arrival, prompt, output, options = pickle.load(sys.stdin.buffer)
    part = simulate_part(task, arrival, prompt, output, **options)
    pickle.dump(part, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


class PartProcess:
    """A part simulated in a new interpreter (`part_worker_main`), in a session of its own so that a Ctrl-C at
    the terminal reaches only the caller, which stops it."""

    def __init__(self, task: PartTask, arrival, prompt, output, **options) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # where `burstgpt` is imported from here
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from burstgpt.sim.parallel import part_worker_main; part_worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": path},
        )
        try:
            pickle.dump((task, arrival, prompt, output, options), self.process.stdin,
                        protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.close()
        except Exception:  # noqa: BLE001 - it died already, or the task does not pickle: no part (`result`)
            self.stop()

    def result(self) -> Part | None:
        """The part, or None if its process failed."""
        try:
            part = pickle.load(self.process.stdout)
        except Exception:  # noqa: BLE001 - no part (the process died, or wrote something else): the caller redoes it
            part = None
        self.stop()
        return part if isinstance(part, Part) else None

    def stop(self) -> None:
        """End the process (if still running) and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        if not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass


@dataclass(frozen=True)
class EngineEndState:
    """The counters a `progress` callback reads from a `ServingEngine`, at the end of a run in parts (no single
    engine holds them all): every request arrived and ended."""

    config: EngineConfig
    arrival: np.ndarray
    now: float
    total_preemptions: int
    num_running: int = 0
    num_waiting: int = 0
    kv_blocks_used: int = 0

    @property
    def num_submitted(self) -> int:
        return len(self.arrival)

    @property
    def next_arrival(self) -> int:
        return len(self.arrival)


def simulate_in_parts(task: PartTask, arrival, prompt, output, bounds: list[int], progress=None) -> list[Part]:
    """Simulate requests (per-request arrays) in parts starting at 0 and at `bounds` (`part_bounds`): the first
    here (with `progress(engine)` now and then, and an `EngineEndState` at the end), each later one in a
    `PartProcess`. A run stops at the first moment it is idle carrying nothing over from the next part's start
    on; the next part is used from there if its engine was idle and fresh there too (usually at its very start),
    else that stretch is simulated here from there. Returns parts that cover the workload, in order."""
    count = len(arrival)
    starts = [0, *bounds]
    window = max(1, int(count * _MARK_WINDOW))
    children: list[PartProcess | None] = [
        PartProcess(task, arrival[start:], prompt[start:], output[start:], first=start,
                    stop_from=starts[index + 1] if index + 1 < len(starts) else None, mark_until=start + window)
        for index, start in enumerate(starts) if index]

    def watch(engine) -> None:
        if children and children[0] is not None and engine.next_arrival > bounds[0] + window:
            children[0].stop()  # the first run went on past where the second part could take over
            children[0] = None
        if progress is not None:
            progress(engine)

    try:
        parts = [simulate_part(task, arrival, prompt, output, stop_from=bounds[0], progress=watch)]
        while parts[-1].stopped:
            index, end = len(parts), parts[-1].end
            child = children[index - 1]
            part = child.result() if child is not None else None
            if part is not None and end in part.marks:
                part = part.tail(end)
            else:  # the part's engine was not idle and fresh where the run before it stopped: simulate from there
                part = simulate_part(task, arrival[end:], prompt[end:], output[end:], first=end,
                                     stop_from=starts[index + 1] if index + 1 < len(starts) else None)
            parts.append(part)
    finally:
        for child in children:
            if child is not None:
                child.stop()
    if progress is not None:
        progress(EngineEndState(task.config, arrival, parts[-1].now, sum(part.preemptions for part in parts)))
    return parts


def join_parts(parts: list[Part]) -> tuple[dict[str, np.ndarray], IntervalDigest, int]:
    """The parts of a workload (`simulate_in_parts`) as one run: per-request columns, the digest of its steps
    and their number."""
    columns = {name: np.concatenate([part.columns[name] for part in parts]) for name in parts[0].columns}
    digest, num_steps = parts[0].digest, parts[0].num_steps
    for part in parts[1:]:
        digest.append(part.digest, num_steps)
        num_steps += part.num_steps
    return columns, digest, num_steps
