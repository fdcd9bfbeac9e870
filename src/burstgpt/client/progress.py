"""Live progress of a load-generation run on stderr (rich), shown only when stderr is a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.text import Text

if TYPE_CHECKING:
    from burstgpt.client.runner import LiveCounters


class ProgressDisplay:
    """One status line: elapsed time, sent / scheduled, ok, failed, cancelled, in flight and the send rate.

    Refreshed by the runner's own timer (no rich refresh thread, which would compete with the dispatcher).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.live: Live | None = None
        if enabled and self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()

    @staticmethod
    def line(counters: LiveCounters, elapsed_s: float, rate_rps: float) -> Text:
        text = Text()
        text.append(f"{elapsed_s:7.1f} s  ", style="bold")
        text.append(f"sent {counters.sent}/{counters.scheduled}  ")
        text.append(f"ok {counters.succeeded}  ", style="green")
        text.append(f"failed {counters.failed}  ", style="red" if counters.failed else "")
        if counters.cancelled:
            text.append(f"cancelled {counters.cancelled}  ", style="yellow")
        text.append(f"in flight {counters.in_flight}  rate {rate_rps:.1f} req/s")
        return text

    def update(self, counters: LiveCounters, elapsed_s: float, now: float) -> None:
        if self.live is not None:
            horizon_s = min(5.0, max(elapsed_s, 0.5))  # early in the run, the rate over what has elapsed
            self.live.update(self.line(counters, elapsed_s, counters.send_rate(now, horizon_s)), refresh=True)

    def close(self, counters: LiveCounters, elapsed_s: float) -> None:
        if self.live is not None:
            self.live.update(self.line(counters, elapsed_s, 0.0), refresh=True)
            self.live.stop()
