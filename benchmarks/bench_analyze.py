"""Benchmark: load + analyze a generated BurstGPT-format CSV, against a straightforward pandas implementation of
the same statistics measured in the same run.

    .venv/bin/python benchmarks/bench_analyze.py                 # 10 million rows (target: < 10 s with the figures
                                                                 # and report.html; >= 10x pandas)
    .venv/bin/python benchmarks/bench_analyze.py --rows 1000000 --pandas-rows 200000

The CSV (6-column BurstGPT schema, whole-second timestamps over 121 days, four model x service groups in the
paper's proportions, daily-periodic conversation traffic and bursty API traffic, Zipf-like request lengths,
bimodal response lengths, ~2% failures) is generated with vectorised numpy into a temporary directory.

burstgpt is timed on all rows (wall, and CPU of all threads: read CPU on a shared machine): load
(`burstgpt.trace.load_trace`), the statistics (`characterise`) and writing the tables + summary.json; and, in a
fresh process as `burstgpt analyze` runs, load and everything after it (`analyze_trace`: the statistics with
the figures drawn while the arrival fits finish, tables, figures, report.html, summary.json). The pandas
baseline (pandas.read_csv, groupby, one scipy.stats fit per window for Gamma, exponential, Weibull and
lognormal, kstest, ...) computes the same statistics without figures. On many rows it would take hours, so it
runs on the first `--pandas-rows` rows and on half of them (a prefix in time, so windows and days scale with
rows) and its time is extrapolated linearly (fixed cost + cost per row, through the two measured points) to all
rows; the output says so.
burstgpt is also timed on that same prefix, for a ratio measured without extrapolation.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from scipy import optimize, stats

from burstgpt.analysis import characterise, write_characterisation
from burstgpt.commands.analyze import freed_memory_kept
from burstgpt.trace import load_trace

GROUPS = (  # model, log type, share of requests (the paper's counts: 1106k, 168k, 103k, 51k)
    ("ChatGPT", "API log", 1106 / 1428),
    ("GPT-4", "API log", 168 / 1428),
    ("ChatGPT", "Conversation log", 103 / 1428),
    ("GPT-4", "Conversation log", 51 / 1428),
)
DAYS = 121


# ------------------------------------------------------------------------------------------------ data


def generate_csv(path: Path, rows: int, seed: int = 0) -> None:
    """Write a BurstGPT-format CSV of `rows` requests (vectorised; no loop over rows)."""
    rng = np.random.default_rng(seed)
    horizon = DAYS * 86400.0
    parts = []
    counts = [max(2, int(rows * share)) for _, _, share in GROUPS]
    counts[0] += rows - sum(counts)  # exactly `rows` in all
    for (model, log_type, _), n in zip(GROUPS, counts, strict=True):
        # Gamma renewal arrivals (alpha 0.5: bursty), time-warped to the group's intensity profile.
        unit = np.cumsum(rng.gamma(0.5, 2.0, n))
        unit = unit / unit[-1]
        grid = np.linspace(0.0, horizon, 20001)
        if log_type == "Conversation log":  # daily and weekly rhythm
            intensity = (1.1 + np.sin(2 * np.pi * (grid / 86400.0 - 0.3))) * np.where(grid % (7 * 86400) < 5 * 86400,
                                                                                     1.0, 0.4)
        else:  # aperiodic bursts of random length and level
            levels = rng.lognormal(0.0, 1.0, 400) * (rng.random(400) < 0.6) + 0.05
            intensity = levels[np.minimum((grid / horizon * 400).astype(int), 399)]
        cumulative = np.concatenate([[0.0], np.cumsum((intensity[1:] + intensity[:-1]) / 2)])
        timestamps = np.floor(np.interp(unit, cumulative / cumulative[-1], grid))
        request = np.minimum((rng.pareto(1.1, n) * 60 + 1).astype(np.int64), 32000)
        short = rng.random(n) < 0.35
        response = np.where(short, rng.lognormal(np.log(20), 0.6, n), rng.lognormal(np.log(350), 0.5, n))
        response = np.maximum(1, response).astype(np.int64)
        failed = rng.random(n) < 0.02
        response[failed] = 0
        request[failed & (rng.random(n) < 0.3)] = 0  # the real files' "0,0,0" rows
        parts.append(pl.DataFrame({
            "Timestamp": timestamps.astype(np.int64), "Model": np.full(n, model), "Request tokens": request,
            "Response tokens": response, "Total tokens": request + response, "Log Type": np.full(n, log_type),
        }))
    pl.concat(parts).sort("Timestamp").write_csv(path)


# ------------------------------------------------------------------------------------------------ burstgpt


def run_burstgpt(path: Path, outdir: Path, figures: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Wall and CPU seconds (all threads) of each phase; the wall dict also holds the row count.

    Phases: load; the statistics and writing the tables + summary.json (`characterise`,
    `write_characterisation`: what the pandas baseline is compared with); with `figures`, load and the whole of
    what `burstgpt analyze` does after loading (`analyze_trace`: statistics, figures drawn meanwhile, tables,
    report.html, summary.json), timed in a fresh process as `analyze` runs (memory this process freed and kept
    would make it look faster)."""
    times, cpu = {}, {}

    def phase(name: str, work):
        wall_mark, cpu_mark = time.perf_counter(), time.process_time()
        value = work()
        times[name], cpu[name] = time.perf_counter() - wall_mark, time.process_time() - cpu_mark
        return value

    if figures:
        fresh = json.loads(subprocess.run(
            [sys.executable, "-c", ANALYZE_IN_FRESH_PROCESS, str(path), str(outdir / "analysis")],
            check=True, capture_output=True, text=True).stdout)
        for name, (wall, used) in fresh.items():
            times[name], cpu[name] = wall, used
    trace = phase("load", lambda: load_trace(path))
    result = phase("statistics", lambda: characterise(trace))
    phase("tables + summary.json", lambda: write_characterisation(result, outdir / "tables"))
    times["rows"] = trace.num_rows
    return times, cpu


