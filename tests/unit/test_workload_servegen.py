"""ServeGen client pools (`burstgpt.workload.servegen`): the reader on the shared samples and on malformed files,
per-window arrivals that keep the recorded rate and CV, lengths per 6-hour period, client selection, filters and
aggregate-rate scaling, and the CLI (`workload generate --servegen`, `workload inspect`)."""

from __future__ import annotations

import ast
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special

from burstgpt.analysis.fits import gamma_fit_per_window
from burstgpt.cli import main
from burstgpt.errors import BurstGPTError, InputError
from burstgpt.workload import WorkloadSpec, build_workload, read_workload
from burstgpt.workload.processes import get_process
from burstgpt.workload.servegen import (
    ClientFilters,
    client_summary,
    compose_pool,
    filter_clients,
    find_clients,
    load_client,
    load_pool,
    read_dataset,
    read_rate_function,
    read_trace,
    select_clients,
)
from burstgpt.workload.spec import ServeGenClients

SHARED_CLIENTS = ["language/m-large/chunk-0", "language/m-small/chunk-0", "language/m-small/chunk-3",
                  "reason/deepseek-r1/chunk-2", "reason/deepseek-r1/chunk-21"]


def _write_client(root, name, windows, periods):
    """A ServeGen client in `root`: windows as (start_s, rate, cv, pattern) rows, periods as {start: (input
    pmf, output pmf)} with pmfs as dicts (written as Python-dict strings, like ServeGen's)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{s:g},{r!r},{c!r},{p},0,0" for s, r, c, p in windows]
    (path.parent / f"{path.name}-trace.csv").write_text("\n".join(rows) + "\n")
    dataset = {str(start): {"input_tokens": repr(i), "output_tokens": repr(o)} for start, (i, o) in periods.items()}
    (path.parent / f"{path.name}-dataset.json").write_text(json.dumps(dataset, indent=2))


# ------------------------------------------------------------------------------------------------ reading


def test_reader_reads_the_shared_clients(shared_data):
    root = shared_data / "servegen"
    assert find_clients(root) == SHARED_CLIENTS
    client = load_client(root, "language/m-large/chunk-0")
    raw = pl.read_csv(root / "language/m-large/chunk-0-trace.csv", has_header=False,
                      new_columns=["start", "rate", "cv", "pattern", "shape", "scale"])
    np.testing.assert_array_equal(client.window_start_s, raw["start"].to_numpy())
    np.testing.assert_array_equal(client.rate_rps, raw["rate"].to_numpy())
    np.testing.assert_array_equal(client.window_end_s - client.window_start_s, 600.0)
    assert client.window_end_s[-1] - client.window_start_s[0] == 14 * 86400
    live = client.rate_rps > 0
    assert set(client.process[live]) == {"gamma", "weibull"} and set(client.process[~live]) == {""}
    np.testing.assert_array_equal(client.process[live] == "weibull", (raw["pattern"] == "Weibull").to_numpy()[live])
    # Lengths: 56 periods of 6 h; the means agree with a direct literal parse of the JSON strings.
    assert client.period_start_s.size == 56 and np.all(np.diff(client.period_start_s) == 21600)
    period = json.loads((root / "language/m-large/chunk-0-dataset.json").read_text())["21600"]
    pmf = ast.literal_eval(period["input_tokens"])
    assert client.input_tokens[1].mean == pytest.approx(sum(t * p for t, p in pmf.items()) / sum(pmf.values()))
    # A reasoning client: one day, and periods without data are None.
    reason = load_client(root, "reason/deepseek-r1/chunk-2")
    assert reason.window_end_s[-1] == 86400 and reason.period_start_s.size == 4
    assert [d is None for d in reason.input_tokens] == [ast.literal_eval(v["input_tokens"]) == {} for v in json.loads(
        (root / "reason/deepseek-r1/chunk-2-dataset.json").read_text()).values()]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0.01, 100.0), st.sampled_from(["Gamma", "Weibull"]),
                          st.booleans()), min_size=1, max_size=30),
       st.dictionaries(st.integers(0, 10**6), st.floats(0.001, 1.0), min_size=1, max_size=40))
def test_reader_round_trips_any_valid_client(tmp_path_factory, windows, weights):
    root = tmp_path_factory.mktemp("pool")
    rows = [(600 * i, rate if live else 0.0, cv if live else 0.0, pattern if live else "")
            for i, (rate, cv, pattern, live) in enumerate(windows)]
    total = sum(weights.values())
    pmf = {t: w / total for t, w in weights.items()}
    _write_client(root, "x/chunk-0", rows, {0: (pmf, {}), 21600: ({}, pmf)})
    client = load_client(root, "x/chunk-0")
    np.testing.assert_array_equal(client.rate_rps, [r[1] for r in rows])
    np.testing.assert_array_equal(client.cv, [r[2] for r in rows])
    assert client.process.tolist() == [{"Gamma": "gamma", "Weibull": "weibull", "": ""}[r[3]] if r[1] > 0 else ""
                                       for r in rows]
    assert client.input_tokens[1] is None and client.output_tokens[0] is None
    assert client.input_tokens[0].mean == pytest.approx(sum(t * p for t, p in pmf.items()))
    assert client.output_tokens[1].probability.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("rows", "line", "column", "message"), [
    (["0,1,2,Gamma,0,0", "600,abc,2,Gamma,0,0"], 2, "rate_rps", "not a number"),
    (["0,1,2,Gamma,0,0", "600,1,2,Gamma,0,0", "1200,1,2,Gamma"], 3, None, "expected 6"),
    (["0,1,2,Pareto,0,0"], 1, "pattern", "Gamma or Weibull"),
    (["0,1,2,Gamma,0,0", "0,1,2,Gamma,0,0"], 2, "window_start_s", "increase"),
    (["0,0,0,,0,0", "600,2,1,,0,0"], 2, "pattern", "needs a pattern"),
    (["0,1,-2,Weibull,0,0"], 1, "cv", "CV must be"),
    (["0,inf,2,Gamma,0,0"], 1, "rate_rps", "rate must be"),
])
def test_malformed_trace_rows_name_file_line_and_field(tmp_path, rows, line, column, message):
    path = tmp_path / "c-trace.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=message) as info:
        read_trace(path)
    assert (info.value.path, info.value.line, info.value.column) == (str(path), line, column)


@pytest.mark.parametrize(("text", "column", "message"), [
    ('{"0": {"input_tokens": "__import__(\'os\').system(\'echo owned\')", "output_tokens": "{}"}}',
     "0.input_tokens", "not a literal"),
    ('{"0": {"input_tokens": "{10: 0.5, 20: -0.5}", "output_tokens": "{}"}}', "0.input_tokens", ">= 0"),
    ('{"0": {"input_tokens": "{10: 1.0}", "output_tokens": "{1.5: 1.0}"}}', "0.output_tokens", "integers"),
    ('{"0": {"input_tokens": "{10: 0.2}", "output_tokens": "{}"}}', "0.input_tokens", "sum to 0.2"),
    ('{"0": {"input_tokens": "{10: 1.0}"}}', "0.output_tokens", "no output_tokens"),
    ('{"zero": {"input_tokens": "{}", "output_tokens": "{}"}}', "zero", "not a start time"),
])
def test_malformed_datasets_name_the_field_and_never_run_code(tmp_path, capfd, text, column, message):
    path = tmp_path / "c-dataset.json"
    path.write_text(text.replace(", \"", ",\n\"").replace("{\"0\": ", "{\n\"0\": \n"))
    with pytest.raises(InputError, match=message) as info:
        read_dataset(path)
    assert info.value.column == column and info.value.line is not None
    assert "owned" not in capfd.readouterr().out  # the injected call was never evaluated


def test_missing_halves_and_bad_json_are_input_errors(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "chunk-1-trace.csv").write_text("0,1,2,Gamma,0,0\n")
    with pytest.raises(InputError, match="dataset half of client a/chunk-1"):
        find_clients(tmp_path)
    bad = tmp_path / "a" / "chunk-1-dataset.json"
    bad.write_text('{"0": {"input_tokens": "{1: 1.0}",\n "output_tokens": }}')
    with pytest.raises(InputError, match="not JSON") as info:
        read_dataset(bad)
    assert info.value.line == 2
    # The CLI prints one line naming the file and exits 2, and writes no workload.
    out = tmp_path / "w.parquet"
    assert main(["workload", "generate", "--servegen", str(tmp_path), "--duration", "600", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2:" in err[0] and not out.exists()


def test_rate_function_file_is_checked(tmp_path):
    good = tmp_path / "rate.csv"
    good.write_text("time_s,rate_rps\n0,5\n3600,2.5\n")
    times, rates = read_rate_function(good)
    np.testing.assert_array_equal(times, [0, 3600]) and np.testing.assert_array_equal(rates, [5, 2.5])
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,rate_rps\n0,5\n3600,fast\n")
    with pytest.raises(InputError) as info:
        read_rate_function(bad)
    assert (info.value.line, info.value.column) == (3, "rate_rps")


# ------------------------------------------------------------------------------------------------ arrivals


def _censored_profile_shape(kind: str, positive: np.ndarray, log_censor: np.ndarray) -> float:
    """Maximum-likelihood shape of a Gamma or Weibull sample with some values left-censored (log_censor: log of
    the bound each censored value lies below). For a bound far below the scale, P(X < c) = (c/scale)^k for a
    Weibull and (c/scale)^a / Gamma(a + 1) for a Gamma, so the scale has a closed form given the shape and the
    likelihood profiles to one dimension."""
    n_positive, n = positive.size, positive.size + log_censor.size
    log_x = np.log(positive)
    sum_log, sum_censor = log_x.sum(), log_censor.sum()
    if kind == "weibull":
        def negative_log_likelihood(log_k):
            k = np.exp(log_k)
            top = (k * log_x).max()
            log_mean_power = top + np.log(np.exp(k * log_x - top).sum()) - np.log(n)  # scale^k = sum(x^k) / n
            return -(n_positive * np.log(k) + (k - 1) * sum_log - n * log_mean_power + k * sum_censor)
    else:
        total = positive.sum()

        def negative_log_likelihood(log_a):
            a = np.exp(log_a)
            log_scale = np.log(total / (a * n))  # the scale's maximum given the shape
            return -((a - 1) * sum_log - a * n - n * a * log_scale - n_positive * special.gammaln(a)
                     + a * sum_censor - log_censor.size * special.gammaln(a + 1))
    fit = optimize.minimize_scalar(negative_log_likelihood, bounds=(np.log(0.005), np.log(50.0)), method="bounded",
                                   options={"xatol": 1e-8})
    return float(np.exp(fit.x))


def test_servegen_client_reproduces_recorded_rate_and_cv_over_a_day(shared_data):
    """A generated m-large client (chunk-0, its busiest day) against its own records, measured in the analysis'
    600 s windows (`gamma_fit_per_window`, aligned with ServeGen's).

    Why pooled, and how. This client's windows have CVs of 2.4-19 (median ~9): the count of a renewal window
    has variance CV^2 x its mean, so a window of ~700 requests at CV 9 varies by ~35 % and even a whole day by
    ~4 % in one realisation. The rate is therefore checked on REPLICAS independent days (other seeds): the
    day's total within 5 % (its standard deviation is asserted below 5 %/4 first), and every window's mean count
    against its recorded rate in units of that standard deviation (the RMS z-score stays near 1).
    The CV: the sample CV of a heavy-tailed window is biased low (its variance is carried by rare huge gaps a
    window rarely holds), so each window's CV is instead measured by maximum likelihood of its recorded family's
    shape (which rests on log gaps, not squares) on its gaps pooled over the replicas, then turned into a CV by
    the family's formula. Float64 times cannot resolve the shortest gaps of these bursts (Gamma shapes of ~0.03
    put ~45 % of gaps below 1e-11 s, which become exact ties at t ~ 5e4 s; the analysis drops ties, so its
    Gamma alpha is unusable here): ties enter the likelihood as censored below half a float spacing. Over the
    day the geometric mean of fitted / recorded CV is within 10 % of 1, for each family."""
    replicas = 12
    client = load_client(shared_data / "servegen", "language/m-large/chunk-0")
    day = int(np.argmax(np.bincount((client.window_start_s // 86400).astype(int), client.rate_rps * 600)))
    days = slice(day * 144, (day + 1) * 144)
    rate, cv, kind = client.rate_rps[days], client.cv[days], client.process[days]
    expected = rate * 600.0
    live = expected > 0
    runs = [compose_pool([client], start_s=day * 86400.0, duration_s=86400.0, seed=seed).arrival_s
            for seed in range(replicas)]

    counts = np.zeros((replicas, 144))
    for r, arrivals in enumerate(runs):
        windows = gamma_fit_per_window(arrivals, window_s=600.0, min_arrivals=10, start_s=0.0)
        counts[r, : windows.height] = windows["n_arrivals"].to_numpy()
    day_sd = np.sqrt(np.sum(cv**2 * expected) / replicas) / expected.sum()
    assert day_sd < 0.05 / 4
    assert counts.sum() / replicas == pytest.approx(expected.sum(), rel=0.05)
    z = (counts.mean(axis=0)[live] - expected[live]) / (cv[live] * np.sqrt(expected[live] / replicas))
    assert np.sqrt(np.mean(z**2)) < 1.5
    assert np.all(counts[:, ~live] == 0)

    # Gaps inside each window (both ends in it), pooled over the replicas.
    times = np.concatenate(runs)
    replica = np.repeat(np.arange(replicas), [a.size for a in runs])
    window = (times // 600).astype(np.int64)
    inside = (window[1:] == window[:-1]) & (replica[1:] == replica[:-1])
    gaps, gap_window, gap_time = np.diff(times)[inside], window[1:][inside], times[:-1][inside]
    order = np.argsort(gap_window, kind="stable")
    gaps, gap_window, gap_time = gaps[order], gap_window[order], gap_time[order]
    bounds = np.searchsorted(gap_window, np.arange(145))
    ratio = {}
    for w in np.flatnonzero(live):
        g, t = gaps[bounds[w]: bounds[w + 1]], gap_time[bounds[w]: bounds[w + 1]]
        shape = _censored_profile_shape(kind[w], g[g > 0], np.log(np.spacing(t[g == 0]) / 2))
        ratio.setdefault(kind[w], []).append(get_process(kind[w]).cv(np.array([shape]))[0] / cv[w])
    assert set(ratio) == {"gamma", "weibull"}
    for family, values in ratio.items():
        assert np.exp(np.mean(np.log(values))) == pytest.approx(1.0, abs=0.10), family


def _uniform_pool(tmp_path):
    """Two synthetic clients over 4 windows: a (Weibull, CV 2, 1 req/s, inputs 100) and b (Gamma, CV 1.5,
    3 req/s, inputs 1000)."""
    pmf_a, pmf_b = {100: 1.0}, {1000: 1.0}
    _write_client(tmp_path, "pool/a", [(600 * i, 1.0, 2.0, "Weibull") for i in range(4)], {0: (pmf_a, {5: 1.0})})
    _write_client(tmp_path, "pool/b", [(600 * i, 3.0, 1.5, "Gamma") for i in range(4)], {0: (pmf_b, {7: 1.0})})
    return load_pool(tmp_path)


def test_client_filters_and_selection(tmp_path, shared_data):
    clients = _uniform_pool(tmp_path)
    names = lambda kept: [c.name for c in kept]  # noqa: E731
    assert names(filter_clients(clients, ClientFilters(min_rate_rps=2.0), 0, 2400)) == ["pool/b"]
    assert names(filter_clients(clients, ClientFilters(max_cv=1.8), 0, 2400)) == ["pool/b"]
    assert names(filter_clients(clients, ClientFilters(max_input_tokens=500), 0, 2400)) == ["pool/a"]
    with pytest.raises(BurstGPTError, match="no ServeGen client passes"):
        filter_clients(clients, ClientFilters(min_rate_rps=10.0), 0, 2400)
    # Globs on the shared names; the mean rate filter against the trace column itself.
    root = shared_data / "servegen"
    assert names(load_pool(root, ["language/m-small/*"])) == SHARED_CLIENTS[1:3]
    assert select_clients(SHARED_CLIENTS, ["reason/*", "language/m-large/chunk-0"]) == [SHARED_CLIENTS[0],
                                                                                        *SHARED_CLIENTS[3:]]
    with pytest.raises(BurstGPTError, match="matches no client"):
        load_pool(root, ["language/m-mid/*"])
    pool = load_pool(root)
    mean_rates = {n: pl.read_csv(root / f"{n}-trace.csv", has_header=False, infer_schema_length=None)[:, 1].mean()
                  for n in SHARED_CLIENTS}
    threshold = sorted(mean_rates.values())[2]
    kept = filter_clients(pool, ClientFilters(min_rate_rps=threshold), 0, 14 * 86400)
    assert set(names(kept)) == {n for n, r in mean_rates.items() if r >= threshold}


def test_target_rate_and_rate_function_scale_the_aggregate(tmp_path):
    clients = _uniform_pool(tmp_path)
    span = 2400.0
    expected = lambda pool: sum(  # noqa: E731 - requests the schedules promise over the span
        float(np.sum(np.diff(np.append(s.starts, s.end)) / s.mean_gap_s())) for s in pool.schedules)
    pool = compose_pool(clients, duration_s=span, target_rate_rps=10.0, seed=1)
    assert expected(pool) == pytest.approx(10.0 * span)
    assert pool.arrival_s.size == pytest.approx(10.0 * span, rel=0.05)
    # Each client keeps its share (1:3) under a common factor.
    share_a = np.mean(pool.client == 0)
    assert share_a == pytest.approx(0.25, abs=0.03)
    # A rate function: 8 req/s for 1000 s, then 2 req/s; the cut inside a window splits it.
    rate_fn = (np.array([0.0, 1000.0]), np.array([8.0, 2.0]))
    pool = compose_pool(clients, duration_s=span, rate_fn=rate_fn, seed=2)
    assert expected(pool) == pytest.approx(8.0 * 1000 + 2.0 * 1400)
    early = np.sum(pool.arrival_s < 1000.0)
    assert early == pytest.approx(8000, rel=0.06)
    assert pool.arrival_s.size - early == pytest.approx(2800, rel=0.1)
    # Without a target the recorded rates stay.
    assert expected(compose_pool(clients, duration_s=span, seed=3)) == pytest.approx(4.0 * span)


def test_lengths_follow_the_period_in_force_and_fall_back_to_the_nearest(tmp_path):
    # Periods of 6 h: 0 has inputs of 10 tokens, 1 none (equidistant: the earlier, 0), 2 has 30, 3 none (-> 2).
    periods = {0: ({10: 1.0}, {1: 1.0}), 21600: ({}, {}), 43200: ({30: 0.5, 31: 0.5}, {3: 1.0}), 64800: ({}, {})}
    _write_client(tmp_path, "c", [(600 * i, 0.05, 1.0, "Gamma") for i in range(144)], periods)
    pool = compose_pool(load_pool(tmp_path), seed=4)
    period = (pool.arrival_s // 21600).astype(int)
    assert set(np.unique(period)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(pool.input_tokens[period <= 1], 10)
    assert set(pool.input_tokens[period >= 2]) == {30, 31}
    np.testing.assert_array_equal(pool.output_tokens, np.where(period <= 1, 1, 3))


def test_each_client_has_its_own_stream(tmp_path):
    clients = _uniform_pool(tmp_path)
    both = compose_pool(clients, duration_s=2400.0, seed=9)
    alone = compose_pool(clients[:1], duration_s=2400.0, seed=9)
    np.testing.assert_array_equal(both.arrival_s[both.client == 0], alone.arrival_s)
    np.testing.assert_array_equal(both.input_tokens[both.client == 0], alone.input_tokens)
    # Streams start in equilibrium: no two clients share their first arrival at 0.
    assert np.sum(both.arrival_s == 0.0) == 0


# ------------------------------------------------------------------------------------------------ spec and CLI


def test_cli_generate_equals_the_spec_and_inspect_shows_the_mix(tmp_path, shared_data, capsys):
    root = shared_data / "servegen"
    out = tmp_path / "w.parquet"
    # Two hours of day 1 where m-small chunk-0 is active beside m-large.
    argv = ["workload", "generate", "--servegen", str(root), "--clients", "language/*", "--start-s", "140400",
            "--duration", "7200", "--target-rate", "2", "--seed", "3", "-o", str(out)]
    assert main(argv) == 0
    spec = WorkloadSpec(ServeGenClients(str(root), clients=("language/*",), start_s=140400.0, target_rate_rps=2.0),
                        duration_s=7200.0, seed=3)
    frame = build_workload(spec)
    assert read_workload(out).equals(frame)
    assert set(frame["client_id"].unique()) == {"language/m-large/chunk-0", "language/m-small/chunk-0"}
    assert frame["output_tokens"].null_count() < frame.height  # lengths come from the client's distributions
    capsys.readouterr()
    assert main(["workload", "inspect", str(out), "--window-s", "300"]) == 0
    printed = capsys.readouterr().out
    counts = frame["client_id"].value_counts()
    for name, requests in counts.iter_rows():
        assert name in printed and str(requests) in printed
    assert (tmp_path / "w-plots" / "clients.png").stat().st_size > 0


def test_summary_of_the_shared_pool_matches_the_trace_columns(shared_data):
    root = shared_data / "servegen"
    summary = client_summary(load_pool(root), 0.0, 86400.0)
    raw = pl.read_csv(root / "reason/deepseek-r1/chunk-21-trace.csv", has_header=False, infer_schema_length=None)
    rate, cv = raw[:, 1].to_numpy(), raw[:, 2].to_numpy()
    row = summary.filter(pl.col("client_id") == "reason/deepseek-r1/chunk-21").row(0, named=True)
    assert row["mean_rate_rps"] == pytest.approx(rate.mean())
    assert row["cv"] == pytest.approx(np.dot(rate, cv) / rate.sum())
