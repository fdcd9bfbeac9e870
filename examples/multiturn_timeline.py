"""Multi-turn replay, drawn: a generated chat workload sent to serve-sim (in this process, on 127.0.0.1), then
each session's turns on one line: when a turn was due on the open-loop timeline (`arrival_s`), when it was sent
and when its answer ended. Later turns leave only after the previous turn has ended plus the think time, so a
slow answer pushes the rest of its conversation later (docs/workload.md, "Multi-turn sessions").

    .venv/bin/python examples/multiturn_timeline.py [--out docs/img/multiturn-replay.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from burstgpt.client.openai import EndpointOptions  # noqa: E402
from burstgpt.client.runner import LoadGenerator, RunOptions  # noqa: E402
from burstgpt.outputs import atomic_path  # noqa: E402
from burstgpt.server import ServerOptions, running_server  # noqa: E402
from burstgpt.sim.simulate import build_engine_setup  # noqa: E402
from burstgpt.workload.prefixes import PrefixSharing, Sessions, SystemPrompts  # noqa: E402
from burstgpt.workload.spec import (  # noqa: E402
    RequestLengths,
    Responses,
    ScheduledArrivals,
    WorkloadSpec,
    build_workload,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="multiturn-replay.png")
    parser.add_argument("--sessions-shown", type=int, default=14)
    args = parser.parse_args()

    # Bursty arrivals, 4 turns on average, 1 s median think time, 80-token answers (~2 s on this simulated
    # GPU): long next to the think times, so waiting for the answer visibly moves later turns.
    workload = build_workload(WorkloadSpec(
        ScheduledArrivals(alpha=0.5, rate_rps=3.0), num_requests=60, seed=5,
        lengths=RequestLengths(max_input_tokens=400), responses=Responses(mode="fixed", output_tokens=80),
        prefixes=PrefixSharing(SystemPrompts(fraction=0.7, pool_size=2, tokens=128),
                               Sessions(mean_turns=4, think_time_s=1.0, think_time_sigma=0.5))))
    setup = build_engine_setup(gpu="RTX-A6000-48GB", model="Llama-2-7B-chat", num_gpu_blocks=1500, timeout_s=60.0)
    with running_server(ServerOptions(setup, port=0)) as url, tempfile.TemporaryDirectory() as tmp:
        records = LoadGenerator(workload, EndpointOptions(url, timeout_s=60.0), RunOptions(progress=False),
                                records_path=Path(tmp) / "records.jsonl").run_sync().records
    runs = records.join(workload.select("request_id", "arrival_s"), on="request_id")
    sessions = (runs.group_by("session_id").agg(pl.len().alias("turns"), pl.col("sent_s").min())
                .filter(pl.col("turns") >= 3).sort("sent_s").head(args.sessions_shown)["session_id"].to_list())
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(sessions) + 1.2))
    for line, session in enumerate(sessions):
        turns = runs.filter(pl.col("session_id") == session).sort("turn")
        for turn in turns.iter_rows(named=True):
            ax.barh(line, turn["end_s"] - turn["sent_s"], left=turn["sent_s"], height=0.6,
                    color="C0" if turn["turn"] == 0 else "C1", edgecolor="white")
            ax.plot([turn["arrival_s"]], [line], "k|", markersize=9)
    handles = [Patch(color="C0", label="first turn: sent to answer end"),
               Patch(color="C1", label="later turn: sent after the previous end + think time"),
               Line2D([], [], color="k", marker="|", linestyle="none", markersize=9,
                      label="due on the open-loop timeline (arrival_s)")]
    ax.set_yticks(range(len(sessions)), [f"session {s}" for s in sessions], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time since the start of the run (s)")
    ax.set_title("Multi-turn replay against serve-sim: each turn waits for the previous answer")
    ax.legend(handles=handles, loc="upper right", fontsize=7)
    with atomic_path(Path(args.out)) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    later = runs.sort("session_id", "turn").with_columns(
        pl.col("end_s").shift(1).over("session_id").alias("previous_end_s")).filter(pl.col("turn") > 0)
    delay = (later["sent_s"] - later["arrival_s"]).to_numpy()
    print(f"wrote {args.out}: {records.height} requests, {later.height} later turns, sent on average "
          f"{delay.mean():.1f} s (median {float(np.median(delay)):.1f} s) after their open-loop time: they waited "
          "for the previous answer")


if __name__ == "__main__":
    main()
