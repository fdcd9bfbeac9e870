"""Generated prefix sharing for generated, mirrored and fitted workloads: shared system prompts and multi-turn
sessions, written as `prefix_block_ids` (blocks of `block_size` tokens; equal ids = identical text, which the
client makes, `burstgpt.client.prompts`) and `session_id` / `turn` / `think_time_s`.

- **System prompts**: a `fraction` of requests (of sessions, with sessions) start with one of `pool_size`
  shared system prompts of `tokens` tokens (rounded up to whole blocks), picked with Zipf popularity: prompt r
  of the pool (r = 1..pool_size) with probability proportional to r**-popularity (0 = uniform). The system
  prompt comes on top of the request's drawn length.
- **Sessions**: requests are grouped, in arrival order, into sessions whose number of turns is geometric with
  mean `mean_turns`. A session starts at its first request's arrival (so the timeline of sessions keeps the
  arrival process's burstiness and the request count is unchanged); turn k > 0 comes a think time after turn
  k-1 (log-normal: median `think_time_s`, log-sd `think_time_sigma`), and its `arrival_s` is the previous
  turn's arrival plus that think time (the client sends it only after the previous turn has ended, plus the
  think time: `burstgpt.client.runner`). Turn k's prompt is the conversation so far: the system prompt, every
  earlier message and answer, and its own message (its drawn length), so its `prefix_block_ids` extend the
  previous turn's: previous ids + ids for the previous answer and the new message. Answers count with the
  workload's output_tokens (fixed or empirical responses); responses left to the model count as 0 tokens.
  With `max_context_tokens`, a turn whose prompt would exceed it starts a new session instead (a new
  conversation), so prompts stay within the model's context (a single message may still exceed it).

Parameters left None are fitted from `PrefixSharing.trace` (system prompts from a trace with prefix block
ids, e.g. Mooncake: share of requests whose leading blocks recur, the number of distinct shared prefixes, their
median length and popularity; sessions from a trace with session ids, e.g. BurstGPT 8-column: mean turns per
session, log-normal think times from timestamps and elapsed times), else take the defaults below.
Deterministic with the workload seed (its own random stream).

    from burstgpt.workload.prefixes import PrefixSharing, Sessions, SystemPrompts
    spec = WorkloadSpec(..., prefixes=PrefixSharing(SystemPrompts(fraction=0.8), Sessions(mean_turns=4)))
"""

from __future__ import annotations

import dataclasses
import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.trace.schema import Trace
from burstgpt.workload.sessions import turn_columns

DEFAULT_BLOCK_SIZE = 64  # tokens per generated id: 4 of vLLM's 16-token blocks (text is the same at any size)
_PREFIX_STREAM = 4  # child 4 of the workload seed's SeedSequence (0-3 are `generate.seed_streams`)


@dataclass(frozen=True)
class SystemPrompts:
    """Shared system prompts (None = fitted from the trace, else the default)."""

    fraction: float | None = None  # share of requests (sessions) that start with one, 0-1; default 0.5
    pool_size: int | None = None  # distinct system prompts; default 16
    tokens: int | None = None  # length of each, tokens (rounded up to whole blocks); default 512
    popularity: float | None = None  # Zipf exponent over the pool's ranks (0 = uniform); default 1


@dataclass(frozen=True)
class Sessions:
    """Multi-turn sessions (None = fitted from the trace, else the default)."""

    mean_turns: float | None = None  # mean turns per session (geometric on 1, 2, ...); default 3
    think_time_s: float | None = None  # median think time, seconds; default 10
    think_time_sigma: float | None = None  # log-normal sigma of think times (0 = all the median); default 1
    max_context_tokens: int | None = None  # a turn that would exceed this starts a new session; None: no cap


SYSTEM_PROMPT_DEFAULTS = SystemPrompts(fraction=0.5, pool_size=16, tokens=512, popularity=1.0)
SESSION_DEFAULTS = Sessions(mean_turns=3.0, think_time_s=10.0, think_time_sigma=1.0, max_context_tokens=None)


