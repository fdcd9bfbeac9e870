"""`serve-sim`: an OpenAI-compatible HTTP server whose "GPU" is the simulator's engine, run in real time.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (streaming as server-sent events with a token at
each simulated step's end, and a final usage chunk when `stream_options.include_usage`; or one JSON response),
`GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text, vLLM's metric names and labels).

Tokens are counted by `count_tokens`: every run of word characters and every other non-space character is one
token (a deterministic stand-in for a real tokenizer). Generated text is one word per token, so re-counting the
output gives the completion tokens. Output length: `max_tokens` exactly when `ignore_eos` is true; otherwise a
draw from the output-length model, capped by `max_tokens` (default 16 for completions, the room left in the
context for chat). A `max_tokens` beyond the context is capped to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import prometheus_client
from aiohttp import web

from burstgpt.server.realtime import DONE, TIMED_OUT, LiveRequest, RealTimeEngine
from burstgpt.sim.engine import ServingEngine
from burstgpt.sim.output_lengths import OutputLengthModel, parse_output_length_model
from burstgpt.sim.simulate import EngineSetup

_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
_WORDS = ("the", "burst", "of", "tokens", "arrives", "and", "cache", "fills", "while", "requests", "wait", "then")
# vLLM's buckets (vllm/v1/metrics/loggers.py).
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)


def count_tokens(text: str) -> int:
    """Deterministic token count: word-character runs and single punctuation characters."""
    return len(_TOKEN_PATTERN.findall(text))


def output_text(start: int, count: int) -> str:
    """`count` generated tokens starting at position `start`: one space-prefixed word each."""
    return "".join(" " + _WORDS[i % len(_WORDS)] for i in range(start, start + count))


@dataclass(frozen=True)
class FaultOptions:
    """Injected faults, each drawn per request from a generator seeded with `seed`. Rates are probabilities."""

    error_rate: float = 0.0  # answer 500 at once
    drop_rate: float = 0.0  # drop the connection part-way through the answer
    stall_rate: float = 0.0  # pause the stream for stall_s once, part-way
    stall_s: float = 5.0
    slow_first_token_rate: float = 0.0  # hold the first token back by slow_first_token_s
    slow_first_token_s: float = 2.0
    seed: int = 0


@dataclass(frozen=True)
class ServerOptions:
    setup: EngineSetup
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    time_scale: float = 1.0
    output_lengths: OutputLengthModel = field(default_factory=lambda: parse_output_length_model("lognormal:250,0.8"))
    seed: int = 0
    api_key: str | None = None
    max_queue: int | None = None
    faults: FaultOptions = field(default_factory=FaultOptions)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.setup.model_name


class RequestError(Exception):
    """An OpenAI-style error answer: HTTP status, message, error type and offending parameter."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param


