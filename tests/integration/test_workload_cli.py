"""`burstgpt workload fit | generate | inspect` through `burstgpt.cli.main`, and the shared generation flags."""

from __future__ import annotations

import argparse
import json

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.commands.workload import add_generation_arguments, workload_from_args
from burstgpt.workload.io import read_workload
from burstgpt.workload.tokenizer import BuiltinTokenizer



def _generation_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    return parser.parse_args(argv)


def test_same_seed_gives_byte_identical_files(tmp_path):
    base = ["workload", "generate", "--alpha", "1:0.25", "--beta", "2:0.5", "--num-requests", "3000",
            "--prompts", "synthetic", "--max-input-tokens", "512", "--seed", "42"]
    for suffix in (".parquet", ".jsonl"):
        a, b, c = (tmp_path / f"{name}{suffix}" for name in "abc")
        assert main([*base, "-o", str(a)]) == 0
        assert main([*base, "-o", str(b)]) == 0
        assert main([*base[:-1], "43", "-o", str(c)]) == 0
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
    frame = read_workload(tmp_path / "a.parquet")
    assert frame.height == 3000 and frame["request_id"].to_list() == list(range(3000))
    # Every prompt has exactly its input_tokens under the (builtin) tokenizer.
    np.testing.assert_array_equal(BuiltinTokenizer().count(frame["prompt"].to_list()), frame["input_tokens"])


def test_paper_schedule_changes_every_200_requests_by_default():
    args = _generation_args(["--alpha", "2:0.5", "--rate", "10", "--num-requests", "4000", "--seed", "1"])
    frame = workload_from_args(args)
    assert frame.height == 4000
    assert frame["max_output_tokens"].unique().to_list() == [2048]
    assert frame["output_tokens"].null_count() == 4000  # left to the model
    gaps = np.diff(frame["arrival_s"].to_numpy())
    # 20 steps of 200 requests, quadratic alpha 2 -> 0.5 -> 2 at a constant 10 req/s: mean gap 0.1 s throughout,
    # while the gaps' spread (CV = 1/sqrt(alpha)) is largest in the middle.
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    edge_cv = np.concatenate([gaps[:600], gaps[-600:]]).std() / np.concatenate([gaps[:600], gaps[-600:]]).mean()
    middle = gaps[1700:2300]
    assert middle.std() / middle.mean() > 1.3 * edge_cv


def test_workload_flag_reads_an_existing_file_and_bounds_apply(tmp_path):
    path = tmp_path / "w.jsonl"
    assert main(["workload", "generate", "--arrival", "constant", "--rate", "2", "--duration", "10",
                 "--response", "fixed", "--output-tokens", "64", "-o", str(path)]) == 0
    frame = workload_from_args(_generation_args(["--workload", str(path), "--num-requests", "5"]))
    assert frame["arrival_s"].to_list() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert frame["output_tokens"].to_list() == [64] * 5


def test_replay_command_scales_and_takes_trace_responses(tmp_path, burstgpt_head):
    out = tmp_path / "replay.parquet"
    assert main(["workload", "generate", "--replay", str(burstgpt_head), "--scale", "100", "-o", str(out)]) == 0
    frame = read_workload(out)
    trace = pl.read_csv(burstgpt_head)
    np.testing.assert_allclose(np.diff(frame["arrival_s"].to_numpy()), np.diff(trace["Timestamp"].to_numpy()) / 100)
    responses = trace["Response tokens"].to_numpy()
    assert frame["output_tokens"].to_list() == [int(r) if r > 0 else None for r in responses]
    assert frame["service"].to_list()[:2] == ["conversation", "conversation"]


