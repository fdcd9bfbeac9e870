"""Trace characterisation (paper section III): distribution fits (`fits`), temporal statistics
(`temporal`), lengths (`lengths`), throughput and failures (`throughput`), sessions (`sessions`), prefix reuse and
LRU hit-rate curves of traces with prompt block ids (`prefix_reuse`), and
`characterise(trace) -> Characterisation` with `write_characterisation` for the tables and summary.json."""

from burstgpt.analysis.characterise import Characterisation, characterise, write_characterisation
from burstgpt.analysis.fits import (
    GammaFit,
    TimeResolution,
    ZipfFit,
    fit_gamma,
    fit_zipf,
    gamma_fit_per_window,
    time_resolution,
)
from burstgpt.analysis.prefix_reuse import PrefixReuse, prefix_reuse_statistics, reuse_profile, stack_distances

__all__ = [
    "Characterisation",
    "GammaFit",
    "PrefixReuse",
    "TimeResolution",
    "ZipfFit",
    "characterise",
    "fit_gamma",
    "fit_zipf",
    "gamma_fit_per_window",
    "prefix_reuse_statistics",
    "reuse_profile",
    "stack_distances",
    "time_resolution",
    "write_characterisation",
]
