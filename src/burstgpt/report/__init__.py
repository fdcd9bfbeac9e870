"""Run directories, run figures (paper Fig 16 style) and run comparisons. See `rundir` for the files."""

from burstgpt.report.rundir import RunDirectory, read_run_directory, render_run, write_run_directory

__all__ = ["RunDirectory", "read_run_directory", "render_run", "write_run_directory"]
