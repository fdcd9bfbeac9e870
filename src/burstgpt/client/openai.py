"""One OpenAI-compatible request (`/v1/completions` or `/v1/chat/completions`), streamed (SSE) or not, timed
and classified into exactly one outcome of `burstgpt.records`.

Timing: `sent_s` is taken just before the request is handed to aiohttp; `first_token_s` when the first chunk
carrying output text arrives (streaming only: a non-streamed response has no first-token time); `end_s`
when the request ends, whatever the outcome. All are seconds since the run's start `t0` on the monotonic clock
(`time.monotonic`: the event loop's own clock is whole milliseconds, cached per loop turn, under uvloop).

Timeouts: the total timeout bounds the whole request from `sent_s`; the TTFT timeout bounds the wait for the
first token (for a non-streamed request, for the response headers). Both are one `asyncio.timeout` whose
deadline moves from the TTFT deadline to the total deadline when the first token arrives.
"""

from __future__ import annotations

import asyncio
import errno
import json
from time import monotonic as clock
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from burstgpt.client.sse import (
    SSEParser,
    StreamErrorEvent,
    StreamFormatError,
    parse_json_object,
)
from burstgpt.records import STATUS_CANCELLED, STATUS_OK, RequestRecord
from burstgpt.workload.tokenizer import count_tokens

__all__ = ["API_PATHS", "EndpointOptions", "RequestRecord", "RequestSender", "request_body"]

try:  # orjson (optional) encodes a request body several times faster than json: it runs once per request
    from orjson import dumps as _encode
except ImportError:  # pragma: no cover - depends on the environment
    def _encode(body: dict) -> bytes:
        return json.dumps(body).encode()

API_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
_ERROR_BODY_BYTES = 4096  # bytes of an error response read for the message


@dataclass(frozen=True)
class EndpointOptions:
    """How to talk to the server. No secrets here: the API key travels only in `RequestSender.headers`."""

    base_url: str
    api: Literal["completions", "chat"] = "completions"
    stream: bool = True
    include_usage: bool = True  # streaming: ask for a final usage chunk (stream_options.include_usage)
    max_tokens: int | None = None  # cap when the workload row gives none
    ignore_eos: bool = False  # also sent (always) when the workload fixes output_tokens
    temperature: float | None = None
    extra_body: dict = field(default_factory=dict)  # merged into every request body
    timeout_s: float = 30.0
    ttft_timeout_s: float | None = None
    record_chunk_times: bool = False

    @property
    def url(self) -> str:
        """The endpoint URL: `base_url` when it already names a completions path, else base + API path."""
        base = self.base_url.rstrip("/")
        if base.endswith("/completions"):
            return base
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        return base + API_PATHS[self.api]


def request_body(
    options: EndpointOptions,
    *,
    model: str | None,
    prompt: str,
    output_tokens: int | None,
    max_output_tokens: int | None,
) -> dict:
    """The JSON body for one request.

    A fixed `output_tokens` (from the workload) is sent as max_tokens with ignore_eos, so the server
    generates exactly that many; otherwise max_tokens is the row's cap or `options.max_tokens`.
    """
    body: dict = {"model": model} if model else {}
    if options.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if output_tokens is not None:
        body["max_tokens"] = int(output_tokens)
        body["ignore_eos"] = True
    elif max_output_tokens is not None or options.max_tokens is not None:
        body["max_tokens"] = int(max_output_tokens if max_output_tokens is not None else options.max_tokens)
    if options.ignore_eos:
        body["ignore_eos"] = True
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.stream:
        body["stream"] = True
        if options.include_usage:
            body["stream_options"] = {"include_usage": True}
    body.update(options.extra_body)
    return body


class _StreamBroken(Exception):
    """The stream ended cleanly but before `data: [DONE]`."""


