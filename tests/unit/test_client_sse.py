"""The client's SSE parser, property-based: any chunking of a valid stream parses as one chunk does, and random
bytes raise nothing but the parser's own classified errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burstgpt.client.sse import (
    DONE,
    SSEParser,
    StreamError,
    StreamErrorEvent,
    StreamEvent,
    StreamFormatError,
)

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

_texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def valid_streams(draw) -> bytes:
    """An OpenAI-style stream: comments, event/id lines, completions or chat chunks, usage, [DONE]; LF or CRLF."""
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["text", "delta", "empty", "comment", "id", "usage"]))
        if kind == "comment":
            parts.append(b": keep-alive" + newline)
            continue
        if kind == "id":
            parts.append(b"id: " + str(draw(st.integers(0, 99))).encode() + newline)
            continue
        if kind == "text":
            obj = {"choices": [{"index": 0, "text": draw(_texts)}]}
        elif kind == "delta":
            obj = {"choices": [{"index": 0, "delta": {"content": draw(_texts)}}]}
        elif kind == "empty":
            obj = {"choices": []}
        else:
            obj = {"choices": [], "usage": {"prompt_tokens": draw(st.integers(0, 9)),
                                            "completion_tokens": draw(st.integers(0, 9))}}
        parts.append(b"data: " + json.dumps(obj, ensure_ascii=draw(st.booleans())).encode() + newline + newline)
    if draw(st.booleans()):
        parts.append(b"data: [DONE]" + (newline + newline if draw(st.booleans()) else b""))
    return b"".join(parts)


def _parse(chunks: list[bytes]) -> list[StreamEvent]:
    parser = SSEParser()
    events: list[StreamEvent] = []
    for chunk in chunks:
        events += list(parser.feed(chunk))
    return events + list(parser.close())


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@SETTINGS
@given(stream=valid_streams(), cuts=st.lists(st.integers(0, 4000), max_size=30))
def test_any_chunking_gives_the_events_of_one_chunk(stream, cuts):
    whole = _parse([stream])
    assert _parse(_split(stream, cuts)) == whole
    assert _parse([bytes([b]) for b in stream]) == whole  # byte by byte, the worst case
    # And the events say what the stream holds: one per data line, text where a chunk carries text.
    lines = [line.strip() for line in stream.split(b"\n")]
    assert len(whole) == sum(line.startswith(b"data: ") for line in lines)
    assert (DONE in whole) == (b"data: [DONE]" in lines)


@SETTINGS
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_random_bytes_raise_only_the_parsers_errors(data, cuts):
    try:
        _parse(_split(data, cuts))
    except StreamError:
        pass  # classified by the client: malformed_response or stream_error_event


@SETTINGS
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                          lambda children: st.lists(children, max_size=3)
                          | st.dictionaries(st.sampled_from(["choices", "usage", "error", "text", "delta",
                                                             "content", "message"]), children, max_size=3),
                          max_leaves=12))
def test_random_json_values_raise_only_the_parsers_errors(value):
    # Random JSON shapes under the keys the parser looks at (choices as a number, a choice as a list, ...).
    try:
        _parse([b"data: " + json.dumps(value).encode() + b"\n\n"])
    except StreamError:
        pass


def test_examples_of_each_outcome():
    assert _parse([b'data: {"choices":[{"text":"hi"}]}\n\ndata: [DONE]\n\n']) == [StreamEvent(has_token=True), DONE]
    # vLLM streams a byte-level token that completes no character as text "": still one token (one step).
    assert _parse([b'data: {"choices":[{"text":"","finish_reason":null}]}\n']) == [StreamEvent(has_token=True)]
    # Chat's role-only first delta carries no token.
    assert _parse([b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n']) == [
        StreamEvent(has_token=False)]
    assert _parse([b'data: {"choices":[],"usage":{"completion_tokens":3}}\n']) == [
        StreamEvent(usage={"completion_tokens": 3})]
    with pytest.raises(StreamErrorEvent, match="engine crashed"):
        _parse([b'data: {"error": {"message": "engine crashed"}}\n'])
    with pytest.raises(StreamErrorEvent):
        _parse([b"event: error\ndata: {}\n"])
    for bad in (b"data: {not json\n", b"hello\n", b'data: {"choices": 5}\n', b'data: {"id": 1}\n',
                b"data: " + b"[" * 100_000 + b"\n"):
        with pytest.raises(StreamFormatError):
            _parse([bad])
    with pytest.raises(StreamFormatError, match="longer than"):
        SSEParser(max_line_bytes=10).feed(b"data: " + b"x" * 20)