@dataclass(frozen=True)
class PrefixSharing:
    """What to share: system prompts, sessions, or both; `block_size` tokens per generated prefix id;
    `trace`: fit the parameters left None from this trace (and enable the parts it has data for)."""

    system_prompts: SystemPrompts | None = None
    sessions: Sessions | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    trace: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrefixSharing:
        """The object `dataclasses.asdict` wrote (a `WorkloadSpec.to_dict` entry)."""
        data = dict(data)
        system = data.pop("system_prompts", None)
        sessions = data.pop("sessions", None)
        return cls(system_prompts=SystemPrompts(**system) if system is not None else None,
                   sessions=Sessions(**sessions) if sessions is not None else None, **data)


# ------------------------------------------------------------------------------------------------- fitting


def fit_prefix_sharing(trace: Trace, block_size: int = DEFAULT_BLOCK_SIZE) -> PrefixSharing:
    """System prompts fitted from a trace's prefix block ids and sessions from its session ids; a part is None
    when the trace has no data for it."""
    return PrefixSharing(system_prompts=fit_system_prompts(trace), sessions=fit_sessions(trace),
                         block_size=block_size)


def fit_system_prompts(trace: Trace) -> SystemPrompts | None:
    """Shared leading prefixes of a trace with prefix block ids (None without ids).

    A request's shared prefix is its run of leading blocks whose ids occur in another request too. `fraction`:
    requests with a shared prefix / all requests; `pool_size`: distinct first ids among them (one system
    prompt each); `tokens`: median shared-prefix length x the trace's block size; `popularity`: the Zipf
    exponent of the requests per distinct first id by rank (`burstgpt.analysis.fits.fit_zipf`)."""
    from burstgpt.analysis.fits import FitError, fit_zipf  # here: the analysis is slow to import

    frame = trace.frame
    if trace.prefix_block_size is None or frame["prefix_block_ids"].null_count() == frame.height:
        return None
    blocks = (frame.select("prefix_block_ids").with_row_index("request")
              .explode("prefix_block_ids").drop_nulls("prefix_block_ids"))
    if blocks.height == 0:
        return None
    shared = (
        blocks.with_columns((pl.len().over("prefix_block_ids") > 1).alias("shared"))
        .group_by("request", maintain_order=True)
        .agg(pl.col("shared").cum_prod().sum().alias("shared_blocks"), pl.col("prefix_block_ids").first())
        .filter(pl.col("shared_blocks") > 0)
    )
    if shared.height == 0:
        return SystemPrompts(fraction=0.0, pool_size=1, tokens=trace.prefix_block_size, popularity=0.0)
    per_prompt = shared.group_by("prefix_block_ids").len().sort("len", descending=True)["len"].to_numpy()
    ranks = np.repeat(np.arange(1, per_prompt.size + 1), per_prompt)
    try:
        popularity = fit_zipf(ranks, 1, per_prompt.size).theta
    except FitError:  # one shared prefix: popularity is meaningless
        popularity = 0.0
    return SystemPrompts(
        fraction=shared.height / frame.height,
        pool_size=int(per_prompt.size),
        tokens=int(round(shared["shared_blocks"].median() * trace.prefix_block_size)),
        popularity=float(popularity),
    )


def fit_sessions(trace: Trace) -> Sessions | None:
    """Turns per session and think times of a trace with session ids (None without them). Think times (end of
    one turn to the next send, `burstgpt.workload.sessions.turn_columns`) get a log-normal fit to the positive
    ones (median, log-sd); without positive think times the median is 0."""
    from burstgpt.analysis.sessions import session_table

    frame = trace.frame
    sessions = session_table(frame)
    if sessions.height == 0:
        return None
    think = turn_columns(frame)["think_time_s"].drop_nulls().to_numpy()
    positive = think[think > 0]
    log_think = np.log(positive) if positive.size else np.zeros(1)
    return Sessions(
        mean_turns=float(sessions["turns"].mean()),
        think_time_s=float(np.exp(np.median(log_think))) if positive.size else 0.0,
        think_time_sigma=float(np.std(log_think)) if positive.size > 1 else 0.0,
    )


