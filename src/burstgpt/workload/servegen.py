"""ServeGen client pools (alibaba/ServeGen, arXiv 2505.09999): production traffic as a sum of clients, each with
its own bursty arrivals and its own length distributions that shift over the day.

Files. A client is a pair `<name>-trace.csv` + `<name>-dataset.json`, named by its path relative to the pool
directory without the suffix (e.g. `language/m-large/chunk-0`).

- `*-trace.csv`, no header, one row per window (600 s; 14 days for language models, 1 day for reasoning):
  `window_start_s,rate_rps,cv,pattern,shape,scale`. `pattern` is `Gamma` or `Weibull` (the family ServeGen
  fitted to the window's inter-arrival gaps), empty when the client is idle (rate 0).
- `*-dataset.json`: `{period_start_s: {"input_tokens": "{tokens: probability, ...}", "output_tokens": ...}}`
  every 21,600 s, each distribution a Python-dict string (parsed with `ast.literal_eval`, never `eval`); "{}"
  means no data for that period. Other fields (`reason_ratio` of reasoning clients) are not used.

Arrivals. In each window a client is a renewal process of the window's family with the window's recorded rate
AND CV: Gamma shape 1/CV^2, Weibull shape k solved from CV (`WeibullProcess.shape_for_cv`), the scale from the
rate. The recorded `shape`/`scale` columns are not used: they are ServeGen's maximum-likelihood fits of the
gaps, which weigh the many short gaps of a burst, and they do not reproduce the window's moments (m-large
chunk-0, window 0: rate 1.33 req/s, CV 8.6, Weibull shape 0.375 and scale 0.397 s, which give CV 3.5 and a mean
gap of 1.6 s, i.e. 0.63 req/s; over that client's Weibull windows the fitted shape gives about 0.4x the recorded
CV and 2.4x the recorded mean gap; its Gamma shapes are exactly 1/CV^2 but their mean gap is ~0.8/rate). The
rate is what a pool's load is built from and the CV is the burstiness the ServeGen paper reports, so both are
kept and only the family is taken from `pattern`. A window with CV 0 is drawn at a constant rate. Consecutive
windows are one time-rescaled renewal process (`burstgpt.workload.arrivals.ParamSchedule` with a per-step
family), started in equilibrium (`stationary_start`) so that clients do not all send a request at time 0.

Lengths. Each request's input and output tokens are drawn (independently: ServeGen gives the two marginals)
from the distributions of the 6-hour period in force at its recorded time; an empty period falls back to the
nearest period with data (the earlier one on a tie).

Composition (`compose_pool`). Each client gets its own seeded streams (derived from the seed and the client's
name, so selecting other clients leaves a client's requests unchanged); the streams are merged by time and
each request keeps its client in the `client_id` column. The aggregate rate over time is:
- recorded: every client keeps its recorded rates;
- `target_rate_rps`: all rates times one factor, so the aggregate mean over the span is the target;
- `rate_fn` (time_s, rate_rps rows, piecewise constant from each time_s): at every instant all clients are
  scaled by wanted / recorded aggregate rate (where no client is recorded, nothing can be scaled: a note).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.tables import first_true_index
from burstgpt.workload.arrivals import ParamSchedule, scheduled_arrivals
from burstgpt.workload.processes import get_process

#: Columns of a `*-trace.csv` row, in order.
TRACE_COLUMNS = ("window_start_s", "rate_rps", "cv", "pattern", "shape", "scale")
#: `pattern` values and the process kind each one draws from.
PATTERN_PROCESSES = {"Gamma": "gamma", "Weibull": "weibull"}
#: ServeGen's window length, seconds (the length of the last window when a file has a single row).
WINDOW_S = 600.0
#: Length-distribution fields of a `*-dataset.json` period that are used.
LENGTH_FIELDS = ("input_tokens", "output_tokens")
TRACE_SUFFIX, DATASET_SUFFIX = "-trace.csv", "-dataset.json"


@dataclass(frozen=True)
class LengthDistribution:
    """A discrete distribution of token counts: `tokens` (m,) int64 with `probability` (m,) summing to 1."""

    tokens: np.ndarray
    probability: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.dot(self.tokens, self.probability))


@dataclass(frozen=True)
class ServeGenClient:
    """One ServeGen client: its windows (W,) and its length periods (P,). Times are seconds of ServeGen's clock."""

    name: str
    window_start_s: np.ndarray  # (W,) float64, increasing
    window_end_s: np.ndarray  # (W,) float64, next window's start (last: start + window length)
    rate_rps: np.ndarray  # (W,) requests/s, >= 0
    cv: np.ndarray  # (W,) CV of the window's inter-arrival gaps, >= 0
    process: np.ndarray  # (W,) str: gamma, weibull, constant (CV 0), "" where idle
    period_start_s: np.ndarray  # (P,) float64, increasing
    input_tokens: tuple[LengthDistribution | None, ...]  # (P,) None = no data for that period
    output_tokens: tuple[LengthDistribution | None, ...]
    dataset_path: str = ""

    def periods_for(self, time_s: np.ndarray) -> np.ndarray:
        """Index of the length period used at each time (seconds, ServeGen clock): the period in force, or the
        nearest period with data (the earlier one on a tie) when it has none; -1 when no period has data."""
        has_data = np.array([d is not None for d in self.input_tokens]) & np.array(
            [d is not None for d in self.output_tokens])
        available = np.flatnonzero(has_data)
        if available.size == 0:
            return np.full(np.shape(time_s), -1, dtype=np.int64)
        period = np.clip(np.searchsorted(self.period_start_s, time_s, side="right") - 1, 0, None)
        starts = self.period_start_s[available]
        right = np.clip(np.searchsorted(starts, self.period_start_s, side="left"), 0, available.size - 1)
        left = np.clip(right - 1, 0, None)
        nearer_left = np.abs(self.period_start_s - starts[left]) <= np.abs(starts[right] - self.period_start_s)
        nearest = np.where(nearer_left, available[left], available[right])
        return nearest[period]

    def mean_tokens(self, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean input and output tokens of the distribution used at each time (NaN where no period has data)."""
        period = self.periods_for(time_s)
        inputs = np.array([d.mean if d else np.nan for d in self.input_tokens] + [np.nan])
        outputs = np.array([d.mean if d else np.nan for d in self.output_tokens] + [np.nan])
        return inputs[period], outputs[period]


# ------------------------------------------------------------------------------------------------ reading


def find_clients(directory: str | Path) -> list[str]:
    """Names of the clients under `directory` (every `*-trace.csv` with its `*-dataset.json`), sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(root, "no such ServeGen directory")
    names = []
    for trace in sorted(root.rglob(f"*{TRACE_SUFFIX}")):
        name = trace.relative_to(root).as_posix()[: -len(TRACE_SUFFIX)]
        if not (root / f"{name}{DATASET_SUFFIX}").is_file():
            raise InputError(root / f"{name}{DATASET_SUFFIX}", f"missing: the dataset half of client {name}")
        names.append(name)
    for dataset in sorted(root.rglob(f"*{DATASET_SUFFIX}")):
        name = dataset.relative_to(root).as_posix()[: -len(DATASET_SUFFIX)]
        if name not in names:
            raise InputError(root / f"{name}{TRACE_SUFFIX}", f"missing: the trace half of client {name}")
    if not names:
        raise InputError(root, f"no ServeGen clients (*{TRACE_SUFFIX} with *{DATASET_SUFFIX}) in this directory")
    return names


def select_clients(names: list[str], patterns: tuple[str, ...] | list[str] | None) -> list[str]:
    """The names matching any of `patterns` (exact names or globs, e.g. `language/m-small/*`), in order; all
    when `patterns` is None. A pattern matching nothing is an error."""
    if not patterns:
        return list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise BurstGPTError(f"--clients: {pattern!r} matches no client (clients: {shown})")
        chosen.update(matched)
    return [n for n in names if n in chosen]


def load_client(directory: str | Path, name: str) -> ServeGenClient:
    """Read client `name` (its trace and dataset files) from the pool `directory`."""
    root = Path(directory)
    trace = read_trace(root / f"{name}{TRACE_SUFFIX}")
    dataset_path = root / f"{name}{DATASET_SUFFIX}"
    period_start, inputs, outputs = read_dataset(dataset_path)
    return ServeGenClient(name=name, period_start_s=period_start, input_tokens=inputs, output_tokens=outputs,
                          dataset_path=str(dataset_path), **trace)


def read_trace(path: str | Path) -> dict[str, np.ndarray]:
    """The windows of a `*-trace.csv`: window_start_s, window_end_s, rate_rps, cv, process (arrays of shape
    (W,)). A bad row is an `InputError` naming the file, the line and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {exc}") from None
    lines = pl.DataFrame({"raw": text.splitlines()}, schema={"raw": pl.Utf8}).with_row_index("line", offset=1)
    lines = lines.filter(pl.col("raw").str.strip_chars() != "")
    if lines.height == 0:
        raise InputError(path, "no windows")
    commas = lines["raw"].str.count_matches(",")
    bad = first_true_index(commas != len(TRACE_COLUMNS) - 1)
    if bad is not None:
        raise InputError(path, f"expected {len(TRACE_COLUMNS)} comma-separated fields ({','.join(TRACE_COLUMNS)}), "
                               f"found {commas[bad] + 1}", line=int(lines["line"][bad]))
    fields = lines.select(
        "line",
        pl.col("raw").str.split_exact(",", len(TRACE_COLUMNS) - 1)
        .struct.rename_fields(list(TRACE_COLUMNS)).alias("fields"),
    ).unnest("fields").with_columns(pl.col(TRACE_COLUMNS).str.strip_chars())
    numeric = {}
    for name in ("window_start_s", "rate_rps", "cv", "shape", "scale"):
        raw = fields[name]
        values = raw.cast(pl.Float64, strict=False)
        # shape and scale may be empty (they are not used); the rest must be numbers
        missing = values.is_null() & (raw != "") if name in ("shape", "scale") else values.is_null()
        _raise_at(path, fields, missing, name, "not a number: {value!r}", raw)
        numeric[name] = values.to_numpy()
    start, rate, cv = numeric["window_start_s"], numeric["rate_rps"], numeric["cv"]
    pattern = fields["pattern"]
    checks = [
        ("window_start_s", ~np.isfinite(start) | (start < 0), "window start must be a finite number >= 0"),
        ("window_start_s", np.r_[False, np.diff(start) <= 0], "window starts must increase"),
        ("rate_rps", ~np.isfinite(rate) | (rate < 0), "rate must be a finite number >= 0 (requests/s)"),
        ("cv", ~np.isfinite(cv) | (cv < 0), "CV must be a finite number >= 0"),
        ("pattern", ~pattern.is_in(["", *PATTERN_PROCESSES]).to_numpy(),
         f"pattern must be {' or '.join(PATTERN_PROCESSES)} (or empty for an idle window)"),
        ("pattern", (rate > 0) & (pattern == "").to_numpy(), "a window with requests needs a pattern"),
    ]
    for column, mask, message in checks:
        _raise_at(path, fields, pl.Series(mask), column, message + ", got {value!r}", fields[column])
    process = pattern.replace_strict(PATTERN_PROCESSES, default="", return_dtype=pl.Utf8).to_numpy().astype(str)
    process = np.where((rate > 0) & (cv == 0), "constant", np.where(rate > 0, process, ""))
    last = start[-1] - start[-2] if start.size > 1 else WINDOW_S
    return {"window_start_s": start, "window_end_s": np.append(start[1:], start[-1] + last), "rate_rps": rate,
            "cv": cv, "process": process}


def _raise_at(path: Path, fields: pl.DataFrame, mask: pl.Series, column: str, message: str, raw: pl.Series) -> None:
    bad = first_true_index(mask)
    if bad is not None:
        raise InputError(path, message.format(value=raw[bad]), line=int(fields["line"][bad]), column=column)


def read_dataset(path: str | Path) -> tuple[np.ndarray, tuple, tuple]:
    """The length periods of a `*-dataset.json`: period starts (P,) (seconds, sorted) and, per period, the
    input and output `LengthDistribution` (None where the period has no data). Parsed files are cached by
    path, size and modification time (a sweep builds many workloads from one pool; literal parsing of a large
    client costs ~0.3 s)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise InputError(path, "no such file") from None
    return _read_dataset(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _read_dataset(name: str, size: int, mtime_ns: int) -> tuple[np.ndarray, tuple, tuple]:
    path = Path(name)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON: {exc.msg}", line=exc.lineno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected an object {period_start_s: {input_tokens, output_tokens}}")
    periods = []
    for key, value in data.items():
        try:
            start = float(key)
        except ValueError:
            start = math.nan
        if not (math.isfinite(start) and start >= 0):
            raise InputError(path, f"period key {key!r} is not a start time in seconds",
                             line=_line_of(text, key), column=key)
        if not isinstance(value, dict):
            raise InputError(path, "a period must be an object with input_tokens and output_tokens",
                             line=_line_of(text, key), column=key)
        distributions = []
        for name in LENGTH_FIELDS:
            if name not in value:
                raise InputError(path, f"period {key} has no {name}", line=_line_of(text, key), column=f"{key}.{name}")
            try:
                distributions.append(_parse_distribution(value[name]))
            except ValueError as exc:
                raise InputError(path, str(exc), line=_line_of(text, key, name), column=f"{key}.{name}") from None
        periods.append((start, *distributions))
    periods.sort(key=lambda p: p[0])
    starts = np.array([p[0] for p in periods])
    if np.any(np.diff(starts) == 0):
        raise InputError(path, "two periods start at the same time")
    return starts, tuple(p[1] for p in periods), tuple(p[2] for p in periods)


def _parse_distribution(text) -> LengthDistribution | None:
    """A `{tokens: probability}` Python-dict string -> LengthDistribution (None for "{}"), by `ast.literal_eval`
    (literals only: never code). ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError("expected a string holding a {tokens: probability} dict")
    try:
        table = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("not a literal {tokens: probability} dict") from None
    if not isinstance(table, dict):
        raise ValueError("expected a {tokens: probability} dict")
    if not table:
        return None
    tokens = list(table)
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise ValueError("token counts (keys) must be integers >= 0")
    probability = list(table.values())
    if not all(isinstance(p, int | float) and not isinstance(p, bool) for p in probability):
        raise ValueError("probabilities (values) must be numbers")
    p = np.array(probability, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not p.sum() > 0:
        raise ValueError("probabilities must be finite, >= 0 and not all 0")
    if abs(p.sum() - 1.0) > 1e-3:
        raise ValueError(f"probabilities sum to {p.sum():.6g}, not 1")
    order = np.argsort(np.array(tokens, dtype=np.int64), kind="stable")
    return LengthDistribution(np.array(tokens, dtype=np.int64)[order], (p / p.sum())[order])


def _line_of(text: str, key: str, name: str | None = None) -> int | None:
    """1-based line of `"key":` (then of `"name":` after it) in a JSON text, for error messages."""
    at = text.find(f'"{key}"')
    if at < 0:
        return None
    if name is not None:
        inner = text.find(f'"{name}"', at)
        at = inner if inner >= 0 else at
    return text.count("\n", 0, at) + 1


def read_rate_function(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A CSV with columns time_s (seconds from the workload's start; the first 0, increasing) and rate_rps
    (aggregate requests/s from that time until the next row; the last row holds to the end)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such rate-function file")
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # polars raises several error types
        raise InputError(path, f"cannot read the rate function: {str(exc).splitlines()[0]}") from None
    for name in ("time_s", "rate_rps"):
        if name not in frame.columns:
            raise InputError(path, f"the rate function needs columns time_s, rate_rps; missing {name!r}", line=1)
    if frame.height == 0:
        raise InputError(path, "the rate function has no rows")
    values = {}
    for name in ("time_s", "rate_rps"):
        raw = frame[name].str.strip_chars()
        parsed = raw.cast(pl.Float64, strict=False)
        bad = first_true_index(parsed.is_null() | ~parsed.is_finite() | (parsed < 0))
        if bad is not None:
            raise InputError(path, f"expected a finite number >= 0, got {raw[bad]!r}", line=bad + 2, column=name)
        values[name] = parsed.to_numpy()
    time_s = values["time_s"]
    if time_s[0] != 0:
        raise InputError(path, "the first time_s must be 0 (the workload's start)", line=2, column="time_s")
    bad = first_true_index(pl.Series(np.r_[False, np.diff(time_s) <= 0]))
    if bad is not None:
        raise InputError(path, "time_s must increase", line=bad + 2, column="time_s")
    return time_s, values["rate_rps"]


# ------------------------------------------------------------------------------------------------ composing


@dataclass(frozen=True)
class ClientFilters:
    """Keep clients whose statistics over the span lie in these bounds (None = no bound): mean rate
    (requests/s, time average), CV (request-weighted mean of the window CVs) and mean input length (tokens,
    request-weighted)."""

    min_rate_rps: float | None = None
    max_rate_rps: float | None = None
    min_cv: float | None = None
    max_cv: float | None = None
    min_input_tokens: float | None = None
    max_input_tokens: float | None = None

    def keep(self, summary: pl.DataFrame) -> pl.Series:
        """Boolean mask over the rows of `client_summary`."""
        mask = pl.Series([True] * summary.height)
        for column, low, high in (("mean_rate_rps", self.min_rate_rps, self.max_rate_rps),
                                  ("cv", self.min_cv, self.max_cv),
                                  ("mean_input_tokens", self.min_input_tokens, self.max_input_tokens)):
            values = summary[column].fill_nan(None)
            if low is not None:
                mask &= (values >= low).fill_null(False)
            if high is not None:
                mask &= (values <= high).fill_null(False)
        return mask


@dataclass(frozen=True)
class PoolGrid:
    """Every client's windows cut at common edges over the span: step i is [edges[i], edges[i+1]) in seconds
    of ServeGen's clock, and client c's recorded rate, CV and process on it are rate[c, i], cv[c, i],
    process[c, i]."""

    edges: np.ndarray  # (I + 1,)
    rate_rps: np.ndarray  # (C, I)
    cv: np.ndarray  # (C, I)
    process: np.ndarray  # (C, I) str, "" where the client is idle or not recorded

    @property
    def lengths_s(self) -> np.ndarray:
        return np.diff(self.edges)


def pool_grid(clients: list[ServeGenClient], start_s: float, end_s: float, extra_edges=()) -> PoolGrid:
    """The clients' windows on common edges over [start_s, end_s), cut also at `extra_edges` (seconds)."""
    edges = [np.array([start_s, end_s]), np.asarray(extra_edges, dtype=np.float64)]
    for client in clients:
        edges += [client.window_start_s, client.window_end_s]
    edges = np.unique(np.concatenate(edges))
    edges = edges[(edges >= start_s) & (edges <= end_s)]
    step_start = edges[:-1]
    shape = (len(clients), step_start.size)
    rate, cv, process = np.zeros(shape), np.zeros(shape), np.full(shape, "", dtype="<U8")
    for c, client in enumerate(clients):  # a loop over clients, vectorised over windows
        w = np.searchsorted(client.window_start_s, step_start, side="right") - 1
        inside = (w >= 0) & (step_start < client.window_end_s[np.clip(w, 0, None)])
        w = np.clip(w, 0, None)
        rate[c] = np.where(inside, client.rate_rps[w], 0.0)
        cv[c] = np.where(inside, client.cv[w], 0.0)
        process[c] = np.where(inside, client.process[w], "")
    return PoolGrid(edges, rate, cv, process)


def client_summary(clients: list[ServeGenClient], start_s: float, end_s: float) -> pl.DataFrame:
    """Per client over [start_s, end_s): client_id, mean_rate_rps (requests/s, time average), cv
    (request-weighted mean of the window CVs), mean_input_tokens and mean_output_tokens (request-weighted over
    the length periods, NaN without data), expected_requests."""
    grid = pool_grid(clients, start_s, end_s)
    requests = grid.rate_rps * grid.lengths_s  # (C, I) expected requests per step
    span = end_s - start_s
    rows = {"client_id": [], "mean_rate_rps": [], "cv": [], "mean_input_tokens": [], "mean_output_tokens": [],
            "expected_requests": []}
    for c, client in enumerate(clients):
        weight = requests[c]
        total = weight.sum()
        inputs, outputs = client.mean_tokens(grid.edges[:-1])
        with np.errstate(invalid="ignore"):
            rows["client_id"].append(client.name)
            rows["mean_rate_rps"].append(total / span)
            rows["cv"].append(float(np.dot(weight, grid.cv[c]) / total) if total > 0 else math.nan)
            rows["mean_input_tokens"].append(_weighted(inputs, weight))
            rows["mean_output_tokens"].append(_weighted(outputs, weight))
            rows["expected_requests"].append(float(total))
    return pl.DataFrame(rows)


def _weighted(values: np.ndarray, weight: np.ndarray) -> float:
    known = np.isfinite(values) & (weight > 0)
    return float(np.dot(values[known], weight[known]) / weight[known].sum()) if known.any() else math.nan


@dataclass
class ComposedPool:
    """Requests of a composed pool, merged by time: arrival_s (n,) seconds from the span's start, client (n,)
    index into `names`, input_tokens and output_tokens (n,) int64; `schedules` the arrival schedule of each
    client (None when it is silent over the span); `notes` remarks for the user."""

    arrival_s: np.ndarray
    client: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    names: list[str]
    schedules: list[ParamSchedule | None]
    notes: list[str] = field(default_factory=list)

    @property
    def client_id(self) -> pl.Series:
        return pl.Series("client_id", np.asarray(self.names, dtype=object)[self.client], dtype=pl.Utf8) \
            if self.names else pl.Series("client_id", [], dtype=pl.Utf8)


def client_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The seed sequence of one client: from the workload seed and the client's name, so a client's requests do
    not depend on which other clients are chosen."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def compose_pool(
    clients: list[ServeGenClient],
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    target_rate_rps: float | None = None,
    rate_fn: tuple[np.ndarray, np.ndarray] | None = None,
    num_requests: int | None = None,
    seed: int = 0,
) -> ComposedPool:
    """The requests of `clients` over [start_s, start_s + duration_s) of ServeGen's clock (default: to the end
    of the longest client), scaled as the module docstring says; at most `num_requests`. Times in the result
    start at 0 = `start_s`."""
    if not clients:
        raise BurstGPTError("no ServeGen clients chosen")
    if target_rate_rps is not None and rate_fn is not None:
        raise BurstGPTError("give --target-rate or --rate-fn, not both")
    start_s, end_s = pool_span(clients, start_s, duration_s)
    duration_s = end_s - start_s
    recorded_end = max(float(c.window_end_s[-1]) for c in clients)
    notes = []
    if end_s > recorded_end:
        notes.append(f"the span ends at {end_s:g} s of ServeGen's clock but the clients' windows end at "
                     f"{recorded_end:g} s: no requests after that")
    grid = pool_grid(clients, start_s, end_s, () if rate_fn is None else start_s + rate_fn[0])
    lengths = grid.lengths_s
    recorded = grid.rate_rps.sum(axis=0)  # (I,) aggregate recorded rate
    if target_rate_rps is not None:
        if not (math.isfinite(target_rate_rps) and target_rate_rps > 0):
            raise BurstGPTError(f"--target-rate must be positive, got {target_rate_rps}")
        recorded_requests = float(np.dot(recorded, lengths))
        if recorded_requests <= 0:
            raise BurstGPTError("the chosen clients have no requests in the span: nothing to scale")
        factor = np.full(lengths.size, target_rate_rps * duration_s / recorded_requests)
    elif rate_fn is not None:
        times, rates = rate_fn
        wanted = rates[np.searchsorted(times, grid.edges[:-1] - start_s, side="right") - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(recorded > 0, wanted / recorded, 0.0)
        lost = float(np.dot(np.where(recorded > 0, 0.0, wanted), lengths))
        if lost > 0:
            notes.append(f"the rate function asks for {lost:.0f} requests where no chosen client is recorded "
                         "(rate 0): those stay silent")
    else:
        factor = np.ones(lengths.size)

    arrivals, owners, inputs, outputs, schedules = [], [], [], [], []
    for c, client in enumerate(clients):  # a loop over clients; each client's work is vectorised
        schedule = client_schedule(grid, c, factor)
        schedules.append(schedule)
        if schedule is None:
            continue
        arrival_stream, input_stream, output_stream = (
            np.random.default_rng(s) for s in client_seed(seed, client.name).spawn(3))
        times = scheduled_arrivals(schedule, arrival_stream, num_requests=num_requests, duration_s=duration_s,
                                   stationary_start=True)
        if times.size == 0:
            continue
        drawn_in, drawn_out = draw_lengths(client, start_s + times, input_stream, output_stream)
        arrivals.append(times)
        owners.append(np.full(times.size, c, dtype=np.int64))
        inputs.append(drawn_in)
        outputs.append(drawn_out)
    if not arrivals:
        raise BurstGPTError("the chosen clients send no request in the span")
    arrival_s = np.concatenate(arrivals)
    order = np.argsort(arrival_s, kind="stable")[:num_requests]
    return ComposedPool(arrival_s[order], np.concatenate(owners)[order], np.concatenate(inputs)[order],
                        np.concatenate(outputs)[order], [c.name for c in clients], schedules, notes)


def pool_span(clients: list[ServeGenClient], start_s: float, duration_s: float | None) -> tuple[float, float]:
    """[start, end) of ServeGen's clock that a pool covers: `duration_s` from `start_s`, by default to the end of
    the clients' last window."""
    if not (math.isfinite(start_s) and start_s >= 0):
        raise BurstGPTError(f"--start-s must be a finite number >= 0, got {start_s}")
    if duration_s is not None:
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise BurstGPTError(f"--duration must be positive, got {duration_s}")
        return float(start_s), float(start_s + duration_s)
    recorded_end = max(float(c.window_end_s[-1]) for c in clients)
    if not recorded_end > start_s:
        raise BurstGPTError(f"--start-s {start_s:g} is past the clients' last window (ends at {recorded_end:g} s)")
    return float(start_s), recorded_end


def client_schedule(grid: PoolGrid, c: int, factor: np.ndarray) -> ParamSchedule | None:
    """Client c's arrival schedule on the grid (seconds from the span's start): each step keeps its recorded CV
    and family and gets rate x factor; None when the client is silent over the whole span."""
    rate = grid.rate_rps[c] * factor
    live = (rate > 0) & (grid.process[c] != "")
    if not live.any():
        return None
    kinds = np.where(live, grid.process[c], "gamma")  # silent steps: any family, their scale is inf
    shape = np.ones(rate.size)
    for kind in np.unique(kinds[live]):
        mask = live & (kinds == kind)
        shape[mask] = get_process(str(kind)).shape_for_cv(grid.cv[c][mask])
    schedule = ParamSchedule(grid.edges[:-1] - grid.edges[0], shape, np.ones(rate.size), "seconds",
                             float(grid.edges[-1] - grid.edges[0]), step_process=kinds)
    with np.errstate(divide="ignore"):
        beta_s = np.where(live, 1.0 / (schedule.mean_gap_s() * np.where(live, rate, 1.0)), np.inf)
    return ParamSchedule(schedule.starts, shape, beta_s, "seconds", schedule.end, step_process=kinds)


def draw_lengths(
    client: ServeGenClient, time_s: np.ndarray, input_rng: np.random.Generator, output_rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Input and output tokens (int64, (n,)) of requests at sorted times `time_s` (ServeGen clock), from the
    distributions of each request's period (`ServeGenClient.periods_for`). One draw per run of requests
    sharing a period, not per request. Input lengths are at least 1 token."""
    period = client.periods_for(time_s)
    if period.size and period[0] < 0:
        raise InputError(client.dataset_path or client.name,
                         "no period has input_tokens and output_tokens data: no lengths to draw for its requests")
    inputs = np.empty(period.size, dtype=np.int64)
    outputs = np.empty(period.size, dtype=np.int64)
    # Times are sorted, so periods come in runs (the fallback can map two runs to one period: drawn separately).
    bounds = np.flatnonzero(np.diff(period)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, period.size]):
        p = int(period[lo])
        source_in, source_out = client.input_tokens[p], client.output_tokens[p]
        inputs[lo:hi] = input_rng.choice(source_in.tokens, size=hi - lo, p=source_in.probability)
        outputs[lo:hi] = output_rng.choice(source_out.tokens, size=hi - lo, p=source_out.probability)
    return np.maximum(inputs, 1), outputs


def load_pool(directory: str | Path, patterns=None) -> list[ServeGenClient]:
    """The clients of `directory` whose names match `patterns` (see `select_clients`), loaded."""
    return [load_client(directory, name) for name in select_clients(find_clients(directory), patterns)]


def filter_clients(
    clients: list[ServeGenClient], filters: ClientFilters, start_s: float, end_s: float
) -> list[ServeGenClient]:
    """The clients whose statistics over [start_s, end_s) pass `filters`; an error when none does."""
    if filters == ClientFilters():
        return clients
    keep = filters.keep(client_summary(clients, start_s, end_s)).to_numpy()
    kept = [c for c, k in zip(clients, keep) if k]
    if not kept:
        raise BurstGPTError(f"no ServeGen client passes the client filters ({len(clients)} before filtering)")
    return kept
