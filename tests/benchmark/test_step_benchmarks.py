"""Smoke tests of the step benchmark scripts at tiny sizes: they run the real trainers and print their ratios.

No timing is asserted (timings are the scripts' output, not a test criterion); these tests keep the scripts working.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_step_compares_the_layouts_of_every_method(capsys):
    result = _load("benchmark_step").main(
        ["--patch", "32", "32", "16", "--base-filters", "2", "--batch-hq", "1", "--batch-lq", "2", "--num-samples",
         "2", "--compare-layouts", "--warmup", "0", "--repeats", "1", "--threads", "1", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    for method in ("supervised", "alc", "mtcl", "coteaching", "spguided", "jcas"):
        assert f"{method} contiguous" in result and f"{method} channels_last_3d" in result
        ratio = result[f"{method} ratio"]
        assert ratio == result[f"{method} channels_last_3d"] / result[f"{method} contiguous"] and ratio > 0
    assert "GFLOP/s achieved" in out and "measured matmul rate" in out
    assert result["supervised_gflop"] > 0 and result["matmul_gflops_float32"] > 0


def test_benchmark_step_prints_the_mtcl_split(capsys):
    result = _load("benchmark_step").main(
        ["--patch", "16", "16", "16", "--base-filters", "4", "--batch-hq", "1", "--batch-lq", "2", "--num-samples",
         "2", "--steps", "mean_teacher", "mtcl", "mt_plus_clean_pass", "mtcl_correction", "--warmup", "0",
         "--repeats", "1", "--threads", "1", "--device", "cpu", "--default-malloc"]
    )
    out = capsys.readouterr().out
    assert "host allocator: glibc defaults" in out
    assert "MTCL whole-step overhead" in out and "of which the correction" in out
    for key in ("mean_teacher", "mtcl", "mt_plus_clean_pass", "mtcl_correction", "mtcl_overhead_cpu",
                "mtcl_correction_cpu"):
        assert key in result and result[key] == result[key]  # present and not NaN


def test_benchmark_spguided_prints_the_ratio_to_two_supervised_steps(capsys):
    result = _load("benchmark_spguided").main(
        ["--patch", "32", "32", "16", "--base-filters", "4", "--batch", "2", "--steps", "spguided", "--warmup", "0",
         "--repeats", "1", "--device", "cpu", "--default-malloc"]
    )
    out = capsys.readouterr().out
    assert "host allocator: glibc defaults" in out
    assert "SP-guided / two supervised steps" in out
    assert result["supervised_x2/supervised_x2"] == 1.0 and result["spguided/supervised_x2"] > 0


@pytest.mark.skipif(sys.platform != "linux", reason="peak memory is read from ru_maxrss in KiB (Linux)")
def test_benchmark_jcas_workers_report_every_variant(monkeypatch, capsys):
    module = _load("benchmark_jcas")
    monkeypatch.setitem(module.SETTINGS, "tiny", {"patch": [32, 32, 16], "base_filters": 4, "batch": 2,
                                                  "token_grid": [4, 4, 2]})
    results = {variant: module.measure(variant, module.SETTINGS["tiny"], 0, 1, "cpu", 1) for variant in module.VARIANTS}
    table = module._table("tiny", module.SETTINGS["tiny"], results)
    assert "jcas / jcas_no_dar" in table
    assert all(r["median_cpu_s"] > 0 for r in results.values())


def test_interleaved_step_times_round_robin_and_warmup():
    import torch

    from custom.benchmark.step_timing import TIME_KINDS, interleaved_step_times

    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved_step_times(steps, warmup=1, repeats=3, device=torch.device("cpu"))
    assert calls == ["a", "b"] * 4  # interleaved, warm-up round included
    for name in steps:
        assert set(times[name]) == set(TIME_KINDS)
        assert all(len(times[name][kind]) == 3 and min(times[name][kind]) >= 0 for kind in TIME_KINDS)
