"""Request and response length samplers (tokens), vectorised and seeded.

Request lengths follow the bounded discrete power law the paper calls Zipf: P(k) proportional to k**-theta on
the integers [min_tokens, max_tokens] (the same definition `burstgpt.analysis.fits.fit_zipf` fits). Response
lengths are either left to the model (only a max_tokens cap, the paper's default), fixed, taken from a trace
in replay, or drawn from a trace's empirical response-given-request distribution (`EmpiricalResponses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from burstgpt.analysis.fits import zipf_pmf
from burstgpt.errors import BurstGPTError

RESPONSE_MODES = ("model", "fixed", "empirical", "trace")


@dataclass(frozen=True)
class ZipfLengths:
    """Bounded Zipf: P(k) proportional to k**-theta for integer k in [min_tokens, max_tokens]."""

    theta: float
    min_tokens: int
    max_tokens: int

    def __post_init__(self) -> None:
        if not np.isfinite(self.theta) or self.theta < 0:
            raise BurstGPTError(f"Zipf exponent must be a non-negative number, got {self.theta}")
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise BurstGPTError(
                f"Zipf range must satisfy 1 <= min <= max tokens, got [{self.min_tokens}, {self.max_tokens}]"
            )
        if self.max_tokens - self.min_tokens > 50_000_000:
            raise BurstGPTError("Zipf range is too wide (more than 50 million lengths)")

    def pmf(self) -> np.ndarray:
        """Probabilities of min_tokens..max_tokens, shape (max - min + 1,) (`burstgpt.analysis.fits.zipf_pmf`)."""
        return zipf_pmf(self.theta, self.min_tokens, self.max_tokens)

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """`size` lengths, int64, by inverting the cumulative distribution.

        The result is exactly `searchsorted(cdf, u, side="right")`, computed with a guide table (Chen & Asau):
        guide[j] is the answer for u = j/M, so each draw starts at most a few entries from its answer. A binary
        search per draw is ~10x slower at millions of draws.
        """
        cdf = np.cumsum(self.pmf())
        cdf[-1] = 1.0
        u = rng.random(size)
        buckets = min(4 * cdf.size, 1 << 22)
        guide = np.searchsorted(cdf, np.arange(buckets) / buckets, side="right")
        index = guide[(u * buckets).astype(np.int64)]
        # Advance the few draws whose answer lies past their bucket's start (cdf[index] <= u).
        pending = np.flatnonzero(cdf[np.minimum(index, cdf.size - 1)] <= u)
        while pending.size:
            index[pending] += 1
            still = cdf[np.minimum(index[pending], cdf.size - 1)] <= u[pending]
            pending = pending[still & (index[pending] < cdf.size)]
        return self.min_tokens + np.minimum(index, cdf.size - 1).astype(np.int64)


@dataclass(frozen=True)
class EmpiricalResponses:
    """Response lengths given request lengths, from a trace's successful (response > 0) requests.

    Requests are grouped into bins by request length (`bin_edges`, tokens, shape (B+1,), bins [e_i, e_i+1),
    the outer bins open-ended); `quantiles[b]` (shape (B, Q)) is the response-length quantile function of bin b
    at probabilities linspace(0, 1, Q). Sampling draws u ~ U(0, 1) and interpolates it: the conditional
    distribution is kept to within the quantile resolution, and the table stays small enough for a params file.
    """

    bin_edges: np.ndarray
    quantiles: np.ndarray

    @classmethod
    def fit(
        cls, request_tokens: np.ndarray, response_tokens: np.ndarray, num_bins: int = 16, num_quantiles: int = 101
    ) -> EmpiricalResponses:
        """Fit from paired lengths; pairs with response 0 (failures) are left out. Bins are request-length
        quantiles, so each holds about the same number of pairs."""
        request_tokens = np.asarray(request_tokens, dtype=np.float64)
        response_tokens = np.asarray(response_tokens, dtype=np.float64)
        ok = response_tokens > 0
        request_tokens, response_tokens = request_tokens[ok], response_tokens[ok]
        if request_tokens.size == 0:
            raise BurstGPTError("no successful request/response pairs to fit response lengths from")
        num_bins = max(1, min(num_bins, request_tokens.size // 20 or 1))
        edges = np.unique(np.quantile(request_tokens, np.linspace(0, 1, num_bins + 1)))
        if edges.size < 2:
            edges = np.array([edges[0], edges[0] + 1.0])
        bins = _bin_of(request_tokens, edges)
        probabilities = np.linspace(0.0, 1.0, num_quantiles)
        table = np.empty((edges.size - 1, num_quantiles))
        # One np.quantile per bin: the number of bins is small (<= num_bins), not one per row.
        for b in range(edges.size - 1):
            members = response_tokens[bins == b]
            table[b] = np.quantile(members if members.size else response_tokens, probabilities)
        return cls(edges, table)

    def sample(self, request_tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One response length (int64, >= 1) per request length."""
        request_tokens = np.asarray(request_tokens, dtype=np.float64)
        bins = _bin_of(request_tokens, self.bin_edges)
        num_q = self.quantiles.shape[1]
        position = rng.random(request_tokens.size) * (num_q - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, num_q - 1)
        frac = position - low
        values = self.quantiles[bins, low] * (1.0 - frac) + self.quantiles[bins, high] * frac
        return np.maximum(np.rint(values), 1).astype(np.int64)

    def to_dict(self) -> dict:
        return {"bin_edges": self.bin_edges.tolist(), "quantiles": np.round(self.quantiles, 3).tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> EmpiricalResponses:
        edges = np.asarray(data["bin_edges"], dtype=np.float64)
        table = np.asarray(data["quantiles"], dtype=np.float64)
        if edges.ndim != 1 or table.ndim != 2 or table.shape[0] != edges.size - 1 or table.shape[1] < 2:
            raise BurstGPTError("response table: quantiles must have one row per bin and at least 2 columns")
        if not (np.all(np.isfinite(table)) and np.all(np.diff(edges) > 0)):
            raise BurstGPTError("response table: bin edges must increase and quantiles be finite")
        return cls(edges, table)


def _bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, edges.size - 2)
