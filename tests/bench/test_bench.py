"""The benchmark scripts run end to end (tiny models) and write their table and JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_diffusion_benchmark_writes_one_row_per_setting(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "diffusion_step.py"), "--config", "tiny", "--steps", "1",
                           "--cutns", "4", "--num-images", "1", "2", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pixel:tiny" in done.stdout and "latent:tiny" in done.stdout
    report = json.loads(out.read_text())
    assert {"torch", "threads"} <= set(report["machine"])
    assert [(row["model"], row["num_images"]) for row in report["results"]] == [
        ("pixel:tiny", 1), ("pixel:tiny", 2), ("latent:tiny", 1), ("latent:tiny", 2)]
    for row in report["results"]:
        assert row["seconds_per_step"] > 0 and row["peak_memory_mib"] > 0 and row["memory_kind"] == "process RSS"
        assert row["images_per_second"] == pytest.approx(row["num_images"] / row["seconds_per_step"], rel=1e-2)
