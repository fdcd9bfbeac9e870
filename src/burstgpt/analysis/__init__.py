"""Trace characterisation (paper section III): distribution fits (`fits`), temporal statistics
(`temporal`), lengths (`lengths`), throughput and failures (`throughput`), sessions (`sessions`), and
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

__all__ = [
    "Characterisation",
    "GammaFit",
    "TimeResolution",
    "ZipfFit",
    "characterise",
    "fit_gamma",
    "fit_zipf",
    "gamma_fit_per_window",
    "time_resolution",
    "write_characterisation",
]