def resolve_prefix_sharing(
    sharing: PrefixSharing, status: Callable[[str], Any] | None = None
) -> PrefixSharing:
    """`sharing` with every parameter set: by hand, else fitted from `sharing.trace`, else the default; a part
    given by hand or fitted from the trace is enabled. Raises `BurstGPTError` for an out-of-range value."""
    fitted = PrefixSharing()
    if sharing.trace is not None:
        from burstgpt.trace import load_trace

        def fit() -> PrefixSharing:
            return fit_prefix_sharing(load_trace(sharing.trace), sharing.block_size)

        if status is not None:
            with status(f"fitting prefix sharing to {sharing.trace}"):
                fitted = fit()
        else:
            fitted = fit()
        if fitted.system_prompts is None and fitted.sessions is None:
            raise BurstGPTError(f"{sharing.trace}: no prefix block ids and no session ids to fit prefix sharing to")
    system = _merged(sharing.system_prompts, fitted.system_prompts, SYSTEM_PROMPT_DEFAULTS)
    sessions = _merged(sharing.sessions, fitted.sessions, SESSION_DEFAULTS)
    resolved = PrefixSharing(system_prompts=system, sessions=sessions, block_size=sharing.block_size)
    _check(resolved)
    return resolved


def _merged(hand, fitted, defaults):
    if hand is None and fitted is None:
        return None
    values = {}
    for f in dataclasses.fields(defaults):
        chosen = [getattr(x, f.name) for x in (hand, fitted, defaults) if x is not None]
        values[f.name] = next((v for v in chosen if v is not None), None)
    return type(defaults)(**values)


def _check(sharing: PrefixSharing) -> None:
    def bad(flag: str, value, need: str) -> BurstGPTError:
        return BurstGPTError(f"{flag} must be {need}, got {value!r}")

    if not (isinstance(sharing.block_size, int) and sharing.block_size >= 1):
        raise bad("--prefix-block-size", sharing.block_size, "a positive whole number of tokens")
    system, sessions = sharing.system_prompts, sharing.sessions
    if system is not None:
        if not 0 <= system.fraction <= 1:
            raise bad("--system-prompts", system.fraction, "a fraction in [0, 1]")
        if not (int(system.pool_size) == system.pool_size and system.pool_size >= 1):
            raise bad("--system-prompt-pool", system.pool_size, "a positive whole number")
        if not (int(system.tokens) == system.tokens and system.tokens >= 1):
            raise bad("--system-prompt-tokens", system.tokens, "a positive whole number of tokens")
        if not (math.isfinite(system.popularity) and system.popularity >= 0):
            raise bad("--system-prompt-popularity", system.popularity, "a finite number >= 0")
    if sessions is not None:
        if not (math.isfinite(sessions.mean_turns) and sessions.mean_turns >= 1):
            raise bad("--sessions", sessions.mean_turns, "a mean number of turns >= 1")
        if not (math.isfinite(sessions.think_time_s) and sessions.think_time_s >= 0):
            raise bad("--think-time", sessions.think_time_s, "a number of seconds >= 0")
        if not (math.isfinite(sessions.think_time_sigma) and sessions.think_time_sigma >= 0):
            raise bad("--think-time-sigma", sessions.think_time_sigma, "a number >= 0")
        cap = sessions.max_context_tokens
        if cap is not None and not (int(cap) == cap and cap >= 1):
            raise bad("--session-max-tokens", cap, "a positive whole number of tokens")


# ---------------------------------------------------------------------------------------------- generation


