"""The live view of `simulate`: simulated time against the schedule, requests ended, the batch and queue, KV
usage and preemptions, read from the engine a few times a second of wall time.

`SimulationProgress` is the `progress` callback of `simulate_workload` (called with the engine every 16,384
engine calls, about every 0.1-0.2 s of wall time); it reads a handful of the engine's counters and draws
only when `burstgpt.live.LiveView` says it is due, so it costs nothing measurable on a million-request run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from burstgpt.live import PLAIN_INTERVAL_S, LiveView

#: Seconds of wall time between redraws on a terminal.
REFRESH_S = 0.25


@dataclass(frozen=True)
class EngineProgress:
    """The engine's state at one instant (simulated and wall seconds, request counts, KV usage as 0-1)."""

    wall_s: float
    simulated_s: float
    schedule_span_s: float  # the last arrival
    submitted: int
    arrived: int
    ended: int  # arrived requests neither running nor waiting (finished, timed out, rejected)
    running: int
    waiting: int
    kv_cache_usage: float
    preemptions: int

    @classmethod
    def of(cls, engine, wall_s: float) -> EngineProgress:
        """Read a `burstgpt.sim.engine.ServingEngine` (between steps)."""
        submitted = engine.num_submitted
        arrived = engine.next_arrival
        return cls(
            wall_s=wall_s, simulated_s=engine.now,
            schedule_span_s=engine.arrival[submitted - 1] if submitted else 0.0,
            submitted=submitted, arrived=arrived, ended=arrived - engine.num_running - engine.num_waiting,
            running=engine.num_running, waiting=engine.num_waiting,
            kv_cache_usage=engine.kv_blocks_used / engine.config.num_gpu_blocks,
            preemptions=engine.total_preemptions,
        )

    @property
    def speed(self) -> float | None:
        """Simulated seconds per wall second."""
        return self.simulated_s / self.wall_s if self.wall_s > 0 else None


def _speed(progress: EngineProgress) -> str:
    return "" if progress.speed is None else f" ({progress.speed:,.0f}x real time)"


def render_engine_panel(progress: EngineProgress, title: str = "burstgpt simulate") -> Panel:
    """The terminal panel of one snapshot."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("simulated", f"{progress.simulated_s:,.1f} s of {progress.schedule_span_s:,.1f} s scheduled, "
                 f"{progress.wall_s:.1f} s wall{_speed(progress)}")
    grid.add_row("requests", f"ended {progress.ended:,}/{progress.submitted:,}  arrived {progress.arrived:,}")
    grid.add_row("engine", f"running {progress.running:,}  waiting {progress.waiting:,}  "
                 f"KV {progress.kv_cache_usage:.1%}  preemptions {progress.preemptions:,}")
    return Panel(grid, title=title, title_align="left", expand=False)


def engine_plain_line(progress: EngineProgress) -> str:
    """One line of plain text for logs (no terminal)."""
    return (f"[{progress.wall_s:.1f} s wall] simulated {progress.simulated_s:.1f}/{progress.schedule_span_s:.1f} s  "
            f"ended {progress.ended}/{progress.submitted}  running {progress.running}  waiting {progress.waiting}  "
            f"KV {progress.kv_cache_usage:.1%}  preemptions {progress.preemptions}")


class SimulationProgress:
    """`simulate_workload(progress=SimulationProgress())`: a live view on stderr; `close()` after the run."""

    def __init__(self, enabled: bool = True, *, plain_interval_s: float = PLAIN_INTERVAL_S,
                 console: Console | None = None) -> None:
        self.view = LiveView(enabled, refresh_s=REFRESH_S, plain_interval_s=plain_interval_s, console=console)
        self.started = time.perf_counter()
        self.last: EngineProgress | None = None

    def __call__(self, engine) -> None:
        # Reading the engine costs microseconds and calls come every 0.1-0.2 s: always keep the latest state,
        # so `close` shows the end of the run.
        self.last = progress = EngineProgress.of(engine, time.perf_counter() - self.started)
        self.view.show(lambda: render_engine_panel(progress), lambda: engine_plain_line(progress))

    def close(self) -> None:
        """Draw the last state read (the run's end: the engine reports once more when it finishes) and stop."""
        progress = self.last
        if progress is None:
            self.view.stop()
            return
        self.view.close(lambda: render_engine_panel(progress), lambda: engine_plain_line(progress))
