"""The README's Python API block runs as written: trace -> analysis -> fit -> WorkloadSpec -> simulate, and the
same workload against serve-sim through the load generator, without argparse."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    block = match.group(1)
    first_line = text[: text.index("## Python API") + match.start(1)].count("\n")
    block = "\n" * first_line + block  # tracebacks then point at README lines
    assert "argparse" not in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    simulated, measured = namespace["simulated"].records, namespace["measured"].records
    workload = namespace["workload"]
    assert workload.height > 20
    # Both runs account for every workload request, and the real-time server agrees with the offline engine.
    assert simulated.height == measured.height == workload.height
    assert (measured["status"] == "ok").all() and (simulated["status"] == "ok").all()
    sim_e2e = (simulated["end_s"] - simulated["scheduled_s"]).median()
    real_e2e = (measured["end_s"] - measured["sent_s"]).median()
    assert abs(real_e2e - sim_e2e) / sim_e2e < 0.1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("simulated ") for line in lines) and any(line.startswith("measured ") for line in lines)
    assert (tmp_path / "analysis" / "summary.json").exists()
    summary = json.loads((tmp_path / "runs" / "api" / "summary.json").read_text())
    assert summary["producer"] == "bench"
    assert json.loads((tmp_path / "runs" / "api" / "config.json").read_text())["workload"]["arrivals"]["kind"] == \
        "mirrored"