def apply_prefix_sharing(
    frame: pl.DataFrame,
    sharing: PrefixSharing,
    *,
    seed: int,
    duration_s: float | None = None,
    replay: bool = False,
    notes: list[str] | None = None,
    status: Callable[[str], Any] | None = None,
) -> pl.DataFrame:
    """The workload `frame` (its drawn input lengths are each request's own message) with system prompts and
    sessions added as the module docstring describes: input_tokens grow by the system prompt and the
    conversation so far, later turns move later in time (turns at or after `duration_s` are dropped), rows are
    re-sorted by arrival and renumbered. `replay`: the frame replays a trace (system prompts only: a replayed
    trace keeps its own sessions)."""
    sharing = resolve_prefix_sharing(sharing, status)
    system, sessions, size = sharing.system_prompts, sharing.sessions, sharing.block_size
    if system is None and sessions is None or frame.height == 0:
        return frame
    if frame["prompt"].null_count() < frame.height:
        raise BurstGPTError("generated prefix sharing needs synthetic prompts (the client writes the shared "
                            "text): drop --prompts")
    if frame["prefix_block_ids"].null_count() < frame.height:
        raise BurstGPTError("the workload already has prefix block ids (from the trace); generated system prompts "
                            "would replace them")
    if sessions is not None and replay:
        raise BurstGPTError("a replayed trace keeps its own sessions (BurstGPT 8-column Session ID); --sessions is "
                            "for generated and mirrored workloads")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(_PREFIX_STREAM + 1)[_PREFIX_STREAM])
    n = frame.height
    # System prompts: whole blocks, prompt j has ids [j * blocks, (j + 1) * blocks). Drawn per request; a
    # session takes its first request's draw.
    system_blocks = math.ceil(system.tokens / size) if system is not None else 0
    system_tokens = system_blocks * size
    if system is not None:
        weights = np.arange(1, system.pool_size + 1, dtype=np.float64) ** -system.popularity
        has_system = rng.random(n) < system.fraction
        choice = rng.choice(system.pool_size, size=n, p=weights / weights.sum())
    else:
        has_system, choice = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    if sessions is None:
        input_tokens = frame["input_tokens"].to_numpy() + np.where(has_system, system_tokens, 0)
        row_system_blocks = np.where(has_system, system_blocks, 0)
        ids = _block_id_lists(choice * system_blocks, row_system_blocks, np.zeros(n, dtype=np.int64),
                              np.zeros(n, dtype=np.int64))
        return frame.with_columns(pl.Series("input_tokens", input_tokens, dtype=pl.Int64), *_prefix_columns(ids, size))

    turns = _session_turns(frame, sessions, has_system, system_tokens, rng, notes)
    # Per session: its system prompt (its first request's draw) and its number of turns.
    session_rows = turns.session_rows
    session_system_blocks = np.where(has_system[session_rows], system_blocks, 0)
    session_system_start = choice[session_rows] * system_blocks
    multi_turn = (np.diff(np.append(session_rows, n)) > 1)[turns.session]
    # A multi-turn session's own blocks (after its system prompt) get ids of its own, after every system
    # prompt's: its longest prompt (prompts only grow within a session) sets how many the session needs.
    own_blocks = turns.input_tokens + (size - 1)
    own_blocks //= size  # whole blocks the prompt spans, rounded up
    own_blocks -= session_system_blocks[turns.session]
    own_blocks[~multi_turn] = 0
    session_blocks = np.maximum.reduceat(own_blocks, session_rows)
    session_start = system_blocks * (system.pool_size if system is not None else 0) + (
        np.cumsum(session_blocks) - session_blocks)
    # Turns past the duration go; the rest are ordered by arrival. Rows are in (session, turn) order already,
    # so a stable sort by arrival breaks ties by session, then turn.
    order = np.flatnonzero(turns.arrival_s < duration_s) if duration_s is not None else np.arange(n)
    order = order[np.argsort(turns.arrival_s[order], kind="stable")]
    session, turn = turns.session[order], turns.turn[order]
    ids = _block_id_lists(session_system_start[session], session_system_blocks[session], session_start[session],
                          own_blocks[order])
    columns = [
        pl.int_range(order.size, dtype=pl.Int64).alias("request_id"),
        pl.Series("arrival_s", turns.arrival_s[order], dtype=pl.Float64),
        pl.Series("input_tokens", turns.input_tokens[order], dtype=pl.Int64),
        *_prefix_columns(ids, size),
        pl.Series("session_id", session).cast(pl.Utf8),
        pl.Series("turn", turn, dtype=pl.Int64),
        pl.Series("think_time_s", np.where(turn > 0, turns.think_time_s[order], np.nan)).fill_nan(None),
    ]
    # Only the columns kept as they are follow the new order (gathering the replaced ones would be wasted).
    replaced = {"request_id", "arrival_s", "input_tokens", "prefix_block_ids", "prefix_block_size", "session_id",
                "turn", "think_time_s"}
    out = frame.select(pl.col(c).gather(order) for c in frame.columns if c not in replaced).with_columns(columns)
    return out.select(*frame.columns, *(c for c in out.columns if c not in frame.columns))


