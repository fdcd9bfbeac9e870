"""Statistics and plots of a workload table (`burstgpt workload inspect`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.outputs import atomic_path


def default_window_s(frame: pl.DataFrame) -> float:
    """Window for rate and alpha/beta plots: the span / 50, at least 1 s."""
    span = float(frame["arrival_s"].max() - frame["arrival_s"].min()) if frame.height > 1 else 1.0
    return max(span / 50.0, 1.0)


def workload_stats(frame: pl.DataFrame) -> dict[str, object]:
    """Summary of a workload: counts, span and rates (requests/s), overall Gamma fit of the gaps, request-length
    quantiles and Zipf fit (tokens), response settings, prompt and service coverage, clients; sessions
    (`session_stats`) and prefixes (`prefix_stats`) when the workload has them."""
    from burstgpt.analysis.fits import FitError, fit_gamma, fit_zipf, interarrival_gaps

    stats: dict[str, object] = {"requests": frame.height}
    if frame.height == 0:
        return stats
    arrivals = frame["arrival_s"].to_numpy()
    span = float(arrivals[-1] - arrivals[0])
    stats["span_s"] = span
    stats["mean_rate_rps"] = frame.height / span if span > 0 else float("nan")
    window = default_window_s(frame)
    counts = np.bincount(np.floor((arrivals - arrivals[0]) / window).astype(np.int64))
    stats[f"peak_rate_rps_{window:.4g}s_window"] = float(counts.max() / window)
    gaps = np.diff(arrivals)
    if gaps.size >= 2 and gaps.mean() > 0:
        stats["gap_cv"] = float(gaps.std() / gaps.mean())
        # interarrival_gaps spreads quantised stamps (a replayed whole-second trace) inside their resolution.
        spread = interarrival_gaps(arrivals)
        try:  # a constant-rate workload has equal gaps: no Gamma shape
            gamma = fit_gamma(spread)
            stats["gamma_alpha"] = float(gamma.alpha)
            stats["gamma_beta_s"] = float(gamma.beta_s)
        except FitError:
            pass
    inputs = frame["input_tokens"].to_numpy()
    stats["input_tokens_mean"] = float(inputs.mean())
    for q in (50, 90, 99):
        stats[f"input_tokens_p{q}"] = float(np.percentile(inputs, q))
    stats["input_tokens_min"] = int(inputs.min())
    stats["input_tokens_max"] = int(inputs.max())
    positive_inputs = inputs[inputs > 0]
    if positive_inputs.size >= 2 and positive_inputs.min() < positive_inputs.max():
        stats["input_zipf_theta"] = float(fit_zipf(positive_inputs).theta)
    outputs = frame["output_tokens"]
    stats["output_tokens_set"] = int(outputs.is_not_null().sum())
    if outputs.is_not_null().any():
        stats["output_tokens_mean"] = float(outputs.mean())
    cap = frame["max_output_tokens"]
    stats["max_output_tokens"] = "none" if cap.is_null().all() else int(cap.max())
    stats["with_prompt"] = int(frame["prompt"].is_not_null().sum())
    services = frame["service"].drop_nulls().value_counts(sort=True)
    if services.height:
        stats["services"] = ", ".join(f"{s}={c}" for s, c in services.iter_rows())
    if "client_id" in frame.columns and frame["client_id"].is_not_null().any():
        stats["clients"] = int(frame["client_id"].n_unique() - int(frame["client_id"].is_null().any()))
    stats.update(session_stats(frame))
    stats.update(prefix_stats(frame))
    return stats


def _has_sessions(frame: pl.DataFrame) -> bool:
    return "session_id" in frame.columns and frame["session_id"].is_not_null().any()


def _has_prefix_ids(frame: pl.DataFrame) -> bool:
    return "prefix_block_ids" in frame.columns and bool((frame["prefix_block_ids"].list.len() > 0).any())


def session_stats(frame: pl.DataFrame) -> dict[str, object]:
    """Sessions of a workload with `session_id` (empty dict without): their count, turns per session (mean,
    median, p90, max), the share of sessions with more than one turn, and think times before later turns
    (seconds: how many are set, median, p90)."""
    if not _has_sessions(frame):
        return {}
    turns = frame["session_id"].drop_nulls().value_counts()["count"].to_numpy()
    stats: dict[str, object] = {
        "sessions": int(turns.size),
        "turns_per_session_mean": float(turns.mean()),
        "turns_per_session_p50": float(np.percentile(turns, 50)),
        "turns_per_session_p90": float(np.percentile(turns, 90)),
        "turns_per_session_max": int(turns.max()),
        "multi_turn_sessions": float(np.mean(turns > 1)),
    }
    think = frame["think_time_s"].drop_nulls().to_numpy() if "think_time_s" in frame.columns else np.zeros(0)
    stats["think_times_set"] = int(think.size)
    if think.size:
        stats["think_time_s_p50"] = float(np.percentile(think, 50))
        stats["think_time_s_p90"] = float(np.percentile(think, 90))
    return stats


def session_turns(frame: pl.DataFrame, max_turns: int = 10) -> pl.DataFrame:
    """Turns per session of a workload with sessions (empty without): turns (sessions of `max_turns` or more
    turns share the last row, labelled ">=max_turns"), sessions, share (of all sessions)."""
    if not _has_sessions(frame):
        return pl.DataFrame()
    turns = frame["session_id"].drop_nulls().value_counts()["count"]
    return (
        pl.DataFrame({"turns": turns.clip(upper_bound=max_turns)})
        .group_by("turns").agg(pl.len().alias("sessions")).sort("turns")
        .with_columns((pl.col("sessions") / turns.len()).alias("share"),
                      pl.when(pl.col("turns") >= max_turns).then(pl.lit(f">={max_turns}"))
                      .otherwise(pl.col("turns").cast(pl.Utf8)).alias("turns"))
    )


def _block_accesses(frame: pl.DataFrame, *columns: pl.Expr) -> pl.DataFrame:
    """One row per prefix block id of every request, in request order: request (row index), `columns` of the
    request, prefix_block_ids, seen_before (the block occurred in an earlier request, as `analyze` counts it)."""
    return (
        frame.select(*columns, "prefix_block_ids").with_row_index("request")
        .explode("prefix_block_ids").drop_nulls("prefix_block_ids")
        .with_columns((pl.col("request") > pl.col("request").min().over("prefix_block_ids")).alias("seen_before"))
    )


def prefix_stats(frame: pl.DataFrame) -> dict[str, object]:
    """Shared prefixes of a workload with prefix block ids (empty dict without): share of requests with ids,
    block size(s) (tokens per id), unique blocks, share of block accesses whose block occurred in an earlier
    request (the hit rate of an unbounded per-block cache), and share of prompt tokens inside id blocks."""
    if not _has_prefix_ids(frame):
        return {}
    ids = frame["prefix_block_ids"]
    has = ids.list.len().fill_null(0) > 0
    sizes = frame["prefix_block_size"].drop_nulls().unique().sort().to_list()
    accesses = _block_accesses(frame)
    covered = (ids.list.len().fill_null(0) * frame["prefix_block_size"].fill_null(0)).clip(upper_bound=None)
    covered_tokens = pl.select(pl.min_horizontal(covered, frame["input_tokens"]).sum()).item()
    return {
        "with_prefix_ids": float(has.mean()),
        "prefix_block_size": ", ".join(str(s) for s in sizes),
        "prefix_unique_blocks": int(accesses["prefix_block_ids"].n_unique()),
        "prefix_blocks_seen_before": float(accesses["seen_before"].mean()),
        "prefix_token_share": float(covered_tokens / max(int(frame["input_tokens"].sum()), 1)),
    }


def client_mix(frame: pl.DataFrame) -> pl.DataFrame:
    """The per-client mix of a workload with a `client_id` column (empty without one), most requests first:
    client_id, requests, share (of all requests), rate_rps (requests / the workload's span), gap_cv (sample
    CV of the client's inter-arrival gaps; biased low for heavy-tailed gaps), mean_input_tokens,
    mean_output_tokens (null where left to the model)."""
    if "client_id" not in frame.columns or frame.height == 0 or frame["client_id"].is_null().all():
        return pl.DataFrame()
    span = float(frame["arrival_s"].max() - frame["arrival_s"].min())
    gap = pl.col("arrival_s").diff().over("client_id")
    return (
        frame.filter(pl.col("client_id").is_not_null())
        .with_columns(gap.alias("gap_s"))
        .group_by("client_id")
        .agg(
            pl.len().alias("requests"),
            (pl.col("gap_s").std() / pl.col("gap_s").mean()).alias("gap_cv"),
            pl.col("input_tokens").mean().alias("mean_input_tokens"),
            pl.col("output_tokens").mean().alias("mean_output_tokens"),
        )
        .with_columns(
            (pl.col("requests") / frame.height).alias("share"),
            (pl.col("requests") / span if span > 0 else pl.lit(None, pl.Float64)).alias("rate_rps"),
        )
        .select("client_id", "requests", "share", "rate_rps", "gap_cv", "mean_input_tokens", "mean_output_tokens")
        .sort(["requests", "client_id"], descending=[True, False])
    )


#: Clients drawn separately in clients.png; the rest are stacked as one "other" band.
MAX_PLOTTED_CLIENTS = 10


def plot_workload(frame: pl.DataFrame, out_dir: str | Path, window_s: float | None = None) -> list[Path]:
    """Write rate.png (requests/s per window over time), gamma_params.png (per-window fitted alpha and beta),
    lengths.png (histograms of input and intended output tokens), for a workload with clients clients.png
    (requests/s of each client per window, stacked), with sessions sessions.png (turns per session, think
    times) and with prefix ids prefixes.png (reuse over time, prefix lengths) into `out_dir`. Returns the
    paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from burstgpt.analysis.fits import gamma_fit_per_window

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    window = window_s or default_window_s(frame)
    arrivals = frame["arrival_s"].to_numpy()
    written = []

    counts = np.bincount(np.floor((arrivals - arrivals[0]) / window).astype(np.int64))
    starts = arrivals[0] + np.arange(counts.size) * window
    fig, ax = plt.subplots(figsize=(9, 3.5))
    # The last window's end closes its step (a step plot ends at its last x otherwise).
    ax.step(np.append(starts, starts[-1] + window), np.append(counts, counts[-1]) / window, where="post")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"requests/s ({window:.4g} s windows)")
    ax.set_title("Instantaneous arrival rate")
    written.append(_save(fig, out_dir / "rate.png"))

    fits = gamma_fit_per_window(arrivals, window_s=window, min_arrivals=10, start_s=float(arrivals[0]))
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if fits.height:
        mid = (fits["window_start_s"] + fits["window_end_s"]).to_numpy() / 2
        ax.plot(mid, fits["alpha"].to_numpy(), "o-", color="C0", label="alpha (shape)")
        ax.set_ylabel("alpha", color="C0")
        twin = ax.twinx()
        twin.plot(mid, fits["beta_s"].to_numpy(), "s--", color="C1", label="beta (scale, s)")
        twin.set_ylabel("beta (s)", color="C1")
    ax.set_xlabel("time (s)")
    ax.set_title(f"Gamma fit of inter-arrival gaps per {window:.4g} s window")
    written.append(_save(fig, out_dir / "gamma_params.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    inputs = frame["input_tokens"].to_numpy()
    edges = np.unique(np.geomspace(max(inputs.min(), 1), max(inputs.max(), 2) + 1, 60).astype(np.int64))
    counts, edges = np.histogram(inputs, bins=edges)
    # Requests per token of length, so a Zipf law is a straight line on log-log axes.
    axes[0].stairs(counts / np.diff(edges), edges, fill=True)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("input tokens")
    axes[0].set_ylabel("requests per token")
    axes[0].set_title("Request lengths")
    outputs = frame["output_tokens"].drop_nulls().to_numpy()
    if outputs.size:
        axes[1].hist(outputs, bins=60)
        axes[1].set_xlabel("intended output tokens")
        axes[1].set_title("Response lengths")
    else:
        axes[1].text(0.5, 0.5, "left to the model", ha="center", va="center", transform=axes[1].transAxes)
        axes[1].set_axis_off()
    written.append(_save(fig, out_dir / "lengths.png"))
    mix = client_mix(frame)
    if mix.height:
        written.append(plot_client_rates(frame, mix, out_dir / "clients.png", window))
    if _has_sessions(frame):
        written.append(plot_sessions(frame, out_dir / "sessions.png"))
    if _has_prefix_ids(frame):
        written.append(plot_prefixes(frame, out_dir / "prefixes.png", window))
    return written


def plot_sessions(frame: pl.DataFrame, path: Path) -> Path:
    """Turns per session (share of sessions) and the distribution of think times (log-spaced bins)."""
    import matplotlib.pyplot as plt

    turns = session_turns(frame)
    think = frame["think_time_s"].drop_nulls().to_numpy()
    think = think[think > 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(turns["turns"].to_list(), turns["share"].to_numpy())
    axes[0].set_xlabel("turns per session")
    axes[0].set_ylabel("share of sessions")
    axes[0].set_title(f"Turns per session ({int(turns['sessions'].sum()):,} sessions)")
    if think.size:
        edges = np.geomspace(think.min(), think.max() * 1.0001, 50) if think.max() > think.min() else 10
        axes[1].hist(think, bins=edges)
        axes[1].set_xscale("log")
        axes[1].set_xlabel("think time before a later turn (s)")
        axes[1].set_ylabel("turns")
        axes[1].set_title(f"Think times (median {np.median(think):.3g} s)")
    else:
        axes[1].text(0.5, 0.5, "no think times", ha="center", va="center", transform=axes[1].transAxes)
        axes[1].set_axis_off()
    return _save(fig, path)


def plot_prefixes(frame: pl.DataFrame, path: Path, window_s: float) -> Path:
    """Per `window_s` window over time, the share of block accesses whose block occurred in an earlier request
    and the share of requests with ids; and the distribution of prefix lengths (tokens in id blocks) of the
    requests with ids."""
    import matplotlib.pyplot as plt

    start = float(frame["arrival_s"].min())
    window = ((pl.col("arrival_s") - start) // window_s).cast(pl.Int64).alias("window")
    seen = _block_accesses(frame, window).group_by("window").agg(pl.col("seen_before").mean()).sort("window")
    requests = frame.group_by(window).agg((pl.col("prefix_block_ids").list.len().fill_null(0) > 0).mean()
                                          .alias("with_ids")).sort("window")
    prefix_tokens = (frame["prefix_block_ids"].list.len() * frame["prefix_block_size"]).drop_nulls()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for table, column, label in ((seen, "seen_before", "block ids seen in an earlier request"),
                                 (requests, "with_ids", "requests with ids")):
        starts = start + table["window"].to_numpy() * window_s
        values = table[column].to_numpy()
        # The last window's end closes its step.
        axes[0].step(np.append(starts, starts[-1] + window_s), np.append(values, values[-1]), where="post",
                     label=label)
    axes[0].set_ylim(0, 1.02)
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel(f"share ({window_s:.4g} s windows)")
    axes[0].set_title("Prefix reuse over time")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].hist(prefix_tokens.to_numpy(), bins=60)
    axes[1].set_xlabel("prefix tokens per request (ids x block size)")
    axes[1].set_ylabel("requests")
    axes[1].set_title("Prefix lengths of requests with ids")
    return _save(fig, path)


def plot_client_rates(frame: pl.DataFrame, mix: pl.DataFrame, path: Path, window_s: float) -> Path:
    """Stacked requests/s of each client per `window_s` window over time (the MAX_PLOTTED_CLIENTS busiest
    clients, then the rest as one band)."""
    import matplotlib.pyplot as plt

    names = mix["client_id"].to_list()
    shown = names[:MAX_PLOTTED_CLIENTS]
    band = {name: i for i, name in enumerate(shown)}
    labels = shown + (["other clients"] if len(names) > len(shown) else [])
    clients = frame.filter(pl.col("client_id").is_not_null())
    codes = clients["client_id"].replace_strict(band, default=len(shown), return_dtype=pl.Int64).to_numpy()
    arrivals = clients["arrival_s"].to_numpy()
    # Windows from the workload's start (time 0), so they line up with recorded windows (ServeGen's 600 s).
    windows = np.floor(arrivals / window_s).astype(np.int64)
    num_windows = int(windows.max()) + 1
    counts = np.bincount(codes * num_windows + windows, minlength=len(labels) * num_windows)
    rates = counts.reshape(len(labels), num_windows) / window_s
    edges = np.arange(num_windows + 1) * window_s
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.stackplot(edges, np.column_stack([rates, rates[:, -1]]), labels=labels, step="post")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"requests/s ({window_s:.4g} s windows)")
    ax.set_title(f"Arrival rate per client ({len(names)} clients)")
    ax.legend(loc="upper left", fontsize=7, ncol=2 if len(labels) > 5 else 1, framealpha=0.8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
