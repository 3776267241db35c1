"""The benchmark harness runs end to end at the tiniest sizes and writes its results.

This proves `python -m bench` works (processes start, every phase runs, JSON and Markdown
are written with the expected shape); it asserts nothing about timings, which belong to the
bench's own report, not to the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--quick", "--concurrency", "1,2", "--requests", "3", "--idle-streams", "20",
    "--disconnect-trials", "2", "--no-litellm",
]


def test_bench_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *TINY, "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "LOAD: against the baseline" in done.stdout

    (json_path,) = tmp_path.glob("*.json")
    (md_path,) = tmp_path.glob("*.md")
    assert json_path.stem == md_path.stem
    result = json.loads(json_path.read_text())
    assert set(result) == {"meta", "load", "idle", "disconnect", "litellm", "workers",
                           "reference", "pipeline"}
    # the pure per-chunk steps, timed on a real answer of the emulator
    pipeline = result["pipeline"]
    assert pipeline["chunks"] >= 4 and len(pipeline["us_per_chunk"]) == 5
    assert all(value > 0 for value in pipeline["us_per_chunk"].values())
    assert {"started_at", "host", "settings", "notes", "command"} <= set(result["meta"])
    assert {"cpus", "python", "platform"} <= set(result["meta"]["host"])

    rows = result["load"]
    faces = {(r["http"], r["stream"], r["level"], r["face"]) for r in rows}
    for http in ("1.1", "h2c"):
        for stream in (False, True):
            for level in (1, 2):
                for face in ("baseline", "anthropic", "openai"):
                    assert (http, stream, level, face) in faces
    for row in rows:
        assert row["ok"] == row["requests"] > 0, row
        assert set(row["ttfb_ms"]) == set(row["ttlb_ms"]) == {"p50", "p90", "p99"}
        if row["face"] != "baseline":
            assert row["ratio_ttlb"] is not None and row["added_ttfb_ms"] is not None
            assert row["ratio_rps"] is not None
            if row["stream"] and row["proxy_cpu_seconds"] > 0:  # /proc counts 10 ms ticks
                assert row["chunks_per_core_second"] is not None

    assert {(i["http"], i["requested"]) for i in result["idle"]} == {("1.1", 20), ("h2c", 20)}
    assert all(i["opened"] == 20 and i["rss_per_stream_kib"] is not None
               for i in result["idle"])
    drops = {(d["http"], d["drop"], d["path"]) for d in result["disconnect"]}
    assert ("h2c", "reset", "baseline") in drops and ("1.1", "close", "baseline") in drops
    assert all(d["measured"] == d["tries"] == 2 for d in result["disconnect"])
    assert result["litellm"]["status"] == "off"
    # 1 and 2 workers on shared state (redis-server is installed where the suite runs)
    assert result["workers"]["status"] == "measured", result["workers"]
    for workers in ("workers-1", "workers-2"):
        assert ("1.1", True, 2, workers) in faces
    # the Node reference from npm (node and npm are there wherever the suite runs)
    assert result["reference"]["status"] == "measured", result["reference"]
    assert ("1.1", True, 2, "node-ref") in faces and ("1.1", False, 1, "node-ref") in faces
    assert ("1.1", True, 2, "bare-hypercorn") in faces  # the stack's own ceiling
    assert ("1.1", True, 2, "bare-direct") in faces  # and with the gateway's direct writes
    assert ("1.1", True, 2, "bare-relay") in faces  # and relaying the emulator's answers

    markdown = md_path.read_text()
    for heading in ("## Load: absolute figures", "## Load: against the baseline",
                    "## Idle streams", "## Client disconnect", "## Workers",
                    "## The gateway's pure per-chunk work"):
        assert heading in markdown
