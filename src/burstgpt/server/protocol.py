"""The OpenAI-compatible protocol of `serve-sim`: request validation into a typed `CompletionRequest`, error
bodies, and the pieces of an answer (generated text, usage).

Validation follows vLLM's OpenAI server: a 400 with `{"error": {"message", "type": "BadRequestError", "param",
"code"}}` for invalid JSON or fields, a non-integer or non-positive `max_tokens`, a prompt that leaves no room
in the context (`max_model_len`), and prompt tokens + `max_tokens` over the context (vLLM's message: "This
model's maximum context length is N tokens. However, you requested ..."). Without `max_tokens` the output may
fill the context (chat) or is 16 tokens (completions), capped by the room left, as vLLM's defaults.
Tokens are counted with a `burstgpt.workload.tokenizer.Tokenizer` (builtin by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from burstgpt.workload.tokenizer import Tokenizer, block_keys

#: Generated text: one word per token, each a single token under the builtin tokenizer (at most 6 letters).
_WORDS = ("the", "burst", "of", "tokens", "comes", "and", "cache", "fills", "while", "users", "wait", "then")
DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions


class RequestError(Exception):
    """An OpenAI-style error answer: HTTP status, message, error type and offending parameter."""

    def __init__(self, status: int, message: str, error_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> dict:
        return error_body(self.status, self.message, self.error_type, self.param)


def error_body(status: int, message: str, error_type: str, param: str | None = None) -> dict:
    """vLLM's `ErrorResponse` JSON."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


@dataclass(frozen=True)
class CompletionRequest:
    """A validated `/v1/completions` or `/v1/chat/completions` request. `max_tokens`: the most output tokens
    (tokens), after defaults; prompt_tokens + max_tokens <= the context."""

    chat: bool
    model: str
    prompt_tokens: int
    max_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    prompt_blocks: tuple[int, ...] = ()  # chained keys of the prompt's full KV blocks (prefix caching)


def parse_completion_request(raw: bytes, *, chat: bool, served_model: str, max_model_len: int,
                             tokenizer: Tokenizer, block_size: int | None = None) -> CompletionRequest:
    """Validate a request body (raises `RequestError`). `block_size`: also key the prompt's full blocks of that
    many tokens (`burstgpt.workload.tokenizer.block_keys`) so the engine's prefix cache sees shared prompts."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    model = body.get("model", served_model)
    if not isinstance(model, str):
        raise RequestError(400, "'model' must be a string.", param="model")
    if model != served_model:
        raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    prompt_param = "messages" if chat else "prompt"
    prompt_tokens, token_units = _prompt_tokens(body, chat, tokenizer, keyed=block_size is not None)
    if prompt_tokens == 0:
        raise RequestError(400, "The prompt is empty.", param=prompt_param)
    if prompt_tokens >= max_model_len:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{prompt_tokens} input tokens, which leaves no room for output tokens. Please reduce the length of "
            "the input prompt.",
            param=prompt_param,
        )
    room = max_model_len - prompt_tokens
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = room if chat else min(DEFAULT_COMPLETION_MAX_TOKENS, room)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise RequestError(400, f"{name} must be an integer, got {json.dumps(max_tokens)[:40]}.", param=name)
    elif max_tokens < 1:
        raise RequestError(400, f"{name} must be at least 1, got {max_tokens}.", param=name)
    elif max_tokens > room:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_param}, {max_tokens} in the "
            f"completion). Please reduce the length of the {prompt_param} or completion.",
            param=name,
        )
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
    blocks = tuple(block_keys(token_units, block_size)) if block_size is not None else ()
    return CompletionRequest(chat, model, prompt_tokens, max_tokens, flags["ignore_eos"], flags["stream"],
                             bool(options.get("include_usage", False)), blocks)


def _prompt_tokens(body: dict, chat: bool, tokenizer: Tokenizer, *, keyed: bool = False) -> tuple[int, list]:
    """Prompt tokens of a request (the text of every chat message, a prompt string, or a list of token ids), and
    with `keyed` the tokens themselves, in order (else an empty list)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list.", param="messages")
        texts = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(400, "each message must be an object with a 'role'.", param="messages")
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                        raise RequestError(400, "message content parts must be text objects.", param="messages")
                    texts.append(part.get("text", ""))
            elif content is not None:
                raise RequestError(400, "message 'content' must be a string or a list.", param="messages")
        if keyed:
            units = [token for text in texts for token in tokenizer.tokens(text)]
            return len(units), units
        return (int(tokenizer.count(texts).sum()) if texts else 0), []
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if keyed:
            units = list(tokenizer.tokens(prompt))
            return len(units), units
        return int(tokenizer.count([prompt])[0]), []
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in prompt):
        return len(prompt), (list(prompt) if keyed else [])  # token ids
    raise RequestError(400, "'prompt' must be a string, a one-string list or a list of token ids.", param="prompt")


def output_text(start: int, count: int) -> str:
    """`count` generated tokens starting at position `start`: one space-prefixed word each."""
    return "".join(" " + _WORDS[i % len(_WORDS)] for i in range(start, start + count))


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The OpenAI `usage` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
