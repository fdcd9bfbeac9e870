"""`WorkloadSpec` / `build_workload`: the Python API the CLI flags are a front for; the arrival-process and
response-mode registries; the workload checks every consumer runs."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy import stats

from burstgpt.cli import main
from burstgpt.errors import BurstGPTError, InputError
from burstgpt.workload import (
    MirroredArrivals,
    Prompts,
    ReplayedTrace,
    RequestLengths,
    Responses,
    ScheduledArrivals,
    ServeGenClients,
    WorkloadSpec,
    build_workload,
    read_workload,
    validate_workload,
)
from burstgpt.workload.processes import arrival_processes, get_process
from burstgpt.workload.servegen import ClientFilters
from burstgpt.workload.responses import RESPONSE_MODES, ResponseSpec


def test_cli_flags_and_spec_build_the_same_workload(tmp_path):
    out = tmp_path / "w.parquet"
    assert main(["workload", "generate", "--alpha", "1:0.25", "--rate", "2:6", "--num-requests", "1500",
                 "--zipf-theta", "1.3", "--max-input-tokens", "900", "--response", "fixed",
                 "--output-tokens", "77", "--prompts", "synthetic", "--seed", "5", "-o", str(out)]) == 0
    spec = WorkloadSpec(
        ScheduledArrivals(alpha=(1.0, 0.25), rate_rps=(2.0, 6.0)), num_requests=1500,
        lengths=RequestLengths(zipf_theta=1.3, max_input_tokens=900),
        responses=Responses("fixed", output_tokens=77), prompts=Prompts("synthetic"), seed=5,
    )
    assert read_workload(out).equals(build_workload(spec))


def test_spec_round_trips_through_json():
    specs = [
        WorkloadSpec(ScheduledArrivals(process="weibull", alpha=(0.5, 2.0), rate_rps=3.0, schedule="linear",
                                       change_every=30.0, change_unit="seconds"), duration_s=120.0, seed=3),
        WorkloadSpec(MirroredArrivals(params="p.json", target_rate_rps=2.0, time_scale=10.0,
                                      services=("conversation",), process="weibull"), num_requests=10),
        WorkloadSpec(ServeGenClients("pool", clients=("language/m-small/*", "reason/x"), start_s=600.0,
                                     rate_fn="rate.csv", filters=ClientFilters(min_rate_rps=0.1, max_cv=5.0,
                                                                               max_input_tokens=900.0)),
                     duration_s=3600.0, seed=2),
        WorkloadSpec(ReplayedTrace("t.csv", scale=100.0, models=("ChatGPT",), skip_quiet_start=True),
                     prompts=Prompts("synthetic", tokenizer="builtin")),
    ]
    for spec in specs:
        assert WorkloadSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(BurstGPTError, match="not a workload spec"):
        WorkloadSpec.from_dict({"arrivals": {"kind": "scheduled", "alhpa": 1.0}})


def test_weibull_renewal_with_known_shape_is_recovered_through_the_cli(tmp_path):
    # `--arrival weibull` with --alpha (the shape) and --rate builds the same workload as the spec.
    out = tmp_path / "w.parquet"
    assert main(["workload", "generate", "--arrival", "weibull", "--alpha", "0.6", "--rate", "4",
                 "--num-requests", "500", "--seed", "11", "-o", str(out)]) == 0
    spec = WorkloadSpec(ScheduledArrivals(process="weibull", alpha=0.6, rate_rps=4.0), num_requests=500, seed=11)
    assert read_workload(out).equals(build_workload(spec))


def test_weibull_renewal_with_known_shape_is_recovered_through_servegen(tmp_path):
    # A ServeGen client recorded as Weibull windows at 4 req/s with the CV of shape 0.6: the generated gaps are
    # Weibull with that shape (the CV -> shape solve and the per-window walk), and the rate is kept.
    shape, rate = 0.6, 4.0
    cv = float(get_process("weibull").cv(np.array([shape]))[0])
    (tmp_path / "c-trace.csv").write_text("".join(f"{600 * i},{rate!r},{cv!r},Weibull,0,0\n" for i in range(12)))
    (tmp_path / "c-dataset.json").write_text(json.dumps({"0": {"input_tokens": "{100: 1.0}",
                                                               "output_tokens": "{20: 1.0}"}}))
    frame = build_workload(WorkloadSpec(ServeGenClients(str(tmp_path)), seed=5))
    gaps = np.diff(frame["arrival_s"].to_numpy())
    fitted_shape, _, _ = stats.weibull_min.fit(gaps[gaps > 0], floc=0)
    assert fitted_shape == pytest.approx(shape, rel=0.05)
    assert frame.height / 7200.0 == pytest.approx(rate, rel=0.05)
    assert set(frame["client_id"]) == {"c"} and set(frame["input_tokens"]) == {100}
    assert set(frame["output_tokens"]) == {20}


def test_weibull_renewal_with_known_shape_is_recovered():
    shape, rate = 0.6, 4.0
    frame = build_workload(WorkloadSpec(ScheduledArrivals(process="weibull", alpha=shape, rate_rps=rate),
                                        num_requests=40_000, seed=11))
    gaps = np.diff(frame["arrival_s"].to_numpy())
    fitted_shape, _, fitted_scale = stats.weibull_min.fit(gaps, floc=0)
    assert fitted_shape == pytest.approx(shape, rel=0.05)
    assert 1.0 / gaps.mean() == pytest.approx(rate, rel=0.05)
    process = get_process("weibull")
    assert fitted_scale == pytest.approx(1.0 / (rate * process.unit_mean(np.array([shape]))[0]), rel=0.05)


@pytest.mark.parametrize("kind", ["gamma", "poisson", "weibull", "constant"])
def test_every_registered_process_keeps_a_time_varying_rate(kind):
    # 60 s steps whose rate goes 2 -> 8 req/s: each step receives its expected count whatever the process.
    spec = WorkloadSpec(ScheduledArrivals(process=kind, alpha=0.7 if kind in ("gamma", "weibull") else 1.0,
                                          rate_rps=(2.0, 8.0), schedule="linear", change_every=60.0,
                                          change_unit="seconds", schedule_steps=4),
                        duration_s=240.0, seed=2)
    arrivals = build_workload(spec)["arrival_s"].to_numpy()
    counts = np.histogram(arrivals, bins=[0, 60, 120, 180, 240])[0]
    np.testing.assert_allclose(counts / 60.0, [2.0, 4.0, 6.0, 8.0], rtol=0.25)
    assert counts[3] > 2.5 * counts[0]


def test_registries_name_their_kinds():
    assert set(arrival_processes()) >= {"gamma", "poisson", "weibull", "constant"}
    assert set(RESPONSE_MODES) == {"model", "fixed", "empirical", "trace"}
    with pytest.raises(BurstGPTError, match="choose one of .*gamma"):
        build_workload(WorkloadSpec(ScheduledArrivals(process="pareto", rate_rps=1.0), num_requests=10))
    with pytest.raises(BurstGPTError, match="choose one of"):
        ResponseSpec(mode="guess")


def _frame(arrivals) -> pl.DataFrame:
    n = len(arrivals)
    return pl.DataFrame({"request_id": list(range(n)), "arrival_s": arrivals, "input_tokens": [10] * n,
                         "output_tokens": [None] * n, "max_output_tokens": [None] * n},
                        schema_overrides={"output_tokens": pl.Int64, "max_output_tokens": pl.Int64})


@pytest.mark.parametrize(("arrivals", "message"), [
    ([0.0, float("nan"), 2.0], "not a finite number"),
    ([0.0, float("inf")], "not a finite number"),
    ([0.0, 1e300], "over 1e\\+09 s"),
    ([0.0, 2.0, 1.0], "must not decrease"),
    ([-1.0, 0.0], "negative arrival"),
])
def test_bad_arrivals_are_refused_with_row_and_column(arrivals, message):
    with pytest.raises(InputError, match=message) as info:
        validate_workload(_frame(arrivals), "w.parquet")
    bad_row = next(i for i, (a, b) in enumerate(zip([None, *arrivals], arrivals)) if not (
        np.isfinite(b) and 0 <= b <= 1e9 and (a is None or b >= a)))
    assert info.value.line == bad_row + 1 and info.value.column == "arrival_s"


def test_a_workload_file_with_a_nan_arrival_is_refused_by_the_cli(tmp_path, capsys):
    path = tmp_path / "nan.jsonl"
    path.write_text('{"arrival_s": 0.0, "input_tokens": 5}\n{"arrival_s": NaN, "input_tokens": 5}\n')
    with pytest.raises(InputError) as info:
        read_workload(path)
    assert info.value.line == 2
    bad = tmp_path / "nan.parquet"
    _frame([0.0, float("nan")]).write_parquet(bad)
    assert main(["workload", "inspect", str(bad), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2:" in err[0] and "arrival_s" in err[0]


def test_mooncake_prefix_ids_survive_replay_and_files(tmp_path, mooncake_trace):
    from burstgpt.trace import load_trace
    from burstgpt.workload import write_workload

    trace = load_trace(mooncake_trace)
    frame = build_workload(WorkloadSpec(ReplayedTrace(str(mooncake_trace)), num_requests=500))
    assert frame["prefix_block_ids"].to_list() == trace.frame["prefix_block_ids"].head(500).to_list()
    assert set(frame["prefix_block_size"].unique().to_list()) == {512}
    for suffix in (".parquet", ".jsonl"):
        path = write_workload(frame, tmp_path / f"w{suffix}")
        assert read_workload(path).equals(frame)


def test_prefix_ids_are_checked():
    base = _frame([0.0, 1.0]).with_columns(
        pl.Series("prefix_block_ids", [[1, 2], None], dtype=pl.List(pl.Int64)),
        pl.Series("prefix_block_size", [4, None], dtype=pl.Int64))
    from burstgpt.workload.schema import conform_workload

    validate_workload(conform_workload(base))  # 2 ids x 4 tokens within 10 input tokens
    with pytest.raises(InputError, match="need a positive size") as info:
        validate_workload(conform_workload(base.with_columns(pl.lit(None, dtype=pl.Int64).alias("prefix_block_size"))))
    assert info.value.line == 1 and info.value.column == "prefix_block_size"
    with pytest.raises(InputError, match="cover more than the prompt"):
        validate_workload(conform_workload(base.with_columns(pl.lit(10, dtype=pl.Int64).alias("prefix_block_size"))))
    with pytest.raises(InputError, match="non-negative"):
        validate_workload(conform_workload(base.with_columns(
            pl.Series("prefix_block_ids", [[1, -2], None], dtype=pl.List(pl.Int64)))))
