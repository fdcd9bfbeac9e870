"""`burstgpt analyze` end to end: real traces (by path, skipped when absent), outputs, filters, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from burstgpt.cli import main



def shared_trace(shared_traces: Path, name: str) -> Path:
    """A real trace from the shared data; skips the test when it is absent."""
    if not (shared_traces / name).exists():
        pytest.skip(f"{name} not present")
    return shared_traces / name


@pytest.fixture
def burstgpt_head(shared_traces: Path) -> Path:
    return shared_trace(shared_traces, "burstgpt_1_head.csv")


@pytest.fixture
def azure_code(shared_traces: Path) -> Path:
    return shared_trace(shared_traces, "azure_llm_2023_code.csv")


def direct_counts(path: Path, request_column: str, response_column: str, keep=lambda row: True) -> dict:
    """Row count, failures (response == 0) and mean request/response tokens, read with the csv module."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if keep(row)]
    requests = [float(row[request_column]) for row in rows]
    responses = [float(row[response_column]) for row in rows]
    return {
        "rows": len(rows),
        "failures": sum(1 for value in responses if value == 0),
        "mean_request_tokens": sum(requests) / len(rows),
        "mean_response_tokens": sum(responses) / len(rows),
    }


def run_analyze(tmp_path: Path, *args: str) -> tuple[int, dict | None]:
    outdir = tmp_path / "analysis"
    status = main(["analyze", *args, "-o", str(outdir)])
    summary = outdir / "summary.json"
    return status, json.loads(summary.read_text()) if summary.exists() else None


def assert_totals_match(summary: dict, expected: dict) -> None:
    totals = summary["totals"]
    assert totals["rows"] == expected["rows"]
    assert totals["failures"] == expected["failures"]
    assert totals["mean_request_tokens"] == pytest.approx(expected["mean_request_tokens"], rel=1e-12)
    assert totals["mean_response_tokens"] == pytest.approx(expected["mean_response_tokens"], rel=1e-12)


def test_analyze_real_burstgpt_file_with_figures(tmp_path, capsys, burstgpt_head):
    status, summary = run_analyze(tmp_path, str(burstgpt_head))
    assert status == 0
    assert_totals_match(summary, direct_counts(burstgpt_head, "Request tokens", "Response tokens"))
    outdir = tmp_path / "analysis"
    for name in summary["tables"].values():
        assert (outdir / name).stat().st_size > 0
    pngs = sorted(p.name for p in outdir.glob("*.png"))
    assert pngs == sorted(summary["figures"])
    for number in ("fig01", "fig03", "fig05", "fig06", "fig07", "fig08", "fig09", "fig10", "fig12", "fig14"):
        assert any(name.startswith(number) for name in pngs), number
    assert all((outdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    assert not list(outdir.glob("*.part"))
    groups = {(g["model"], g["service"]): g for g in summary["groups"]}
    assert set(groups) == {("ChatGPT", "conversation"), ("GPT-4", "conversation"), ("GPT-4", "api")}
    assert groups[("ChatGPT", "conversation")]["request_zipf"]["zipf_theta"] > 0
    printed = capsys.readouterr().out
    assert "ChatGPT" in printed and "400 requests" in printed


def test_analyze_real_azure_file(tmp_path, azure_code):
    status, summary = run_analyze(tmp_path, str(azure_code), "--no-figures", "--window", "600")
    assert status == 0
    assert_totals_match(summary, direct_counts(azure_code, "ContextTokens", "GeneratedTokens"))
    assert summary["window_s"] == 600.0
    assert summary["origin"].startswith("2023-11-16")
    assert not list((tmp_path / "analysis").glob("*.png"))
    windows = (tmp_path / "analysis" / "arrival_windows.csv").read_text().splitlines()
    # Traffic from 18:17:03 to 19:17:03 in 10-minute windows aligned on the clock: 18:10, 18:20, ..., 19:10.
    assert len(windows) - 1 == 7
    assert windows[1].split(",")[2] == str(18 * 3600 + 10 * 60) + ".0"  # 18:10 in seconds from midnight


def test_analyze_filters_match_direct_counts(tmp_path, burstgpt_head):
    status, summary = run_analyze(tmp_path, str(burstgpt_head), "--no-figures", "--model", "GPT-4",
                                  "--service", "conversation", "--start", "100", "--end", "30000")
    assert status == 0
    expected = direct_counts(
        burstgpt_head, "Request tokens", "Response tokens",
        keep=lambda row: row["Model"] == "GPT-4" and row["Log Type"] == "Conversation log"
        and 100 <= float(row["Timestamp"]) < 30000,
    )
    assert_totals_match(summary, expected)
    assert summary["filters"] == {"model": "GPT-4", "service": "conversation", "start_s": 100.0, "end_s": 30000.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no such file"),
        (["{head}", "--window", "0"], "--window"),
        (["{head}", "--start", "500", "--end", "100"], "--end"),
        (["{head}", "--model", "no-such-model"], "no requests"),
    ],
)
def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys, args, message, request):
    head = request.getfixturevalue("burstgpt_head") if "{head}" in args else None
    args = [a.format(missing=tmp_path / "absent.csv", head=head) for a in args]
    status, summary = run_analyze(tmp_path, *args, "--no-figures")
    assert status == 2
    assert summary is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_malformed_trace_names_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   "1,ChatGPT,10,5,15,Conversation log\n2,ChatGPT,ten,5,15,Conversation log\n")
    status, summary = run_analyze(tmp_path, str(bad), "--no-figures")
    assert status == 2 and summary is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ":3" in err and "Request tokens" in err
    status, summary = run_analyze(tmp_path, str(bad), "--no-figures", "--skip-invalid")
    assert status == 0 and summary["totals"]["rows"] == 1


def test_eight_column_trace_with_sessions_and_origin(tmp_path):
    trace = tmp_path / "sessions.csv"
    rows = ["Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    # Three sessions over two days; session s1 has turns 30 s and 90 s apart.
    for timestamp, session, elapsed, response in ((10, "s1", 2.0, 100), (40, "s1", 3.0, 200), (130, "s1", 1.5, 0),
                                                  (500, "s2", 4.0, 400), (86400 + 20, "s3", 5.0, 500)):
        rows.append(f"{timestamp},{session},{elapsed},ChatGPT,50,{response},{50 + response},Conversation log")
    trace.write_text("\n".join(rows) + "\n")
    status, summary = run_analyze(tmp_path, str(trace), "--no-figures", "--origin", "2023-11-04T00:00:00")
    assert status == 0
    outdir = tmp_path / "analysis"
    sessions = {row.split(",")[2]: row.split(",")[3] for row in (outdir / "sessions.csv").read_text().splitlines()[1:]}
    assert sessions == {"s1": "3", "s2": "1", "s3": "1"}
    group = summary["groups"][0]
    assert group["session_summary"]["sessions"] == 3
    assert group["session_summary"]["median_turn_gap_s"] == 60.0
    assert summary["totals"]["failures"] == 1
    daily = (outdir / "daily_requests.csv").read_text().splitlines()
    assert daily[1].split(",")[3:6] == ["2023-11-04", "5", "4"]  # a Saturday (day_of_week 5), 4 requests
    assert daily[2].split(",")[3:6] == ["2023-11-05", "6", "1"]