#: `burstgpt analyze` without the CLI: load, then `analyze_trace`; prints {phase: [wall s, CPU s]} as JSON.
ANALYZE_IN_FRESH_PROCESS = """
import json, sys, time
from burstgpt.commands.analyze import freed_memory_kept
from burstgpt.report.trace_figures import analyze_trace
from burstgpt.trace import load_trace
with freed_memory_kept():
    marks = [(time.perf_counter(), time.process_time())]
    trace = load_trace(sys.argv[1])
    marks.append((time.perf_counter(), time.process_time()))
    analyze_trace(trace, sys.argv[2])
    marks.append((time.perf_counter(), time.process_time()))
print(json.dumps({name: [end[0] - start[0], end[1] - start[1]] for name, start, end in
                  zip(("analyze: load", "analyze: the rest"), marks, marks[1:])}))
"""


# ------------------------------------------------------------------------------------------------ pandas


def pandas_statistics(path: Path, nrows: int | None, window_s: float = 1200.0, seed: int = 0) -> dict:
    """The same statistics, written the straightforward way with pandas and scipy.stats."""
    df = pd.read_csv(path, nrows=nrows)
    df["service"] = df["Log Type"].map({"Conversation log": "conversation", "API log": "api"})
    df["failed"] = df["Response tokens"] == 0
    df["hour_index"] = (df["Timestamp"] // 3600).astype(int)
    df["day"] = df["hour_index"] // 24
    df["hour_of_day"] = df["hour_index"] % 24
    keys = ["Model", "service"]
    out: dict = {"rows": len(df), "failures": int(df["failed"].sum()),
                 "mean_request_tokens": df["Request tokens"].mean(), "mean_response_tokens": df["Response tokens"].mean()}
    out["overview"] = df.groupby(keys).agg(requests=("Timestamp", "size"), failures=("failed", "sum"),
                                           req=("Request tokens", "mean"), resp=("Response tokens", "mean"))
    hours = range(df["hour_index"].min(), df["hour_index"].max() + 1)
    hourly = df.groupby(keys + ["hour_index"]).size().unstack(fill_value=0).reindex(columns=hours, fill_value=0)
    profiles, periodicity = [], {}
    for key, series in hourly.iterrows():
        frame = pd.DataFrame({"requests": series.values, "hour_of_day": np.asarray(hours) % 24})
        profiles.append(frame.groupby("hour_of_day")["requests"].agg(["mean", "std", "min", "max"]))
        periodicity[key] = (series.autocorr(24) - max(series.autocorr(12), 0), series.autocorr(168))
    out["periodicity"] = periodicity
    out["daily"] = df.groupby(keys + ["day"]).size().unstack(fill_value=0)
    for minutes in (5, 10):
        window = df["Timestamp"] // (minutes * 60)
        counts = df.groupby(keys + [window.rename("window")]).size().unstack(fill_value=0)
        counts = counts.reindex(columns=range(window.min(), window.max() + 1), fill_value=0)
        previous = counts.shift(1, axis=1)
        for k in (2, 3, 4):
            out[f"bursts_{k}x_{minutes}"] = ((previous >= 1) & (counts >= k * previous)).T.groupby(
                np.asarray(counts.columns) * minutes * 60 // 86400).sum()
    rng = np.random.default_rng(seed)
    window_rows = []
    for key, group in df.groupby(keys):
        t = np.sort(group["Timestamp"].to_numpy() + rng.uniform(0, 1, len(group)))
        start = math.floor(t[0] / window_s) * window_s
        index = ((t - start) // window_s).astype(int)
        for w in np.unique(index):
            inside = t[index == w]
            if inside.size < 10:
                continue
            gaps = np.diff(inside)
            gaps = gaps[gaps > 0]
            a, _, scale = stats.gamma.fit(gaps, floc=0)
            ks = stats.kstest(gaps, "gamma", args=(a, 0, scale)).statistic
            aic = {}
            for name, family, k in (("gamma", stats.gamma, 2), ("exponential", stats.expon, 1),
                                    ("weibull", stats.weibull_min, 2), ("lognormal", stats.lognorm, 2)):
                params = family.fit(gaps, floc=0)
                aic[name] = 2 * k - 2 * family.logpdf(gaps, *params).sum()
            window_rows.append((key, w, inside.size, a, scale, ks, min(aic, key=aic.get)))
        gaps_all = np.diff(t)
        out[f"gamma_all_{key}"] = stats.gamma.fit(gaps_all[gaps_all > 0], floc=0)
    out["windows"] = pd.DataFrame(window_rows, columns=["group", "window", "n", "alpha", "beta", "ks", "best"])
    zipf, bimodality, correlation = {}, {}, {}
    for key, group in df.groupby(keys):
        lengths = group.loc[group["Request tokens"] > 0, "Request tokens"].to_numpy()
        k = np.arange(lengths.min(), lengths.max() + 1)
        total_log = np.log(lengths).sum()
        neg_ll = lambda th: th * total_log + lengths.size * np.log(np.sum(k ** -th))  # noqa: E731
        zipf[key] = optimize.minimize_scalar(neg_ll, bounds=(0, 20), method="bounded").x
        ok = group[group["Response tokens"] > 0]
        responses = ok["Response tokens"].to_numpy().astype(float)
        bimodality[key] = (stats.skew(responses, bias=False) ** 2 + 1) / (
            stats.kurtosis(responses, bias=False) + 3 * (len(responses) - 1) ** 2 / ((len(responses) - 2) * (len(responses) - 3)))
        bimodality[(key, "mixture")] = _em_two_gaussians(np.log(responses))
        correlation[key] = (np.polyfit(ok["Request tokens"], responses, 1),
                            ok["Request tokens"].corr(ok["Response tokens"]),
                            ok["Request tokens"].corr(ok["Response tokens"], method="spearman"))
        cut = pd.cut(ok["Request tokens"], bins=20)
        out[f"bins_{key}"] = ok.groupby(cut, observed=True)["Response tokens"].agg(
            ["size", "mean", "std", "median", lambda s: s.quantile(0.25), lambda s: s.quantile(0.75)])
        out[f"hist_{key}"] = (np.histogram(lengths, 60), np.histogram(responses, 60))
    out.update(zipf=zipf, bimodality=bimodality, correlation=correlation)
    sums = df.groupby(keys + ["hour_index"])[["Request tokens", "Response tokens"]].sum()
    sums = sums.unstack(fill_value=0).stack(future_stack=True).fillna(0).reset_index()
    sums["hour_of_day"] = sums["hour_index"] % 24
    out["throughput"] = sums.groupby(keys + ["hour_of_day"])[["Request tokens", "Response tokens"]].describe()
    out["failures"] = df.groupby(keys)["failed"].mean()
    out["failures_by_day"] = df.groupby(keys + ["day"])["failed"].mean()
    out["failures_by_hour"] = df.groupby(keys + ["hour_of_day"])["failed"].mean()
    return out


def _em_two_gaussians(x: np.ndarray, iterations: int = 100) -> tuple:
    mu = np.percentile(x, [25, 75]).astype(float)
    sd = np.array([x.std(), x.std()]) / 2
    share = np.array([0.5, 0.5])
    for _ in range(iterations):
        density = share[:, None] * stats.norm.pdf(x[None, :], mu[:, None], sd[:, None])
        resp = density / density.sum(axis=0)
        mass = resp.sum(axis=1)
        share, mu = mass / x.size, resp @ x / mass
        sd = np.sqrt((resp * (x[None, :] - mu[:, None]) ** 2).sum(axis=1) / mass)
    return tuple(mu), tuple(sd), tuple(share)


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows to generate (default 10,000,000)")
    parser.add_argument("--pandas-rows", type=int, default=100_000,
                        help="rows (a prefix in time) the pandas baseline runs on; its time is extrapolated "
                             "linearly to --rows (default 100,000)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures in the burstgpt run")
    args = parser.parse_args()
    pandas_rows = min(args.pandas_rows, args.rows)
    # freed_memory_kept: as `burstgpt analyze` does (for the pandas baseline too, as before).
    with freed_memory_kept(), tempfile.TemporaryDirectory(prefix="bench_analyze_") as tmp:
        tmp = Path(tmp)
        path = tmp / "burstgpt_bench.csv"
        mark = time.perf_counter()
        generate_csv(path, args.rows)
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - mark:.1f} s")
        prefix = tmp / "prefix.csv"
        with open(path) as source, open(prefix, "w") as target:
            for _, line in zip(range(pandas_rows + 1), source, strict=False):
                target.write(line)

        ours, ours_cpu = run_burstgpt(path, tmp / "out", figures=not args.no_figures)
        stats_time = ours["load"] + ours["statistics"] + ours["tables + summary.json"]
        print(f"burstgpt on {ours['rows']:,} rows, wall (CPU of all threads): " + ", ".join(
            f"{k} {v:.2f} s ({ours_cpu[k]:.2f})" for k, v in ours.items() if k != "rows"))
        print(f"burstgpt load + analyze (statistics, tables, summary.json): {stats_time:.2f} s")
        if "analyze: load" in ours:
            total = ours["analyze: load"] + ours["analyze: the rest"]
            total_cpu = ours_cpu["analyze: load"] + ours_cpu["analyze: the rest"]
            print(f"burstgpt load + analyze including {len(list((tmp / 'out' / 'analysis').glob('*.png')))} figures "
                  f"and report.html (fresh process): {total:.2f} s wall, {total_cpu:.2f} s CPU  (target < 10 s: "
                  f"{'met' if total < 10 else 'NOT met'})")

        ours_prefix, _ = run_burstgpt(prefix, tmp / "out_prefix", figures=False)
        ours_prefix_time = ours_prefix["load"] + ours_prefix["statistics"] + ours_prefix["tables + summary.json"]
        mark = time.perf_counter()
        baseline = pandas_statistics(prefix, None)
        pandas_time = time.perf_counter() - mark
        assert baseline["rows"] == ours_prefix["rows"] == pandas_rows
        print(f"on the first {pandas_rows:,} rows: burstgpt {ours_prefix_time:.2f} s, pandas {pandas_time:.2f} s, "
              f"ratio {pandas_time / ours_prefix_time:.1f}x (measured)")
        half_prefix = tmp / "half_prefix.csv"
        with open(prefix) as source, open(half_prefix, "w") as target:
            for _, line in zip(range(pandas_rows // 2 + 1), source, strict=False):
                target.write(line)
        mark = time.perf_counter()
        pandas_statistics(half_prefix, None)
        half_time = time.perf_counter() - mark
        print(f"pandas scaling check: {pandas_rows // 2:,} rows {half_time:.2f} s, {pandas_rows:,} rows "
              f"{pandas_time:.2f} s (time ratio {pandas_time / half_time:.2f} for 2x rows)")
        # Linear in rows through the two measured points (a fixed cost plus a cost per row).
        per_row = (pandas_time - half_time) / (pandas_rows - pandas_rows // 2)
        extrapolated = pandas_time + per_row * (args.rows - pandas_rows)
        note = "" if pandas_rows == args.rows else (
            f" (extrapolated linearly through the two measured points: {per_row * 1e6:.1f} us per row)")
        print(f"pandas on {args.rows:,} rows: {extrapolated:.1f} s{note}")
        print(f"ratio pandas / burstgpt (statistics) on {args.rows:,} rows: {extrapolated / stats_time:.1f}x"
              f"  (target >= 10x: {'met' if extrapolated / stats_time >= 10 else 'NOT met'})")
        if "analyze: load" in ours:
            print(f"ratio pandas (no figures) / burstgpt (with figures): {extrapolated / total:.1f}x")


if __name__ == "__main__":
    main()
