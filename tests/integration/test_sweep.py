"""`burstgpt sweep` end to end without Ray: resume, Ctrl-C, rate finding against a brute-force scan, the CLI,
and sweep points run as real `bench` runs against serve-sim."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.server import ServerOptions, running_server
from burstgpt.sim.simulate import EngineSpec, build_engine_setup
from burstgpt.sweep.rate import KVBand, SLOTarget, find_rate_kv, find_rate_slo
from burstgpt.sweep.run import RESULTS_FILE, ServerTarget, map_points, run_point, run_sweep
from burstgpt.sweep.spec import SweepAxis, SweepPoint, SweepSpec
from burstgpt.workload.spec import ScheduledArrivals, WorkloadSpec

ENGINE = EngineSpec(num_gpu_blocks=600)
BASE = WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=150)


def _spec(alphas=(0.25, 1.0), betas=(1.0, 2.0)) -> SweepSpec:
    return SweepSpec(BASE, ENGINE, axes=(SweepAxis("alpha", alphas), SweepAxis("beta", betas)))


def test_a_point_rerun_alone_gives_its_row(tmp_path):
    spec = _spec()
    table = run_sweep(spec, tmp_path, executor="serial").table
    assert table.height == 4 and table["point_id"].to_list() == [p.point_id for p in spec.points()]
    point = spec.points()[2]
    assert run_point(spec, point).equals(table[2:3])
    # R, L, P are there and consistent with the accounting.
    assert (table["succeeded"] + table["failed"] == table["requests"]).all()
    assert table["failure_rate"].is_between(0, 1).all() and (table["latency_p90_s"] >= table["latency_median_s"]).all()
    # A burstier, heavier point fails more than a calmer one (alpha 0.25, beta 1 vs alpha 1, beta 2).
    assert table["failure_rate"][0] >= table["failure_rate"][3]


def test_resume_skips_finished_points(tmp_path):
    first = run_sweep(_spec(betas=(1.0,)), tmp_path, executor="serial")
    assert (first.ran, first.resumed) == (2, 0)
    written = pl.read_parquet(tmp_path / RESULTS_FILE)
    seen: list[str] = []
    second = run_sweep(_spec(), tmp_path, executor="serial", progress=lambda done, total, pid: seen.append(pid))
    assert (second.ran, second.resumed) == (2, 2)
    assert seen == ["alpha=0.25,beta=2.0,seed=0", "alpha=1.0,beta=2.0,seed=0"]
    assert second.table.filter(pl.col("beta") == 1.0).equals(written.sort("alpha"))
    again = run_sweep(_spec(), tmp_path, executor="serial")
    assert again.ran == 0 and again.table.equals(second.table)
    # A folder holding another sweep is refused, not mixed.
    assert main(["sweep", "-o", str(tmp_path), "--vary", "alpha=0.5", "--num-requests", "10", "--serial"]) == 2


def test_ctrl_c_keeps_finished_points_and_the_rest_run_on_resume(tmp_path):
    def stop_after_first(done, total, point_id):
        raise KeyboardInterrupt

    cut = run_sweep(_spec(), tmp_path, executor="serial", progress=stop_after_first)
    assert cut.interrupted and cut.table.height == 1
    assert pl.read_parquet(tmp_path / RESULTS_FILE).equals(cut.table)
    rest = run_sweep(_spec(), tmp_path, executor="serial")
    assert (rest.ran, rest.resumed, rest.table.height) == (3, 1, 4)


def test_auto_falls_back_to_serial_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    notices, results = [], {}
    map_points(divmod, [(7, 2), (9, 4)], executor="auto", notice=notices.append,
               on_result=results.__setitem__)
    assert results == {0: (3, 1), 1: (2, 1)} and len(notices) == 1 and "Ray is not installed" in notices[0]


def test_find_rate_kv_lands_in_the_band_and_agrees_with_a_scan():
    spec = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=0.5, rate_rps=1.0), num_requests=500), ENGINE)
    band = KVBand(0.30, 0.40)
    search = find_rate_kv(spec, band, start_rate_rps=0.05)
    assert search.rate_rps is not None
    found = search.path.filter(pl.col("rate") == search.rate_rps).row(0, named=True)
    assert band.low <= found["kv_usage_mean"] <= band.high and found["verdict"] == "in band"
    assert search.path["phase"].to_list().count("bisect") >= 1  # it bracketed, then bisected
    # Brute force: the KV usage on a grid of rates; the scan's in-band rates lie within one bisection step (the
    # bracket the search found its rate in) of the search's answer.
    rates = np.linspace(0.1, 1.2, 12)
    usage = np.array([run_point(spec, SweepPoint({"rate": float(r)}, 0))["kv_usage_mean"][0] for r in rates])
    in_band = rates[(usage >= band.low) & (usage <= band.high)]
    assert in_band.size
    step = search.resolution_rps
    assert step == pytest.approx(found["high_rps"] - found["low_rps"])
    assert np.min(np.abs(in_band - search.rate_rps)) <= step
    below, above = rates[usage < band.low], rates[usage > band.high]
    assert below.max() - step <= search.rate_rps <= above.min() + step


def test_find_rate_slo_is_the_highest_rate_meeting_it():
    spec = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=1.0, rate_rps=1.0), num_requests=300), ENGINE)
    objective = SLOTarget({"ttft": 2.0}, 0.95)
    search = find_rate_slo(spec, objective, relative_tolerance=0.05)
    path = search.path
    meets = path.filter(pl.col("verdict") == "meets")
    assert search.rate_rps == meets["rate"].max()
    assert (meets["slo_attainment"] >= 0.95).all()
    # Every rate tried above the answer missed it, and the last bracket is within the tolerance.
    assert (path.filter(pl.col("rate") > search.rate_rps)["slo_attainment"] < 0.95).all()
    assert search.resolution_rps <= 0.05 * (search.rate_rps + search.resolution_rps) + 1e-12


def test_sweep_cli_writes_results_and_figure(tmp_path, capsys):
    out = tmp_path / "sweep"
    status = main(["sweep", "-o", str(out), "--alpha", "0.5", "--beta", "2", "--num-requests", "80",
                   "--num-gpu-blocks", "600", "--vary", "alpha=0.5,1", "--vary", "theta=1.1,1.5", "--mode", "each",
                   "--seeds", "1,2", "--slo", "ttft=2", "--serial"])
    assert status == 0
    table = pl.read_parquet(out / "results.parquet")
    assert table.height == 8 and set(table["seed"].to_list()) == {1, 2}
    assert table.filter(pl.col("alpha").is_not_null())["theta"].is_null().all()
    assert table["slo_attainment"].is_not_null().all()
    assert (out / "sweep.png").stat().st_size > 10_000 and (out / "results.csv").exists()
    page = (out / "report.html").read_text()
    assert 'id="summary"' in page and 'data-name="sweep"' in page and "http://" not in page.split("<body", 1)[1]
    rate_out = tmp_path / "rate"
    assert main(["sweep", "-o", str(rate_out), "--alpha", "0.5", "--num-requests", "200", "--num-gpu-blocks", "600",
                 "--find-rate", "kv=0.35", "--start-rate", "0.2"]) == 0
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    path = pl.read_csv(rate_out / "rate_search.csv")
    assert printed == pytest.approx(path["rate"][-1]) and path["verdict"][-1] == "in band"
    assert (rate_out / "rate_search.png").exists() and (rate_out / "rate.json").exists()
    assert 'data-name="rate_search"' in (rate_out / "report.html").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--vary", "speed=1,2"], "unknown sweep axis"),
    (["--vary", "alpha"], "NAME=V1"),
    ([], "nothing to sweep"),
    (["--vary", "alpha=1", "--find-rate", "kv=0.35"], "drop --vary"),
    (["--find-rate", "kv=2"], "KV band"),
    (["--vary", "gpu=H100", "--url", "http://127.0.0.1:9"], "vary workload settings only"),
])
def test_sweep_cli_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert main(["sweep", "-o", str(tmp_path / "o"), "--rate", "1", "--num-requests", "5", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_points_against_a_real_server(tmp_path):
    setup = build_engine_setup(num_gpu_blocks=300)
    spec = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=1.0, rate_rps=10.0), num_requests=12), ENGINE,
                     axes=(SweepAxis("rate", (10.0, 20.0)),))
    runs = {}
    with running_server(ServerOptions(setup, port=0, time_scale=20.0)) as url:
        target = ServerTarget(url, cooldown_s=0.1, idle_timeout_s=10.0,
                              on_run=lambda point, run: runs.__setitem__(point.point_id, run))
        result = run_sweep(spec, tmp_path / "out", target=target)
    table = result.table
    assert table.height == 2 and (table["succeeded"] + table["failed"] == 12).all()
    assert table["kv_usage_peak"].is_not_null().all()  # scraped from the server's /metrics
    assert sorted(runs) == table["point_id"].to_list()
    assert all(run.sim_server and run.records.height == 12 for run in runs.values())


def test_sweep_cli_against_a_real_server_writes_the_point_s_run(tmp_path):
    with running_server(ServerOptions(build_engine_setup(num_gpu_blocks=300), port=0, time_scale=20.0)) as url:
        status = main(["sweep", "-o", str(tmp_path), "--url", url, "--cooldown", "0.1", "--alpha", "1",
                       "--rate", "10", "--num-requests", "8", "--vary", "alpha=2"])
    assert status == 0
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert runs == ["alpha=2.0_seed=0"]
    assert all((tmp_path / "runs" / name / "summary.json").exists() for name in runs)
    assert pl.read_parquet(tmp_path / "results.parquet")["requests"].to_list() == [8]


def test_ctrl_c_during_a_rate_search_keeps_its_path():
    spec = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=0.5, rate_rps=1.0), num_requests=100), ENGINE)

    def stop_at_second(step):
        if step["step"] == 2:
            raise KeyboardInterrupt

    search = find_rate_kv(spec, KVBand(0.3, 0.4), start_rate_rps=0.01, progress=stop_at_second)
    assert search.interrupted and search.rate_rps is None
    assert search.path["rate"].to_list() == [0.01, 0.02]


def test_plan_cli_writes_table_figure_and_report_with_windows_that_fit_a_short_workload(tmp_path, capsys):
    out = tmp_path / "plan"
    status = main(["plan", "-o", str(out), "--slo", "ttft=2", "--attainment", "0.5", "--rate", "2", "--alpha", "1",
                   "--duration", "60", "--max-output-tokens", "64", "--max-replicas", "4", "--autoscale", "--serial"])
    assert status == 0
    assert "autoscaler windows of 6 s" in capsys.readouterr().err  # a tenth of a 60 s span, not 300 s
    windows = pl.read_csv(out / "windows.csv")
    assert windows.height >= 9 and windows["start_s"].diff().drop_nulls().unique().to_list() == [6.0]
    assert (out / "plan.png").stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert 'id="summary"' in page and 'data-name="plan"' in page
