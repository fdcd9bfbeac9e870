"""Run directories, run figures (paper Fig 16 style) and run comparisons. The files and reading them back live
in `burstgpt.records`; `rundir` writes a complete run (metrics, time series, figure, summary)."""

from burstgpt.records import RunDirectory, RunSummary, read_run_directory
from burstgpt.report.rundir import render_run, write_run_directory

__all__ = ["RunDirectory", "RunSummary", "read_run_directory", "render_run", "write_run_directory"]
