"""`serve-sim`'s HTTP handlers: the completion endpoints (streamed as server-sent events with a token at each
simulated step's end, or one JSON answer), `/v1/models`, `/health` and `/metrics`, with injected faults.

Output length: `max_tokens` exactly when `ignore_eos` is true; otherwise a draw from the output-length model,
capped by `max_tokens`. A request whose client disconnects is aborted in the engine (its KV blocks freed) at the
end of the current step, whether it is streamed, answered whole or still queued; there is no server timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from aiohttp import web

from burstgpt.server.metrics import CONTENT_TYPE, EngineMetrics
from burstgpt.server.protocol import (
    CompletionRequest,
    RequestError,
    error_body,
    output_text,
    parse_completion_request,
    usage,
)
from burstgpt.server.realtime import DONE, LiveRequest, RealTimeEngine

if TYPE_CHECKING:
    from burstgpt.server.app import ServerOptions


@dataclass
class FaultPlan:
    """The faults drawn for one request: drop the connection / stall once after so many tokens (None: never),
    and hold the first token back (wall seconds)."""

    drop_after: int | None
    stall_after: int | None
    stall_s: float
    first_token_delay_s: float


class Handlers:
    """The endpoints of one simulated server (`burstgpt.server.app.SimServer` routes to them)."""

    def __init__(self, options: ServerOptions, realtime: RealTimeEngine, metrics: EngineMetrics) -> None:
        self.options = options
        self.realtime = realtime
        self.engine = realtime.engine
        self.config = options.setup.config
        self.metrics = metrics
        self.length_rng = np.random.default_rng(options.seed)
        self.fault_rng = np.random.default_rng(options.faults.seed)
        self.created = int(time.time())

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
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # -- completions ---------------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    def _output_length(self, parsed: CompletionRequest) -> int:
        if parsed.ignore_eos:
            return parsed.max_tokens
        return int(min(self.options.output_lengths.sample(1, self.length_rng)[0], parsed.max_tokens))

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        parsed = parse_completion_request(
            await request.read(), chat=chat, served_model=self.options.model_name,
            max_model_len=self.config.max_model_len, tokenizer=self.options.tokenizer,
            # With prefix caching the engine needs to know which of the prompt's blocks equal earlier ones: the
            # prompt's own tokens, keyed per KV block, stand in for a workload's prefix block ids.
            block_size=self.config.block_size if self.config.enable_prefix_caching else None,
        )
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

        def disconnected() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        live = self.realtime.submit(parsed.prompt_tokens, output_tokens, disconnected=disconnected,
                                    prompt_blocks=parsed.prompt_blocks)
        plan = FaultPlan(
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

    async def _tokens(self, live: LiveRequest, plan: FaultPlan):
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

    @staticmethod
    def _aborted_error() -> RequestError:
        """The request ended unfinished: its client went away (nobody reads this) or the server is stopping."""
        return RequestError(503, "The request was aborted before it finished.", "server_error")

    async def _whole(self, request, parsed: CompletionRequest, live: LiveRequest, plan: FaultPlan, request_id: str):
        count = 0
        async for count in self._tokens(live, plan):
            if plan.drop_after is not None and count > plan.drop_after:
                _drop(request)
                return web.Response(status=500)
        if live.end_state != DONE:
            raise self._aborted_error()
        text = output_text(0, count)
        finish = "length" if count >= parsed.max_tokens else "stop"
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
            if parsed.chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        )
        return web.json_response({
            "id": request_id, "object": "chat.completion" if parsed.chat else "text_completion",
            "created": int(time.time()), "model": parsed.model, "choices": [choice],
            "usage": usage(parsed.prompt_tokens, count),
        })

    async def _stream(self, request, parsed: CompletionRequest, live: LiveRequest, plan: FaultPlan,
                      request_id: str):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if parsed.chat else "text_completion"

        def chunk(choices: list, usage_body: dict | None = None) -> bytes:
            payload = {"id": request_id, "object": kind, "created": created, "model": parsed.model,
                       "choices": choices}
            if usage_body is not None or parsed.include_usage:
                payload["usage"] = usage_body
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
                error = self._aborted_error()
                body = error_body(error.status, error.message, error.error_type)
                await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
                return response
            finish = "length" if count >= parsed.max_tokens else "stop"
            empty = {"delta": {}} if parsed.chat else {"text": ""}
            await response.write(chunk([{"index": 0, **empty, "logprobs": None, "finish_reason": finish}]))
            if parsed.include_usage:
                await response.write(chunk([], usage(parsed.prompt_tokens, count)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; `_complete` frees the engine's slot
        return response


def _drop(request: web.Request) -> None:
    """Injected fault: cut the connection without finishing the answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()
