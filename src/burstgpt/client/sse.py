"""Incremental parser of the server-sent events an OpenAI-compatible server streams: bytes in any chunking in,
one `StreamEvent` per `data:` line out.

Lines end with LF (a CR before it is dropped, as is surrounding whitespace); a blank line ends an event; lines
starting with `:` are comments (keep-alives); `event:`, `id:` and `retry:` lines are accepted (`event: error`
marks the next data as an error). Each `data:` value is `[DONE]` or a JSON object with `choices` and/or
`usage`, or with `error`. Whatever else arrives raises one of the parser's own errors, which the client
classifies: `StreamFormatError` -> `malformed_response`, `StreamErrorEvent` -> `stream_error_event`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import NamedTuple

try:  # orjson (optional) parses a chunk ~10x faster than json: the client parses every streamed chunk
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

#: Longest line accepted, bytes: a line growing past it without an end is not SSE (or not a sane one).
MAX_LINE_BYTES = 1 << 20
_FIELDS = (b"event", b"id", b"retry")


class StreamError(Exception):
    """The stream is not what an OpenAI-compatible server sends (base of the parser's errors)."""


class StreamFormatError(StreamError):
    """A line that is not SSE, data that is not a JSON object, a chunk without choices or usage."""


class StreamErrorEvent(StreamError):
    """The server reported an error inside a 200 response (an SSE `error` event or an `error` object)."""


class StreamEvent(NamedTuple):  # a tuple: cheap to make, one per streamed chunk
    """One `data:` line: the end marker, or a chunk (with output text or not, with the server's usage or not)."""

    done: bool = False
    has_token: bool = False  # the chunk carries an output token (see `has_token`)
    usage: object = None  # the chunk's `usage` member when present and non-empty (checked by the caller)


DONE = StreamEvent(done=True)


class SSEParser:
    """Feed it the response bytes as they arrive; it keeps the partial last line between calls."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial = b""
        self._event = b""  # the current event's name (from an `event:` line)

    def feed(self, chunk: bytes) -> Iterator[StreamEvent]:
        """The events completed by `chunk`, in order; an error is raised when its line is reached."""
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_line_bytes:
            raise StreamFormatError(f"an SSE line longer than {self.max_line_bytes} bytes")
        return self._events(lines)

    def close(self) -> Iterator[StreamEvent]:
        """The events of a last line that had no line end (the stream ended after it)."""
        last, self._partial = self._partial, b""
        return self._events([last])

    def _events(self, lines: list[bytes]) -> Iterator[StreamEvent]:
        for raw in lines:
            if raw.startswith(b"data:"):  # the common line, first: one check instead of the general path's six
                value = raw[5:].strip()
                yield DONE if value == b"[DONE]" else parse_chunk(value, error_event=self._event == b"error")
                continue
            line = raw.strip()
            if not line:
                self._event = b""  # a blank line ends an SSE event
                continue
            if line.startswith(b":"):  # comment / keep-alive
                continue
            name, _, value = line.partition(b":")
            value = value.strip()
            if name in _FIELDS:
                if name == b"event":
                    self._event = value
                continue
            if name != b"data":
                raise StreamFormatError(f"not an SSE line: {line[:80].decode(errors='replace')!r}")
            if value == b"[DONE]":
                yield DONE
                continue
            yield parse_chunk(value, error_event=self._event == b"error")


def parse_json_object(data: bytes, what: str, *, error_event: bool = False) -> dict:
    """A JSON object from the server; `StreamFormatError` if it is not one, `StreamErrorEvent` if it reports an
    error (an `error` member, or data of an SSE `error` event)."""
    try:
        obj = _loads(data)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8; RecursionError absurd nesting
        raise StreamFormatError(f"{what} is not JSON: {data[:80].decode(errors='replace')!r}") from None
    if not isinstance(obj, dict):
        raise StreamFormatError(f"{what} is not a JSON object")
    if error_event or obj.get("error"):
        raise StreamErrorEvent(error_text(obj))
    return obj


def parse_chunk(data: bytes, *, error_event: bool = False) -> StreamEvent:
    """One streamed chunk (`data:` value): whether it carries output text, and its usage."""
    obj = parse_json_object(data, "SSE data", error_event=error_event)
    usage = obj.get("usage") or None
    choices = obj.get("choices")
    if choices is None:
        if usage is None:
            raise StreamFormatError("SSE chunk has neither choices nor usage")
        return StreamEvent(usage=usage)
    return StreamEvent(has_token=has_token(choices), usage=usage)


def has_token(choices: object) -> bool:
    """Whether a `choices` list carries an output token: a completions choice with a `text` string, even empty
    (a byte-level token that completes no character streams as "": it is still a token, one engine step), or
    chat text (`delta.content` or reasoning; chat's empty role-only first delta is not a token)."""
    if not isinstance(choices, list):
        raise StreamFormatError("choices is not a JSON array")
    found = False
    for choice in choices:
        if not isinstance(choice, dict):
            raise StreamFormatError("choice is not a JSON object")
        delta = choice.get("delta")
        if isinstance(choice.get("text"), str) or (
                isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content"))):
            found = True
    return found


def error_text(obj: dict) -> str:
    """The message of an error object (`{"error": {"message": ...}}` or the object itself)."""
    error = obj.get("error", obj)
    try:
        return str(error.get("message") or error) if isinstance(error, dict) else str(error)
    except RecursionError:  # an absurdly nested error object
        return "error object too deeply nested to print"