class RequestSender:
    """Sends requests over one aiohttp session and fills their records. `t0` is the run's start
    (`time.monotonic()` clock)."""

    def __init__(self, session: aiohttp.ClientSession, options: EndpointOptions, headers: dict, t0: float):
        self.session = session
        self.options = options
        self.url = options.url
        self.headers = {"Content-Type": "application/json", **headers}
        self.t0 = t0
        self._loop = asyncio.get_running_loop()

    async def send(self, record: RequestRecord, body: dict) -> RequestRecord:
        """Send one request and record its outcome. Never raises: every failure, and cancellation, becomes
        the record's status, error class and message."""
        payload = _encode(body)
        record.sent_s = clock() - self.t0
        start = self._loop.time()  # the timeouts run on the loop's clock
        total_deadline = start + self.options.timeout_s
        ttft = self.options.ttft_timeout_s
        ttft_deadline = min(start + ttft, total_deadline) if ttft else total_deadline
        waiting_first = True
        try:
            async with asyncio.timeout_at(ttft_deadline) as deadline:
                async with self.session.post(self.url, data=payload, headers=self.headers) as response:
                    record.http_status = response.status
                    if response.status >= 400:
                        await self._record_http_error(record, response)
                    elif self.options.stream:
                        first = self._on_first_token(record, deadline, total_deadline)
                        await self._read_stream(record, response, first)
                    else:
                        deadline.reschedule(total_deadline)
                        waiting_first = False
                        await self._read_body(record, response)
        except TimeoutError:
            if self.options.stream:
                waiting_first = record.first_token_s is None
            if waiting_first and ttft_deadline < total_deadline:
                record.fail("ttft_timeout", f"no first token within {ttft:g} s")
            else:
                record.fail("timeout", f"request not finished within {self.options.timeout_s:g} s")
        except _StreamBroken:
            record.fail("stream_broken", "stream ended before [DONE]")
        except StreamFormatError as exc:
            record.fail("malformed_response", str(exc))
        except StreamErrorEvent as exc:
            record.fail("stream_error_event", str(exc))
        except aiohttp.ClientConnectorError as exc:  # before ClientOSError: it is a subclass
            record.fail("client_limit" if _client_side(exc) else "connection_refused", _describe(exc))
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                ConnectionResetError) as exc:
            record.fail("client_limit" if _client_side(exc) else "connection_reset", _describe(exc))
        except OSError as exc:  # a socket the client could not even create (out of descriptors, ports)
            record.fail("client_limit" if _client_side(exc) else "other", _describe(exc))
        except aiohttp.ClientResponseError as exc:  # unparseable HTTP from the server
            record.fail("malformed_response", _describe(exc))
        except asyncio.CancelledError:
            record.status = STATUS_CANCELLED
            record.error_class = None
            record.error_message = "cancelled: run stopped before the request ended"
        except Exception as exc:  # never lose a request: anything unexpected is still accounted for
            record.fail("other", _describe(exc))
        record.end_s = clock() - self.t0
        return record

    def _on_first_token(self, record: RequestRecord, deadline: asyncio.Timeout, total_deadline: float):
        def first(now: float) -> None:
            record.first_token_s = now - self.t0
            deadline.reschedule(total_deadline)

        return first

    async def _record_http_error(self, record: RequestRecord, response: aiohttp.ClientResponse) -> None:
        text = await response.content.read(_ERROR_BODY_BYTES)
        record.bytes_received += len(text)
        status = response.status
        error_class = "http_429" if status == 429 else "http_4xx" if status < 500 else "http_5xx"
        record.fail(error_class, f"HTTP {status}: {text.decode(errors='replace').strip()}")

    async def _read_stream(self, record: RequestRecord, response: aiohttp.ClientResponse, first) -> None:
        chunk_times = [] if self.options.record_chunk_times else None
        parser = SSEParser()
        state = {"chunks": 0, "usage": None}

        def take(events, now: float) -> bool:
            """Account for parsed events; True at the end marker."""
            for event in events:
                if event.usage is not None:
                    state["usage"] = event.usage
                if event.done:
                    return True
                if event.has_token:
                    state["chunks"] += 1
                    if record.first_token_s is None:
                        first(now)
                    if chunk_times is not None:
                        chunk_times.append(now - self.t0)
            return False

        done = False
        try:
            async for data in response.content.iter_any():
                record.bytes_received += len(data)
                if take(parser.feed(data), clock()):
                    done = True
                    break
            else:
                done = take(parser.close(), clock())
        finally:
            record.chunk_times_s = chunk_times
            record.output_tokens = state["chunks"]
            _apply_usage(record, state["usage"])
        if not done:
            raise _StreamBroken()
        record.status = STATUS_OK

    async def _read_body(self, record: RequestRecord, response: aiohttp.ClientResponse) -> None:
        data = await response.read()
        record.bytes_received += len(data)
        obj = parse_json_object(data, "response")
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            raise StreamFormatError("response has no choices")
        # Without the server's usage, the output is counted with the builtin tokenizer (an estimate).
        record.output_tokens = count_tokens(_response_text(choices))
        _apply_usage(record, obj.get("usage"))
        record.status = STATUS_OK


def _response_text(choices: list) -> str:
    """The output text of a non-streamed response's choices (completions `text`, chat `message.content`)."""
    parts = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise StreamFormatError("choice is not a JSON object")
        message = choice.get("message")
        text = choice.get("text") or (message.get("content") if isinstance(message, dict) else None)
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _apply_usage(record: RequestRecord, usage) -> None:
    """Prefer the server's token counts over the client's (chunk count / workload input length)."""
    if not isinstance(usage, dict):
        return
    if isinstance(usage.get("prompt_tokens"), int):
        record.input_tokens = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        record.output_tokens = usage["completion_tokens"]


#: errno values that mean the client ran out of its own resources, not that the server refused or dropped us.
CLIENT_LIMIT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS, errno.ENOMEM})


def _client_side(exc: BaseException) -> bool:
    """Whether a connection error is the client's own limit (file descriptors, local ports, buffers)."""
    os_error = getattr(exc, "os_error", None) or exc  # aiohttp's connector errors wrap the OSError
    return getattr(os_error, "errno", None) in CLIENT_LIMIT_ERRNOS


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if exc.__class__.__name__ not in text else text
