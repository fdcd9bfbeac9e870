"""The simulator's engine driven in real time: steps take their simulated duration divided by `time_scale` (K
times faster, as `workload --time-scale K`) of wall clock, and every request gets its tokens pushed to an asyncio
queue at its step's end.

Sim time 0 is the driver's start; wall = start + sim / time_scale. Requests arriving while a step runs join
at the next step, exactly as in the offline engine (`burstgpt.sim.engine`). The HTTP layer refuses requests
(prompt too long, queue full) before they reach the engine. There is no server deadline (vLLM has none): after
every step, requests whose client has disconnected are aborted (their KV blocks freed), as vLLM's API server
aborts a request when its connection closes.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from burstgpt.sim.engine import CANCELLED, DONE, TIMED_OUT, ServingEngine


_DISCONNECT_CHECK_S = 0.01  # wall seconds between looks for disconnected clients



#: Distinct prompt blocks the prefix cache keeps keys for (about 100 bytes each): past it, prompts are not keyed.
MAX_INTERNED_PROMPT_BLOCKS = 5_000_000

@dataclass
class TokenEvent:
    """`kind` is `token` (one output token emitted at `sim_time_s`) or `end` (`state` is the engine state)."""

    kind: str
    sim_time_s: float
    state: int = 0


@dataclass
class LiveRequest:
    """A request inside the real-time engine."""

    engine_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    deadline_s: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    first_token_s: float = math.nan
    end_state: int = 0  # engine state once ended
    disconnected: Callable[[], bool] | None = None  # True once the client has gone away


class RealTimeEngine:
    """Runs a `ServingEngine` one step at a time against the event loop's clock, `time_scale` simulated seconds
    per wall second. `on_step(engine, ended)` is called after each step with the requests that ended in it (for
    metrics)."""

    def __init__(self, engine: ServingEngine, *, time_scale: float = 1.0, on_step=None) -> None:
        self.engine = engine
        self.time_scale = time_scale
        self.on_step = on_step
        self.prompt_keys_capped = False  # MAX_INTERNED_PROMPT_BLOCKS reached
        self.live: dict[int, LiveRequest] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._start = 0.0
        self._next_disconnect_check = 0.0

    def sim_now(self) -> float:
        return (asyncio.get_running_loop().time() - self._start) * self.time_scale

    def start(self) -> None:
        self._start = asyncio.get_running_loop().time()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for live in self.live.values():
            live.events.put_nowait(TokenEvent("end", self.engine.now, CANCELLED))

    def submit(self, prompt_tokens: int, output_tokens: int, *,
               disconnected: Callable[[], bool] | None = None, prompt_blocks: Sequence[int] = ()) -> LiveRequest:
        """Enqueue a request arriving now. `disconnected()` says whether its client has gone away (checked after
        every step: the request is then aborted). `prompt_blocks`: keys of the prompt's full KV blocks
        (`burstgpt.workload.tokenizer.block_keys`), for the engine's prefix cache."""
        engine = self.engine
        arrival = max(self.sim_now(), float(engine.arrival[engine.num_submitted - 1]) if engine.num_submitted else 0.0)
        if prompt_blocks and engine.interned_prefix_blocks >= MAX_INTERNED_PROMPT_BLOCKS:
            if not self.prompt_keys_capped:
                self.prompt_keys_capped = True
                print(f"serve-sim: {MAX_INTERNED_PROMPT_BLOCKS:,} distinct prompt blocks seen; later prompts are "
                      "no longer matched against the prefix cache (memory bound)", file=sys.stderr, flush=True)
            prompt_blocks = ()
        if prompt_blocks:
            engine_id = int(engine.submit(arrival, prompt_tokens, output_tokens, [list(prompt_blocks)],
                                          engine.config.block_size)[0])
        else:
            engine_id = int(engine.submit(arrival, prompt_tokens, output_tokens)[0])
        live = LiveRequest(engine_id, arrival, prompt_tokens, max(output_tokens, 1), float(engine.deadline[engine_id]),
                           disconnected=disconnected)
        self.live[engine_id] = live
        self._wakeup.set()
        return live

    def cancel(self, live: LiveRequest) -> None:
        """The client went away: free the request's place in the engine."""
        if self.live.pop(live.engine_id, None) is not None:
            self.engine.cancel(live.engine_id, self.sim_now())

    def _abort_disconnected(self) -> None:
        """Abort the requests whose client has disconnected (their handler gets an `end` event); looked for at
        most every `_DISCONNECT_CHECK_S` wall seconds."""
        now = asyncio.get_running_loop().time()
        if now < self._next_disconnect_check:
            return
        self._next_disconnect_check = now + _DISCONNECT_CHECK_S
        for live in [live for live in self.live.values() if live.disconnected is not None and live.disconnected()]:
            self.cancel(live)
            live.end_state = CANCELLED
            live.events.put_nowait(TokenEvent("end", self.engine.now, CANCELLED))

    async def _run(self) -> None:
        engine = self.engine
        loop = asyncio.get_running_loop()
        while True:
            if engine.is_idle():
                if engine.next_arrival >= engine.num_submitted:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                # Idle until the next arrival: the engine's clock jumps to it, as offline.
                engine.now = max(engine.now, float(engine.arrival[engine.next_arrival]))
            if engine.step():
                delay = self._start + engine.now / self.time_scale - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self._dispatch()

    def _dispatch(self) -> None:
        engine = self.engine
        t_end = engine.now
        for rid in engine.last_emitted:
            live = self.live.get(rid)
            if live is not None and t_end <= live.deadline_s:
                if math.isnan(live.first_token_s):
                    live.first_token_s = t_end
                live.events.put_nowait(TokenEvent("token", t_end))
        ended = []
        for rid in engine.last_ended:
            live = self.live.pop(rid, None)
            if live is not None:
                state = int(engine.state[rid])
                live.events.put_nowait(TokenEvent("end", float(engine.end[rid]), state))
                ended.append((live, state))
        self._abort_disconnected()
        if self.on_step is not None:
            self.on_step(engine, ended)


__all__ = ["CANCELLED", "DONE", "TIMED_OUT", "RealTimeEngine", "LiveRequest", "TokenEvent"]