def test_fit_then_generate_from_params_then_inspect(tmp_path, capsys, burstgpt_head):
    params = tmp_path / "params.json"
    assert main(["workload", "fit", str(burstgpt_head), "-o", str(params)]) == 0
    data = json.loads(params.read_text())
    assert data["num_requests"] == 400
    assert len(data["arrivals"]["windows"]) == 32
    assert sum(w["n_arrivals"] for w in data["arrivals"]["windows"]) == 400
    assert data["request_tokens"]["max_tokens"] == 2126
    assert data["response_tokens"]["failure_rate"] == pytest.approx(17 / 400)
    out = tmp_path / "w.parquet"
    assert main(["workload", "generate", "--params", str(params), "--target-rate", "4", "--time-scale", "50",
                 "--response", "empirical", "-o", str(out)]) == 0
    frame = read_workload(out)
    span = 32 * 1200 / 50
    assert frame["arrival_s"].max() < span
    assert frame.height / span == pytest.approx(4, rel=0.1)
    assert frame["input_tokens"].min() >= data["request_tokens"]["min_tokens"]
    assert frame["output_tokens"].null_count() == 0
    capsys.readouterr()
    assert main(["workload", "inspect", str(out), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert f"requests {frame.height}" in " ".join(printed.split())
    for name in ("rate.png", "gamma_params.png", "lengths.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": "something else"}),
     json.dumps({"format": "burstgpt-workload-params/1", "arrivals": {}}),
     json.dumps({"format": "burstgpt-workload-params/1", "duration_s": 1, "num_requests": 2, "mean_rate_rps": 1,
                 "arrivals": {"window_s": 10, "overall": {"alpha": 1, "beta_s": 1},
                              "windows": [{"window_start_s": 0, "window_end_s": 10, "n_arrivals": 3,
                                           "alpha": -2, "beta_s": 1}]},
                 "request_tokens": {"theta": 1, "min_tokens": 1, "max_tokens": 10}})],
)
def test_malformed_params_file_one_line_exit_2(tmp_path, capsys, content):
    params = tmp_path / "params.json"
    params.write_text(content)
    assert main(["workload", "generate", "--params", str(params), "-o", str(tmp_path / "w.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("burstgpt: error: ") and str(params) in err and "\n" not in err
    assert not (tmp_path / "w.parquet").exists()


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [("p.jsonl", '{"text": "fine"}\n{"text": "also"}\n{broken\n', 3), ("p.json", '[{"instruction": 1}', 1)],
)
def test_malformed_prompt_file_one_line_exit_2(tmp_path, capsys, name, content, line):
    prompts = tmp_path / name
    prompts.write_text(content)
    status = main(["workload", "generate", "--rate", "1", "--num-requests", "10", "--prompts", str(prompts),
                   "-o", str(tmp_path / "w.parquet")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"burstgpt: error: {prompts}:{line}:") and "\n" not in err


def test_bad_flags_exit_2(tmp_path, capsys):
    out = str(tmp_path / "w.parquet")
    assert main(["workload", "generate", "--rate", "1", "-o", out]) == 2  # no bound
    assert main(["workload", "generate", "--alpha", "-1", "--rate", "1", "--num-requests", "5", "-o", out]) == 2
    assert main(["workload", "generate", "--rate", "1", "--num-requests", "5", "--schedule", "wiggly",
                 "-o", out]) == 2
    assert main(["workload", "generate", "--rate", "1", "--num-requests", "5", "-o", str(tmp_path / "w.txt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("burstgpt: error: ") for e in errors)


def test_user_schedule_table_in_seconds(tmp_path, capsys):
    table = tmp_path / "schedule.csv"
    table.write_text("at,alpha,beta_s\n0,1.0,0.1\n100,0.5,0.02\n")
    frame = workload_from_args(_generation_args(
        ["--schedule", str(table), "--change-every", "100s", "--duration", "200", "--seed", "3"]))
    arrivals = frame["arrival_s"].to_numpy()
    # 10 req/s for 100 s, then 100 req/s (alpha 0.5, beta 0.02) for the last 100 s.
    assert np.sum(arrivals < 100) == pytest.approx(1000, rel=0.1)
    assert np.sum(arrivals >= 100) == pytest.approx(10_000, rel=0.1)
    table.write_text("at,alpha,beta_s\n0,one,0.1\n")
    assert main(["workload", "generate", "--rate", "1", "--schedule", str(table), "--duration", "5",
                 "-o", str(tmp_path / "w.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"burstgpt: error: {table}") and "\n" not in err