def error_body(status: int, message: str, error_type: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def error_response(exc: RequestError) -> web.Response:
    return web.json_response(error_body(exc.status, exc.message, exc.error_type, exc.param), status=exc.status)


class _Metrics:
    """vLLM's Prometheus metrics, labelled model_name and engine like vLLM's v1 engine (engine "0")."""

    def __init__(self, model_name: str, num_gpu_blocks: int) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        labels = ["model_name", "engine"]
        values = (model_name, "0")
        reg = self.registry

        def gauge(name, doc):
            return prometheus_client.Gauge(name, doc, labels, registry=reg).labels(*values)

        def counter(name, doc):
            return prometheus_client.Counter(name, doc, labels, registry=reg).labels(*values)

        def histogram(name, doc, buckets):
            return prometheus_client.Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter("vllm:request_success", "Count of successfully processed requests.")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              _TTFT_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", _TPOT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             _E2E_BUCKETS)
        self.num_gpu_blocks = num_gpu_blocks
        self._preemptions_seen = 0

    def on_step(self, engine: ServingEngine, ended: list[tuple[LiveRequest, int]], time_scale: float) -> None:
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.kv_usage.set(engine.kv_blocks_used / self.num_gpu_blocks)
        self.preemptions.inc(engine.total_preemptions - self._preemptions_seen)
        self._preemptions_seen = engine.total_preemptions
        if engine.last_emitted:
            self.generation_tokens.inc(len(engine.last_emitted))
        if engine.last_first_tokens:
            self.prompt_tokens.inc(sum(engine.prompt[rid] for rid in engine.last_first_tokens))
        for live, state in ended:
            if state != DONE:
                continue
            rid = live.engine_id
            first, end = engine.first_token[rid], engine.end[rid]
            self.success.inc()
            self.ttft.observe((first - live.arrival_s) * time_scale)
            self.e2e.observe((end - live.arrival_s) * time_scale)
            generated = engine.generated[rid]
            if generated > 1:
                self.tpot.observe((end - first) * time_scale / (generated - 1))


@dataclass
class _Parsed:
    """A validated completion request."""

    chat: bool
    prompt_tokens: int
    max_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    model: str


class SimServer:
    """The aiohttp application around one real-time engine."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        setup = options.setup
        self.config = setup.config
        # The queue limit is applied at the door (429), so the engine itself never rejects.
        self.engine = ServingEngine(dataclasses.replace(setup.config, max_queue=None), setup.latency,
                                    record_steps=False, track_events=True)
        self.metrics = _Metrics(options.model_name, setup.config.num_gpu_blocks)
        self.realtime = RealTimeEngine(
            self.engine, time_scale=options.time_scale,
            on_step=lambda engine, ended: self.metrics.on_step(engine, ended, options.time_scale),
        )
        self.length_rng = np.random.default_rng(options.seed)
        self.fault_rng = np.random.default_rng(options.faults.seed)
        self.created = int(time.time())
        self.app = web.Application(middlewares=[self._errors_middleware])
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics_endpoint)
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)

    async def _on_startup(self, app: web.Application) -> None:  # noqa: ARG002
        self.realtime.start()

    async def _on_shutdown(self, app: web.Application) -> None:  # noqa: ARG002
        await self.realtime.stop()

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler):
        """Every failure becomes an OpenAI-style JSON error; nothing escapes to crash the server."""
        try:
            if self.options.api_key and request.path.startswith("/v1/"):
                if request.headers.get("Authorization", "") != f"Bearer {self.options.api_key}":
                    raise RequestError(401, "Incorrect or missing API key.", "authentication_error")
            return await handler(request)
        except RequestError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response(error_body(exc.status, exc.reason, "invalid_request_error"), status=exc.status)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # noqa: BLE001 - the server must survive any bad request
            return web.json_response(error_body(500, f"internal error: {type(exc).__name__}", "server_error"),
                                     status=500)

    # -- simple endpoints ----------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:  # noqa: ARG002
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:  # noqa: ARG002
        return web.json_response({
            "object": "list",
            "data": [{
                "id": self.options.model_name, "object": "model", "created": self.created, "owned_by": "burstgpt",
                "root": self.options.setup.model_name, "max_model_len": self.config.max_model_len,
            }],
        })

    async def metrics_endpoint(self, request: web.Request) -> web.Response:  # noqa: ARG002
        body = prometheus_client.generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    # -- completions ---------------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _parse(self, request: web.Request, chat: bool) -> _Parsed:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        model = body.get("model", self.options.model_name)
        if not isinstance(model, str):
            raise RequestError(400, "'model' must be a string.", param="model")
        if model != self.options.model_name:
            raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        prompt_tokens = self._prompt_tokens(body, chat)
        context = self.config.max_model_len
        if prompt_tokens == 0:
            raise RequestError(400, "The prompt is empty.", param="messages" if chat else "prompt")
        if prompt_tokens >= context:
            raise RequestError(
                400,
                f"This model's maximum context length is {context} tokens. However, your prompt has "
                f"{prompt_tokens} tokens. Please reduce the length of the prompt.",
                param="messages" if chat else "prompt",
            )
        room = context - prompt_tokens
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(name)
        if max_tokens is None:
            max_tokens = room if chat else 16
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, f"'{name}' must be a positive integer.", param=name)
        flags = {}
        for key in ("stream", "ignore_eos"):
            value = body.get(key, False)
            if value is None:
                value = False
            if not isinstance(value, bool):
                raise RequestError(400, f"'{key}' must be a boolean.", param=key)
            flags[key] = value
        n = body.get("n", 1)
        if n not in (None, 1):
            raise RequestError(400, "Only n = 1 is supported.", param="n")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError(400, "'stream_options' must be an object.", param="stream_options")
        return _Parsed(chat, prompt_tokens, min(max_tokens, room), flags["ignore_eos"], flags["stream"],
                       bool(options.get("include_usage", False)), model)

    @staticmethod
    def _prompt_tokens(body: dict, chat: bool) -> int:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError(400, "'messages' must be a non-empty list.", param="messages")
            total = 0
            for message in messages:
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    raise RequestError(400, "each message must be an object with a 'role'.", param="messages")
                content = message.get("content")
                if isinstance(content, str):
                    total += count_tokens(content)
                elif isinstance(content, list):
                    for part in content:
                        if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                            raise RequestError(400, "message content parts must be text objects.", param="messages")
                        total += count_tokens(part.get("text", ""))
                elif content is not None:
                    raise RequestError(400, "message 'content' must be a string or a list.", param="messages")
            return total
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return count_tokens(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)  # token ids
        raise RequestError(400, "'prompt' must be a string, a one-string list or a list of token ids.",
                           param="prompt")

    def _output_length(self, parsed: _Parsed) -> int:
        if parsed.ignore_eos:
            return parsed.max_tokens
        return int(min(self.options.output_lengths.sample(1, self.length_rng)[0], parsed.max_tokens))

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        parsed = await self._parse(request, chat)
        faults = self.options.faults
        draws = self.fault_rng.random(5)
        if draws[0] < faults.error_rate:
            raise RequestError(500, "injected server error", "server_error")
        max_queue = self.options.max_queue
        engine = self.engine
        # Submitted requests the engine has not picked up yet are queued too.
        if max_queue is not None and engine.num_waiting + engine.num_submitted - engine.next_arrival >= max_queue:
            raise RequestError(429, f"The server's queue is full ({max_queue} waiting).", "rate_limit_error")
        output_tokens = self._output_length(parsed)
        live = self.realtime.submit(parsed.prompt_tokens, output_tokens)
        plan = _FaultPlan(
            drop_after=int(draws[2] * output_tokens) if draws[1] < faults.drop_rate else None,
            stall_after=int(draws[4] * output_tokens) if draws[3] < faults.stall_rate else None,
            stall_s=faults.stall_s,
            first_token_delay_s=faults.slow_first_token_s
            if self.fault_rng.random() < faults.slow_first_token_rate else 0.0,
        )
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        try:
            if parsed.stream:
                return await self._stream(request, parsed, live, plan, request_id)
            return await self._whole(request, parsed, live, plan, request_id)
        finally:
            self.realtime.cancel(live)

    async def _tokens(self, live: LiveRequest, plan: _FaultPlan):
        """Yield the count of tokens delivered so far at each token; returns at the end event (its state)."""
        delivered = 0
        while True:
            event = await live.events.get()
            if event.kind == "end":
                live.end_state = event.state
                return
            if delivered == 0 and plan.first_token_delay_s:
                await asyncio.sleep(plan.first_token_delay_s)
            if plan.stall_after is not None and delivered == plan.stall_after:
                await asyncio.sleep(plan.stall_s)
            delivered += 1
            yield delivered

    def _timeout_error(self) -> RequestError:
        return RequestError(504, f"The request timed out in the server after {self.config.timeout_s} s.", "timeout")

    async def _whole(self, request, parsed: _Parsed, live: LiveRequest, plan: _FaultPlan, request_id: str):
        count = 0
        async for count in self._tokens(live, plan):
            if plan.drop_after is not None and count > plan.drop_after:
                _drop(request)
                return web.Response(status=500)
        if live.end_state != DONE:
            raise self._timeout_error()
        text = output_text(0, count)
        finish = "length" if count >= parsed.max_tokens else "stop"
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
            if parsed.chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        )
        return web.json_response({
            "id": request_id, "object": "chat.completion" if parsed.chat else "text_completion",
            "created": int(time.time()), "model": parsed.model, "choices": [choice],
            "usage": _usage(parsed.prompt_tokens, count),
        })

    async def _stream(self, request, parsed: _Parsed, live: LiveRequest, plan: _FaultPlan, request_id: str):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if parsed.chat else "text_completion"

        def chunk(choices: list, usage: dict | None = None) -> bytes:
            payload = {"id": request_id, "object": kind, "created": created, "model": parsed.model,
                       "choices": choices}
            if usage is not None or parsed.include_usage:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        try:
            if parsed.chat:
                await response.write(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]))
            count = 0
            async for count in self._tokens(live, plan):
                if plan.drop_after is not None and count > plan.drop_after:
                    _drop(request)
                    return response
                text = output_text(count - 1, 1)
                piece = {"delta": {"content": text}} if parsed.chat else {"text": text}
                await response.write(chunk([{"index": 0, **piece, "logprobs": None, "finish_reason": None}]))
            if live.end_state != DONE:
                error = self._timeout_error()
                body = error_body(error.status, error.message, error.error_type)
                await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
                return response
            finish = "length" if count >= parsed.max_tokens else "stop"
            empty = {"delta": {}} if parsed.chat else {"text": ""}
            await response.write(chunk([{"index": 0, **empty, "logprobs": None, "finish_reason": finish}]))
            if parsed.include_usage:
                await response.write(chunk([], _usage(parsed.prompt_tokens, count)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; `_complete` frees the engine's slot
        return response


@dataclass
class _FaultPlan:
    drop_after: int | None
    stall_after: int | None
    stall_s: float
    first_token_delay_s: float


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _drop(request: web.Request) -> None:
    """Injected fault: cut the connection without finishing the answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def serve(options: ServerOptions, *, ready=None) -> None:
    """Run the server until SIGTERM/SIGINT; prints `serving on http://HOST:PORT` once listening."""
    server = SimServer(options)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
    url = f"http://{options.host}:{port}"
    print(f"serving on {url}  (model {options.model_name}; Ctrl-C or SIGTERM to stop)", flush=True)
    if ready is not None:
        ready(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    print("serve-sim stopped", flush=True)


__all__ = ["FaultOptions", "ServerOptions", "SimServer", "count_tokens", "serve"]
