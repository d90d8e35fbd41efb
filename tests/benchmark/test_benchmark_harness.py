"""A tiny benchmark end to end (2 methods, 1 setting, 2 iterations each) so that the harness cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from custom.benchmark.harness import aggregate

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fake_la(folder: Path, n_train: int = 6, n_test: int = 2) -> Path:
    """Tiny LA-like h5 cases: a bright ellipsoid (label 1) in noise, z-scored like the real files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"CASE{i:02d}" for i in range(n_train + n_test)]
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in (48, 40, 32)], indexing="ij")
    for i, case in enumerate(ids):
        c = np.array([24, 20, 16]) + rng.integers(-3, 4, size=3)
        label = (((zz - c[0]) / 12.0) ** 2 + ((yy - c[1]) / 9.0) ** 2 + ((xx - c[2]) / 7.0) ** 2) <= 1
        image = label * 2.0 + rng.normal(0, 0.5, label.shape)
        image = (image - image.mean()) / image.std()
        with h5py.File(folder / f"{case}.h5", "w") as f:
            f.create_dataset("image", data=image.astype(np.float32))
            f.create_dataset("label", data=label.astype(np.uint8))
    (folder / "train.list").write_text("\n".join(ids[:n_train]) + "\n")
    (folder / "test.list").write_text("\n".join(ids[n_train:]) + "\n")
    return folder


def test_tiny_benchmark_writes_results_report_and_resumes(tmp_path):
    h5 = _fake_la(tmp_path / "h5")
    work = tmp_path / "work"
    report = tmp_path / "docs" / "bench.md"
    cmd = [sys.executable, "scripts/benchmark.py", "--h5-dir", str(h5), "--work-dir", str(work), "--settings",
           "mtcl_hq25", "--methods", "h_sup", "hl_sup", "--profile", "quick", "--downsample", "1",
           "--report", str(report), "--override", "val_interval=100"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((work / "results.json").read_text())
    assert sorted(r["method"] for r in rows) == ["h_sup", "hl_sup"]
    for row in rows:
        assert 0.0 <= row["dice_mean"] <= 1.0
        assert row["iterations"] == 2 and row["sec_per_iter"] > 0
        assert row["seed"] == 0 and row["setting"] == "mtcl_hq25"
        run = work / "mtcl_hq25" / f"{row['method']}_s0"
        assert (run / "models" / "model.pt").is_file() and (run / "training_command.json").is_file()
    text = report.read_text()
    assert "| H-Sup |" in text and "| HL-Sup |" in text
    # resumable: a second invocation finds both runs finished and trains nothing
    stamp = (work / "mtcl_hq25" / "h_sup_s0" / "models" / "model.pt").stat().st_mtime_ns
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "mtcl_hq25" / "h_sup_s0" / "models" / "model.pt").stat().st_mtime_ns == stamp


def test_aggregate_means_over_seeds():
    rows = [{"setting": "s", "method": "m", "seed": 0, "dice_mean": 0.5},
            {"setting": "s", "method": "m", "seed": 1, "dice_mean": 0.7}]
    agg = aggregate(rows)
    assert agg[("s", "m")]["dice_mean"] == 0.6 and agg[("s", "m")]["n_seeds"] == 2
