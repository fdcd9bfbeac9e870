"""`burstgpt demo` end to end, small: the whole pipeline including a real serve-sim process and bench over HTTP."""

import json
import subprocess
import sys

import polars as pl


def test_demo_pipeline_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "burstgpt.cli", "demo", "--out", str(out), "--days", "2", "--duration", "12"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    analysis = json.loads((out / "analysis" / "summary.json").read_text())
    trace_rows = pl.read_csv(out / "trace" / "synthetic_burstgpt.csv").height
    assert analysis["totals"]["rows"] == trace_rows
    assert len(list((out / "analysis").glob("fig*.png"))) >= 10
    assert (out / "workload" / "rate.png").exists()

    workload = pl.read_parquet(out / "workload" / "workload.parquet")
    sim = json.loads((out / "simulate" / "summary.json").read_text())
    bench = json.loads((out / "bench" / "summary.json").read_text())
    for summary in (sim, bench):
        counts = summary["requests"]
        assert counts["total"] == workload.height
        assert counts["sent"] == counts["succeeded"] + counts["failed"] + counts["cancelled"]
        assert counts["balanced"] is True
    # The simulator offline and serve-sim in real time run the same engine on the same workload.
    sim_p50 = sim["latency_s"]["e2e"]["median"]
    bench_p50 = bench["latency_s"]["e2e"]["median"]
    assert abs(sim_p50 - bench_p50) <= 0.1 * sim_p50
    assert (out / "comparison" / "comparison.png").exists()
    assert (out / "bench" / "timeline.png").exists() and (out / "simulate" / "steps.parquet").exists()
