"""`serve-sim`: an OpenAI-compatible HTTP server whose "GPU" is the simulator's engine, run in real time.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`.
Modules: `protocol` (request validation into a typed request, error bodies), `handlers` (the endpoints, faults),
`metrics` (Prometheus exposition with vLLM's names), `realtime` (the engine against the wall clock); this one
holds the options, assembles the application and serves it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

from burstgpt.server.handlers import Handlers
from burstgpt.server.metrics import EngineMetrics
from burstgpt.server.protocol import RequestError, error_body
from burstgpt.server.realtime import RealTimeEngine
from burstgpt.sim.engine import ServingEngine
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC, OutputLengthModel, parse_output_length_model
from burstgpt.sim.simulate import EngineSetup
from burstgpt.workload.tokenizer import Tokenizer, builtin_tokenizer


@dataclass(frozen=True)
class FaultOptions:
    """Injected faults, each drawn per request from a generator seeded with `seed`. Rates are probabilities;
    durations wall seconds."""

    error_rate: float = 0.0  # answer 500 at once
    drop_rate: float = 0.0  # drop the connection part-way through the answer
    stall_rate: float = 0.0  # pause the stream for stall_s once, part-way
    stall_s: float = 5.0
    slow_first_token_rate: float = 0.0  # hold the first token back by slow_first_token_s
    slow_first_token_s: float = 2.0
    seed: int = 0


@dataclass(frozen=True)
class ServerOptions:
    """`time_scale`: simulated seconds per wall second (K: K times faster than real time). `tokenizer` counts
    prompt tokens (`burstgpt.workload.tokenizer`, builtin by default)."""

    setup: EngineSetup
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    time_scale: float = 1.0
    output_lengths: OutputLengthModel = field(
        default_factory=lambda: parse_output_length_model(DEFAULT_OUTPUT_LENGTH_SPEC))
    seed: int = 0
    api_key: str | None = None
    max_queue: int | None = None
    faults: FaultOptions = field(default_factory=FaultOptions)
    tokenizer: Tokenizer = field(default_factory=builtin_tokenizer)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.setup.model_name


class SimServer:
    """The aiohttp application around one real-time engine (`app`)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        setup = options.setup
        # The queue limit is applied at the door (429), so the engine itself never rejects; there is no server
        # deadline either (vLLM has none): a request is aborted when its client disconnects (`Handlers`).
        self.metrics = EngineMetrics(options.model_name, setup.config.num_gpu_blocks, options.time_scale,
                                     config=setup.config)
        self.engine = ServingEngine(dataclasses.replace(setup.config, max_queue=None, timeout_s=None),
                                    self.metrics.step_timer(setup.latency), record_steps=False, track_events=True)
        self.realtime = RealTimeEngine(self.engine, time_scale=options.time_scale, on_step=self.metrics.on_step)
        self.handlers = handlers = Handlers(options, self.realtime, self.metrics)
        self.app = web.Application(middlewares=[self._errors_middleware])
        self.app.router.add_post("/v1/completions", handlers.completions)
        self.app.router.add_post("/v1/chat/completions", handlers.chat_completions)
        self.app.router.add_get("/v1/models", handlers.models)
        self.app.router.add_get("/health", handlers.health)
        self.app.router.add_get("/metrics", handlers.metrics_endpoint)
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
            return web.json_response(exc.body(), status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response(error_body(exc.status, exc.reason, "invalid_request_error"), status=exc.status)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # noqa: BLE001 - the server must survive any bad request
            return web.json_response(error_body(500, f"internal error: {type(exc).__name__}", "server_error"),
                                     status=500)


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


@contextlib.contextmanager
def running_server(options: ServerOptions, *, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run a simulated server on its own event loop in a background thread; yield its base URL
    (`http://127.0.0.1:PORT`; port 0 in `options` picks a free one) and stop it on exit.

        with running_server(ServerOptions(setup, port=0)) as url:
            result = LoadGenerator(workload, EndpointOptions(url)).run_sync()
    """
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[tuple[web.AppRunner, str]] = concurrent.futures.Future()

    async def start() -> None:
        try:
            runner = web.AppRunner(SimServer(options).app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, options.host, options.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
            started.set_result((runner, f"http://{options.host}:{port}"))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            started.set_exception(exc)

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        if started.exception() is None:
            loop.run_forever()

    thread = threading.Thread(target=run_loop, name="burstgpt-serve-sim", daemon=True)
    thread.start()
    try:
        runner, url = started.result(timeout=start_timeout_s)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        raise
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


__all__ = ["FaultOptions", "ServerOptions", "SimServer", "running_server", "serve"]
