"""Response-length modes, keyed by kind: how a workload sets each request's intended output length.

| mode      | output_tokens                                                                               |
|-----------|---------------------------------------------------------------------------------------------|
| model     | null: left to the model, capped by max_output_tokens (the paper's default)                  |
| fixed     | exactly `fixed_tokens` for every request                                                    |
| empirical | drawn from an `EmpiricalResponses` (response given request length, fitted from a trace)     |
| trace     | the replayed trace's own response lengths (failed trace rows, with 0 tokens, left to model) |

A new mode is one function `(spec, input_tokens, rng, trace_response_tokens) -> int64 array | None` (-1 = left
to the model) passed to `register_response_mode`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from burstgpt.errors import BurstGPTError

if TYPE_CHECKING:  # the analysis behind it is imported only when a workload is built
    from burstgpt.workload.lengths import EmpiricalResponses

ResponseSampler = Callable[["ResponseSpec", np.ndarray, np.random.Generator, "np.ndarray | None"], "np.ndarray | None"]
_MODES: dict[str, ResponseSampler] = {}


def register_response_mode(mode: str, sampler: ResponseSampler) -> None:
    _MODES[mode] = sampler


def response_modes() -> tuple[str, ...]:
    """The registered modes."""
    return tuple(_MODES)


@dataclass(frozen=True)
class ResponseSpec:
    """How response lengths are set (see the module table). `max_output_tokens` (nullable) is written for
    every mode."""

    mode: str = "model"
    max_output_tokens: int | None = 2048
    fixed_tokens: int | None = None
    empirical: EmpiricalResponses | None = None

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise BurstGPTError(f"unknown response mode {self.mode!r}; choose one of {', '.join(_MODES)}")
        if self.mode == "fixed" and not (self.fixed_tokens and self.fixed_tokens > 0):
            raise BurstGPTError("fixed response lengths need a positive --output-tokens")
        if self.mode == "empirical" and self.empirical is None:
            raise BurstGPTError("empirical response lengths need a params file or a trace to take them from")
        if self.max_output_tokens is not None and self.max_output_tokens <= 0:
            raise BurstGPTError(f"max output tokens must be positive, got {self.max_output_tokens}")

    def output_tokens(
        self, input_tokens: np.ndarray, rng: np.random.Generator, trace_response_tokens: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Intended output lengths (int64, tokens; -1 = left to the model), or None when all are left."""
        return _MODES[self.mode](self, input_tokens, rng, trace_response_tokens)


def _left_to_model(spec, input_tokens, rng, trace_response_tokens):
    return None


def _fixed(spec, input_tokens, rng, trace_response_tokens):
    return np.full(input_tokens.size, spec.fixed_tokens, dtype=np.int64)


def _empirical(spec, input_tokens, rng, trace_response_tokens):
    return spec.empirical.sample(input_tokens, rng)


def _from_trace(spec, input_tokens, rng, trace_response_tokens):
    if trace_response_tokens is None:
        raise BurstGPTError("response lengths from the trace are only available when replaying a trace")
    out = np.asarray(trace_response_tokens, dtype=np.int64)
    return np.where(out > 0, out, -1)


register_response_mode("model", _left_to_model)
register_response_mode("fixed", _fixed)
register_response_mode("empirical", _empirical)
register_response_mode("trace", _from_trace)
RESPONSE_MODES = response_modes()
