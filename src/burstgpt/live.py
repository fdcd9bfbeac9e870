"""A live status on stderr for long commands (`bench`, `simulate`): a rich renderable redrawn in place on a
terminal, one plain line every few seconds otherwise (logs, CI), nothing when disabled (`--quiet`).

The caller drives it (no rich refresh thread, which would compete with a load generator's dispatcher or slow
a simulation): it calls `show` as often as it likes and the view draws only when due, building what it draws
only then (`panel` and `line` are callables).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console, RenderableType
from rich.live import Live

#: Seconds between plain lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 5.0


class LiveView:
    """`show(panel, line)` draws `panel()` on a terminal at most every `refresh_s` seconds, or prints `line()`
    at most every `plain_interval_s` seconds (the first one after a full interval); `close` draws the last
    state whatever the time. Times are `time.monotonic()` seconds."""

    def __init__(self, enabled: bool = True, *, refresh_s: float = 0.0, plain_interval_s: float = PLAIN_INTERVAL_S,
                 console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.terminal = enabled and self.console.is_terminal
        self.interval_s = refresh_s if self.terminal else plain_interval_s
        self.live: Live | None = None
        self._next = time.monotonic() + (0.0 if self.terminal else plain_interval_s)
        if self.terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()

    def due(self) -> bool:
        """Whether `show` would draw now."""
        return self.enabled and time.monotonic() >= self._next

    def show(self, panel: Callable[[], RenderableType], line: Callable[[], str]) -> bool:
        """Draw if due; returns whether it drew."""
        if not self.due():
            return False
        self._draw(panel, line)
        self._next = time.monotonic() + self.interval_s
        return True

    def close(self, panel: Callable[[], RenderableType], line: Callable[[], str]) -> None:
        """Draw the final state (left on screen) and stop."""
        if not self.enabled:
            return
        self._draw(panel, line)
        self.stop()

    def stop(self) -> None:
        """Stop without drawing (what is on screen stays)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.enabled = False

    def _draw(self, panel: Callable[[], RenderableType], line: Callable[[], str]) -> None:
        if self.live is not None:
            self.live.update(panel(), refresh=True)
        else:
            print(line(), file=self.console.file or sys.stderr, flush=True)