@dataclass(frozen=True)
class _Turns:
    """Requests grouped into sessions, per row of the workload (n rows, in the workload's order)."""

    session: np.ndarray  # (n,) session of each row, 0-based; sessions are runs of consecutive rows
    session_rows: np.ndarray  # (sessions,) first row of each session
    turn: np.ndarray  # (n,) 0-based turn within the session
    think_time_s: np.ndarray  # (n,) seconds before the turn (0 for first turns)
    arrival_s: np.ndarray  # (n,) the session's first arrival plus the think times so far, seconds
    input_tokens: np.ndarray  # (n,) the conversation so far plus the system prompt, tokens


def _session_turns(frame: pl.DataFrame, sessions: Sessions, has_system: np.ndarray, system_tokens: int,
                   rng: np.random.Generator, notes: list[str] | None) -> _Turns:
    """Sessions over `frame`'s rows (module docstring); a session starting at row r has a system prompt of
    `system_tokens` tokens if has_system[r]. Every step works on whole arrays, in place where it can: at 10M
    requests each temporary is 80 MB."""
    n = frame.height
    starts = np.zeros(n, dtype=bool)
    starts[np.cumsum(_draw_turns(n, sessions.mean_turns, rng))[:-1]] = True
    starts[0] = True
    think = (rng.lognormal(math.log(sessions.think_time_s), sessions.think_time_sigma, n)
             if sessions.think_time_s > 0 else np.zeros(n))
    answers = frame["output_tokens"].fill_null(0).to_numpy()
    if frame["output_tokens"].null_count() and notes is not None:
        notes.append("sessions: responses left to the model count as 0 tokens of conversation history; fix "
                     "response lengths (--response fixed or empirical) to carry answers into later turns")
    exchange = frame["input_tokens"].to_numpy() + answers
    # Every message up to each row and every answer before it, since the workload's start.
    history = np.cumsum(exchange)
    history -= answers
    before = history - frame["input_tokens"].to_numpy()  # ... and before the row's own message
    while True:
        session = np.cumsum(starts, dtype=np.int64)
        session -= 1
        session_rows = np.flatnonzero(starts)
        # The conversation so far: the history since the session's first row, and its system prompt.
        input_tokens = (np.where(has_system[session_rows], system_tokens, 0) - before[session_rows])[session]
        input_tokens += history
        if sessions.max_context_tokens is None:
            break
        # A turn that would overflow the context starts a new session (a new conversation) instead.
        over = np.flatnonzero((input_tokens > sessions.max_context_tokens) & ~starts)
        if over.size == 0:
            break
        starts[over[np.unique(session[over], return_index=True)[1]]] = True
    turn = np.arange(n)
    turn -= session_rows[session]
    think[starts] = 0.0
    # Each turn comes the think times since its session's first request after that request's arrival.
    elapsed = np.cumsum(think)
    elapsed -= elapsed[session_rows][session]
    arrival = frame["arrival_s"].to_numpy()[session_rows][session]
    arrival += elapsed
    return _Turns(session, session_rows, turn, think, arrival, input_tokens)


