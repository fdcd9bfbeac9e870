"""How long the simulated model answers when the workload leaves the output length to the model.

The workload's `output_tokens` column fixes the exact output length when set. Where it is null (the paper's
default: "response lengths are not predefined"), the simulated model draws one from an `OutputLengthModel`,
seeded, then caps it by the request's `max_output_tokens` and by the context left after the prompt.

Specs (`parse_output_length_model`):

- `lognormal:MEDIAN,SIGMA` (default `lognormal:250,0.8`): round(exp(N(log MEDIAN, SIGMA))), at least 1;
- `exponential:MEAN`: 1 + floor(Exp(MEAN - 1));
- `uniform:LOW,HIGH`: integers LOW..HIGH inclusive;
- `fixed:N`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError

DEFAULT_OUTPUT_LENGTH_SPEC = "lognormal:250,0.8"


@dataclass(frozen=True)
class OutputLengthModel:
    """A distribution of output lengths (tokens): `kind` in lognormal/exponential/uniform/fixed, `params`."""

    kind: str
    params: tuple[float, ...]

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` output lengths (Int64 array, each >= 1)."""
        if self.kind == "lognormal":
            median, sigma = self.params
            draws = np.rint(np.exp(rng.normal(np.log(median), sigma, count)))
        elif self.kind == "exponential":
            (mean,) = self.params
            draws = 1 + np.floor(rng.exponential(max(mean - 1.0, 0.0), count))
        elif self.kind == "uniform":
            low, high = self.params
            draws = rng.integers(int(low), int(high) + 1, count)
        else:
            draws = np.full(count, self.params[0])
        return np.maximum(draws, 1).astype(np.int64)

    def spec(self) -> str:
        return f"{self.kind}:" + ",".join(f"{p:g}" for p in self.params)


_ARITY = {"lognormal": 2, "exponential": 1, "uniform": 2, "fixed": 1}


def parse_output_length_model(text: str) -> OutputLengthModel:
    """Parse `KIND:P1[,P2]` (see the module doc)."""
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    try:
        params = tuple(float(p) for p in rest.split(",")) if rest else ()
    except ValueError:
        params = ()
    if kind not in _ARITY or len(params) != _ARITY[kind] or any(p <= 0 for p in params):
        raise BurstGPTError(
            f"output length model '{text}': expected lognormal:MEDIAN,SIGMA, exponential:MEAN, "
            "uniform:LOW,HIGH or fixed:N with positive numbers"
        )
    if kind == "uniform" and params[0] > params[1]:
        raise BurstGPTError(f"output length model '{text}': LOW must not exceed HIGH")
    return OutputLengthModel(kind, params)


def resolve_output_lengths(
    workload: pl.DataFrame,
    model: OutputLengthModel,
    *,
    max_model_len: int,
    seed: int = 0,
) -> np.ndarray:
    """Output tokens each request will generate (Int64 array, one per workload row, each >= 1).

    The workload's `output_tokens` where set, else a draw from `model` (seeded; one draw per row so the lengths
    do not depend on which rows are null); then capped by `max_output_tokens` and by `max_model_len - input_tokens`.
    """
    count = workload.height
    drawn = model.sample(count, np.random.default_rng(seed))
    fixed = workload["output_tokens"].to_numpy(allow_copy=True)
    fixed_mask = workload["output_tokens"].is_not_null().to_numpy()
    lengths = np.where(fixed_mask, np.nan_to_num(fixed.astype(np.float64), nan=1.0), drawn).astype(np.int64)
    caps = workload["max_output_tokens"].fill_null(np.iinfo(np.int64).max).to_numpy()
    lengths = np.minimum(lengths, caps)
    room = max_model_len - workload["input_tokens"].to_numpy()
    lengths = np.minimum(lengths, np.maximum(room, 1))
    return np.maximum(lengths, 1)
