"""Controlled timing experiments on an OpenAI-compatible server through its public API, to fit the simulator's
step-time model (`burstgpt profile`; the fit itself is `burstgpt.sim.calibrate.fit_profile`).

As Vidur profiles operators one shape at a time, each point isolates one kind of engine step:

- prefill sweep: one request at a time on an idle server, a prompt of n tokens and `max_tokens=1`, repeated:
  its time to first token is one prefill step of n tokens (one admission). The engine's own time for it is
  taken from vLLM's `vllm:request_prefill_time_seconds` histogram (its sum grows by exactly that request's
  prefill time) when the server exposes it, so HTTP and tokenisation overheads stay out of the step cost; else
  the client's TTFT is used (and the overhead lands in the per-request term).
- decode sweep: K concurrent streams of `ignore_eos` requests with prompts of L tokens: while all K decode
  (after the last one's first token, before the first one's end), each gap between two chunks of a stream is
  one decode step of K sequences whose contexts sum to K x (L + tokens so far). The point's value is the slope
  of chunk arrival time against token index over that window (the mean step time at its middle; the median
  over the streams), which a late chunk barely moves; a constant delivery delay cancels out.

Before every point the server must be idle (`vllm:num_requests_running` and `_waiting` both 0 in /metrics),
waited for up to `idle_timeout_s`. Prompt lengths are checked against the server's own count (`usage`): the
fit uses the counts the server reports, and the prompt text is corrected once per length so the next repeats
hit the target. The first repeat of every point is a warm-up and is discarded. Points stay within the engine
settings read from `vllm:cache_config_info` and `/v1/models` (KV capacity, context length), so nothing is
preempted.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np
import polars as pl

from burstgpt.client.prompts import PromptSynthesizer
from burstgpt.client.scrape import parse_engine_settings, parse_server_metrics, wait_until_idle
from burstgpt.client.sse import SSEParser, StreamError
from burstgpt.errors import BurstGPTError
from burstgpt.workload.tokenizer import Tokenizer

#: Columns of `ProfileMeasurements.prefill`: one row per measured (non-warm-up) request.
PREFILL_SCHEMA = {"point": pl.Int64(), "target_tokens": pl.Int64(), "prompt_tokens": pl.Int64(),
                  "ttft_s": pl.Float64(), "engine_prefill_s": pl.Float64()}
#: Columns of `ProfileMeasurements.decode`: one row per measured repeat of a point.
DECODE_SCHEMA = {"point": pl.Int64(), "streams": pl.Int64(), "prompt_tokens": pl.Int64(),
                 "context_tokens": pl.Float64(), "gap_s": pl.Float64(), "gaps": pl.Int64(),
                 "gap_iqr_s": pl.Float64()}


@dataclass(frozen=True)
class ProfilePlan:
    """The experiments: prompt lengths of the prefill sweep (tokens) and its repeats per length; the decode
    sweep's points (K streams, prompts of L tokens), output tokens per stream and repeats per point. Every
    point is run once more first as a warm-up."""

    prefill_lengths: tuple[int, ...]
    prefill_repeats: int
    decode_points: tuple[tuple[int, int], ...]
    decode_tokens: int
    decode_repeats: int

    @property
    def requests(self) -> int:
        """Requests the plan sends (warm-ups included)."""
        return (len(self.prefill_lengths) * (self.prefill_repeats + 1)
                + sum(k for k, _ in self.decode_points) * (self.decode_repeats + 1))


def plan_profile(settings: dict, *, quick: bool = False) -> ProfilePlan:
    """The experiments that fit within the engine `settings` (num_gpu_blocks x block_size KV tokens,
    max_model_len, max_num_seqs and max_num_batched_tokens where known): prompts no longer than the token budget
    (one prefill step) and the context, K streams whose KV fits in 90 % of the cache (no preemption)."""
    max_model_len = settings.get("max_model_len") or 4096
    budget = settings.get("max_num_batched_tokens") or 2048
    blocks, block_size = settings.get("num_gpu_blocks"), settings.get("block_size") or 16
    capacity = blocks * block_size if blocks else math.inf
    max_seqs = settings.get("max_num_seqs") or 256
    longest = min(budget, max_model_len - 8, 2048)
    lengths = (16, 128, 512, 1024, 2048) if quick else (16, 64, 128, 256, 512, 768, 1024, 1536, 2048)
    prefill = tuple(n for n in lengths if n <= longest) or (max(1, longest),)
    tokens = 24 if quick else 32
    streams = (1, 4, 8) if quick else (1, 2, 4, 8, 16)
    prompts = (32, 768) if quick else (32, 256, 1024)
    # Every (K, L) within the context and the batch limit whose KV (a block of rounding per stream) fits in 90 %
    # of the cache.
    points = tuple((k, length) for length in prompts for k in streams
                   if length + tokens < max_model_len and k <= max_seqs
                   and k * (length + tokens + block_size) <= 0.9 * capacity)
    if not points:
        raise BurstGPTError(f"the server's KV cache ({capacity} tokens) or context ({max_model_len} tokens) is "
                            "too small to profile decoding")
    return ProfilePlan(prefill, 3 if quick else 5, points, tokens, 1 if quick else 2)


@dataclass
class ProfileMeasurements:
    """What `Profiler.run` measured: `prefill` and `decode` rows (`PREFILL_SCHEMA`, `DECODE_SCHEMA`), the
    server's `model_name` and engine `settings`, whether the engine's own prefill time was available, whether
    the run was cut short (`partial`), and `notes` for the user."""

    model_name: str
    settings: dict
    prefill: pl.DataFrame
    decode: pl.DataFrame
    engine_timed: bool
    partial: bool = False
    notes: list[str] = field(default_factory=list)


class Profiler:
    """Runs a `ProfilePlan` against `base_url` (sequentially; progress through `progress(done, total, what)`).
    Results accumulate as points complete, so a stopped run still has them (`measurements()`)."""

    def __init__(self, base_url: str, *, model: str | None = None, headers: dict | None = None,
                 tokenizer: Tokenizer | None = None, quick: bool = False, idle_timeout_s: float = 60.0,
                 request_timeout_s: float = 120.0, seed: int = 0,
                 progress: Callable[[int, int, str], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.shown_url = redact_url(self.base_url)  # for messages: no credentials
        self.model = model
        self.headers = dict(headers or {})
        self.quick = quick
        self.idle_timeout_s = idle_timeout_s
        self.request_timeout_s = request_timeout_s
        self.progress = progress or (lambda done, total, what: None)
        self.prompts = PromptSynthesizer(seed, tokenizer)
        self.settings: dict = {}
        self.plan: ProfilePlan | None = None
        self.engine_timed = False
        self.engine_timed_decode = False  # decode steps timed by the server's decode-time histogram
        self.has_metrics = True
        self.notes: list[str] = []
        self._prefill_rows: list[dict] = []
        self._decode_rows: list[dict] = []
        self._request_id = 0
        # Server tokens per token of ours for the same text (another tokenizer, a BOS token), learned from the
        # server's usage as the sweep goes: a ratio, not an offset, so that long prompts stay within the context.
        self._server_per_ours = 1.0
        self._last_ours = 1
        self._done = 0

    # -- results ---------------------------------------------------------------------------------------------
    def measurements(self, *, partial: bool = False) -> ProfileMeasurements:
        notes = list(self.notes)
        if self.engine_timed_decode:
            notes.append("decode step times from the server's decode-time histogram (engine clock), not from "
                         "chunk arrivals")
        return ProfileMeasurements(
            self.model or "", dict(self.settings), pl.DataFrame(self._prefill_rows, schema=PREFILL_SCHEMA),
            pl.DataFrame(self._decode_rows, schema=DECODE_SCHEMA), self.engine_timed, partial, notes)

    # -- the run ---------------------------------------------------------------------------------------------
    async def run(self) -> ProfileMeasurements:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, read_bufsize=1 << 20) as session:
            self.session = session
            await self._read_server()
            plan = self.plan = plan_profile(self.settings, quick=self.quick)
            total = plan.requests
            for point, length in enumerate(plan.prefill_lengths):
                await self._prefill_point(point, length, plan.prefill_repeats)
                self.progress(self._done, total, f"prefill {length} tokens")
            for point, (streams, length) in enumerate(plan.decode_points):
                for repeat in range(plan.decode_repeats + 1):
                    row = await self._decode_point(point, streams, length, plan.decode_tokens)
                    if repeat > 0 and row is not None:  # the first is the warm-up
                        self._decode_rows.append(row)
                self.progress(self._done, total, f"decode {streams} x {length} tokens")
        return self.measurements()

    async def _read_server(self) -> None:
        """The model name and max_model_len from /v1/models; engine settings from /metrics."""
        try:
            async with self.session.get(self.base_url + "/v1/models", headers=self.headers) as response:
                if response.status != 200:
                    raise BurstGPTError(f"{self.shown_url}/v1/models answered HTTP {response.status}")
                listing = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise BurstGPTError(f"cannot reach {self.shown_url}: {exc.__class__.__name__}: {exc}") from None
        models = listing.get("data") if isinstance(listing, dict) else None
        if not models:
            raise BurstGPTError(f"{self.shown_url}/v1/models lists no model")
        chosen = next((m for m in models if m.get("id") == self.model), None) if self.model else models[0]
        if chosen is None:
            raise BurstGPTError(f"model '{self.model}' is not served at {self.shown_url} "
                                f"(it serves: {', '.join(str(m.get('id')) for m in models)})")
        self.model = chosen.get("id")
        text = await self._metrics_text()
        if text is None:
            self.has_metrics = False
            self.notes.append("the server has no /metrics: no idle check, engine settings unknown, and TTFT "
                              "measured by the client (HTTP overhead counted in the per-request term)")
        else:
            self.settings = parse_engine_settings(text)
        if isinstance(chosen.get("max_model_len"), int):
            self.settings.setdefault("max_model_len", chosen["max_model_len"])

    async def _metrics_text(self) -> str | None:
        try:
            async with self.session.get(self.base_url + "/metrics", headers=self.headers) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return None

    async def _idle_metrics(self) -> dict | None:
        """Wait until the server runs and queues nothing; its metrics then (None without /metrics)."""
        if not self.has_metrics:
            await asyncio.sleep(0.05)
            return None
        return await wait_until_idle(self._metrics_text, self.idle_timeout_s,
                                     busy_hint="other traffic? profile needs the server to itself")

    def _prompt(self, tokens: int) -> str:
        self._request_id += 1
        self._last_ours = max(1, round(tokens / self._server_per_ours))
        return self.prompts.prompt(self._last_ours, self._request_id)

    async def _stream(self, prompt: str, max_tokens: int, t0: float) -> tuple[list[float], int | None]:
        """Send one streamed completion; the chunk arrival times (seconds since `t0`, loop clock) of its output
        text and the server's prompt token count."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        loop = asyncio.get_running_loop()
        times: list[float] = []
        usage = None
        parser = SSEParser()
        url = self.base_url + "/v1/completions"
        try:
            async with self.session.post(url, json=body, headers=self.headers) as response:
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise BurstGPTError(f"{self.shown_url}/v1/completions answered HTTP {response.status}: {text}")
                async for data in response.content.iter_any():
                    now = loop.time() - t0
                    for event in parser.feed(data):
                        if event.usage is not None:
                            usage = event.usage
                        if event.has_token:
                            times.append(now)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, StreamError) as exc:
            raise BurstGPTError(
                f"profiling request to {self.shown_url} failed: {exc.__class__.__name__}: {exc}") from None
        self._done += 1
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return times, prompt_tokens if isinstance(prompt_tokens, int) else None

    async def _prefill_point(self, point: int, length: int, repeats: int) -> None:
        for repeat in range(repeats + 1):
            before = await self._idle_metrics()
            loop = asyncio.get_running_loop()
            sent = loop.time()
            times, prompt_tokens = await self._stream(self._prompt(length), 1, sent)
            if not times:
                raise BurstGPTError("the server streamed no token for a max_tokens=1 request")
            if prompt_tokens is not None and repeat == 0:
                self._server_per_ours = prompt_tokens / self._last_ours  # correct the next prompts on
            engine_s = await self._engine_prefill(before)
            if repeat > 0:
                self._prefill_rows.append({"point": point, "target_tokens": length,
                                           "prompt_tokens": prompt_tokens or length, "ttft_s": times[0],
                                           "engine_prefill_s": engine_s})

    async def _engine_prefill(self, before: dict | None) -> float | None:
        """The server's own prefill time of the one request since `before` (vLLM's prefill-time histogram)."""
        delta = await self._histogram_delta(before, "request_prefill_time", 1)
        if delta is not None:
            self.engine_timed = True
        return delta

    async def _histogram_delta(self, before: dict | None, name: str, count: int) -> float | None:
        """Mean of the `count` observations of histogram `name` (e.g. `request_decode_time`) made since `before`,
        once they are all in (None without the histogram, or when other observations arrived)."""
        if before is None or before.get(f"{name}_count") is None:
            return None
        deadline = time.monotonic() + 2.0  # the histogram is updated as the requests finish
        while True:
            text = await self._metrics_text()
            after = parse_server_metrics(text) if text is not None else {}
            seen = (after.get(f"{name}_count") or 0) - before[f"{name}_count"]
            if seen == count:
                return (after[f"{name}_sum"] - before[f"{name}_sum"]) / count
            if seen > count or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)

    async def _decode_point(self, point: int, streams: int, length: int, tokens: int) -> dict | None:
        before = await self._idle_metrics()
        t0 = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(self._stream(self._prompt(length), tokens, t0) for _ in range(streams)))
        chunk_times = [np.asarray(times) for times, _ in results]
        prompt_tokens = np.array([count if count is not None else length for _, count in results], np.float64)
        chunk_row = self._decode_from_chunks(point, streams, length, chunk_times, prompt_tokens)
        if chunk_row is not None and not _coalesced(chunk_times):
            return chunk_row
        # Chunks arrived in bunches (a busy machine: the server's frontend fell behind its engine and sent several
        # tokens at once), so their times say little. Fall back on the engine's own decode time (vLLM: last minus
        # first token, engine-core clock) over its tokens - 1 steps. It includes any decode step shared with
        # another stream's prefill, so it reads a little high when the K prompts took several prefill steps.
        engine_decode_s = await self._histogram_delta(before, "request_decode_time", streams)
        if engine_decode_s is None or tokens < 2:
            return chunk_row
        self.engine_timed_decode = True
        return {"point": point, "streams": streams, "prompt_tokens": int(round(prompt_tokens.mean())),
                "context_tokens": float(prompt_tokens.sum() + streams * tokens / 2.0),
                "gap_s": engine_decode_s / (tokens - 1), "gaps": streams * (tokens - 1), "gap_iqr_s": 0.0}

    def _decode_from_chunks(self, point: int, streams: int, length: int, chunk_times: list[np.ndarray],
                            prompt_tokens: np.ndarray) -> dict | None:
        """The decode point from chunk arrival times (None when too few chunks overlap)."""
        if any(times.size < 3 for times in chunk_times):
            return None
        start = max(times[0] for times in chunk_times)  # all K decode from here ...
        stop = min(times[-1] for times in chunk_times)  # ... to here
        slopes, positions, gaps = [], [], []
        for times in chunk_times:
            # Chunk g (1-based) inside the window; the gap after it is the step making token g + 1, whose
            # contexts are L + g per stream.
            inside = np.flatnonzero((times >= start) & (times <= stop))
            if inside.size < 3:
                continue
            # The slope of arrival time against token index: the mean step time over the window, at its middle.
            # A chunk delivered late (a busy loop, a timer's millisecond rounding) moves one point a little, and
            # the next gap shrinks by as much, where the median gap would be biased by the lateness' shape.
            slopes.append(np.polyfit(inside.astype(np.float64), times[inside], 1)[0])
            positions.append(inside.mean() + 1.0)
            gaps.append(np.diff(times[inside]))
        if not slopes:
            return None
        gap = np.concatenate(gaps)
        q25, q75 = np.quantile(gap, [0.25, 0.75])
        return {"point": point, "streams": streams, "prompt_tokens": int(round(prompt_tokens.mean())),
                "context_tokens": float(prompt_tokens.sum() + streams * np.median(positions)),
                "gap_s": float(np.median(slopes)), "gaps": int(gap.size), "gap_iqr_s": float(q75 - q25)}


def _coalesced(chunk_times: list[np.ndarray], tolerance_s: float = 5e-5) -> bool:
    """Whether more than a third of the streams' inter-chunk gaps are ~0 (chunks delivered in bunches)."""
    gaps = np.concatenate([np.diff(times) for times in chunk_times if times.size > 1] or [np.zeros(0)])
    return gaps.size == 0 or float(np.mean(gaps < tolerance_s)) > 1 / 3


def redact_url(url: str) -> str:
    """`url` without user:password@ and without query string (which may hold a key)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


__all__ = ["DECODE_SCHEMA", "PREFILL_SCHEMA", "ProfileMeasurements", "ProfilePlan", "Profiler", "plan_profile",
           "redact_url"]