def _block_id_lists(first_start: np.ndarray, first_count: np.ndarray, second_start: np.ndarray,
                    second_count: np.ndarray) -> pl.Series:
    """Per row, the List(Int64) of ids first_start .. first_start + first_count - 1 followed by second_start ..
    second_start + second_count - 1 (null where both counts are 0). The flat ids are written once, in NumPy, and
    handed to Polars with their offsets as an Arrow list array (nanoarrow; no copy): building the lists in
    Polars (concatenated ranges, or a group-by of the flat ids) costs about three times the memory, and on a
    10M-request workload with sessions the ids alone are ~2.5 GB."""
    import nanoarrow  # here: only generated prefix sharing needs it

    counts = first_count + second_count
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    # Flat position i of a range starting at position p with id s holds s + (i - p): i plus the range's
    # shift s - p. Running sums of 1 give i; each range adds its shift minus the previous range's where it
    # starts (an empty range starts where the next one does, so the shifts telescope). Ranges ending the
    # flat ids start at `total`: one spare slot takes them.
    second_at = offsets[:-1] + first_count
    first_shift = first_start - offsets[:-1]
    second_shift = second_start - second_at
    second_change = second_shift - first_shift
    first_shift[1:] -= second_shift[:-1]  # now the change at each first range
    values = _system_paged_int64(total + 1)
    values[1:] = 1
    np.add.at(values, offsets[:-1], first_shift)
    np.add.at(values, second_at, second_change)
    np.cumsum(values, out=values)
    has = counts > 0
    flat = nanoarrow.c_array_from_buffers(nanoarrow.int64(), total, [None, values[:total]], null_count=0)
    lists = nanoarrow.c_array_from_buffers(nanoarrow.large_list(nanoarrow.int64()), counts.size,
                                           [np.packbits(has, bitorder="little"), offsets],
                                           null_count=int(counts.size - has.sum()), children=[flat])
    return pl.Series(lists).alias("prefix_block_ids")


def _system_paged_int64(size: int) -> np.ndarray:
    """A zeroed, writable int64 array of `size` in an anonymous memory map, paged by the system's default
    policy. NumPy advises huge pages for large arrays; under the kernel's usual setting (THP defrag=madvise) a
    fault in such memory compacts memory synchronously, which made first writing the ~2.5 GB of ids of a
    10M-request workload 2-3x slower on a long-running machine (benchmarks/bench_workload.py)."""
    return np.frombuffer(mmap.mmap(-1, size * 8), dtype=np.int64)


def _prefix_columns(ids: pl.Series, size: int) -> list[pl.Series]:
    """prefix_block_ids and prefix_block_size (`size` where a row has ids, else null)."""
    return [ids, pl.select(pl.when(ids.is_not_null()).then(pl.lit(size, dtype=pl.Int64))
                           .alias("prefix_block_size")).to_series()]


def _draw_turns(n: int, mean_turns: float, rng: np.random.Generator) -> np.ndarray:
    """Turns per session, geometric with mean `mean_turns`, summing to exactly `n` (the last session cut)."""
    batches, total = [], 0
    while total < n:
        batch = rng.geometric(1.0 / mean_turns, size=int((n - total) / mean_turns * 1.1) + 16)
        batches.append(batch)
        total += int(batch.sum())
    turns = np.concatenate(batches).astype(np.int64)
    ends = np.cumsum(turns)
    last = int(np.searchsorted(ends, n))  # the session holding request n-1
    turns = turns[: last + 1]
    turns[-1] -= ends[last] - n
    return turns
