"""Shared pieces of the step benchmark scripts (``scripts/benchmark_step.py``, ``benchmark_spguided.py``,
``benchmark_jcas.py``): the interleaved step timer and the host-allocator option."""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TIME_KINDS", "add_default_malloc_argument", "synchronize", "interleaved_step_times"]

#: what :func:`interleaved_step_times` records per step and round, in seconds
TIME_KINDS = ("wall", "cpu", "user", "sys")


def add_default_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """``--default-malloc``: leave glibc's allocator alone instead of applying the training's setting."""
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator at its defaults (training, like this script by default, keeps "
                             "freed host memory: custom.host_memory, config key retain_host_memory)")


def synchronize(device) -> None:
    """Wait for queued CUDA work on ``device`` (a ``torch.device``), so that a step's time includes it (no-op on the
    CPU). torch is imported here, not at module level, so that the scripts' argument parsing stays fast."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _user_system() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def interleaved_step_times(
    steps: dict[str, Callable[[], Any]], warmup: int, repeats: int, device
) -> dict[str, dict[str, list[float]]]:
    """Round-robin timing: ``warmup`` untimed rounds, then ``repeats`` timed rounds of every step.

    Interleaving the steps makes load changes on a shared machine hit all of them alike.

    Returns:
        ``{step: {kind: [seconds per round]}}`` for each kind of :data:`TIME_KINDS`: the wall clock, the process's
        CPU time (``time.process_time``) and its user / system split (``getrusage``).
    """
    times = {name: {kind: [] for kind in TIME_KINDS} for name in steps}
    for round_index in range(warmup + repeats):
        for name, run in steps.items():
            synchronize(device)
            wall, cpu, (user, system) = time.perf_counter(), time.process_time(), _user_system()
            run()
            synchronize(device)
            if round_index >= warmup:
                end_user, end_system = _user_system()
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
                times[name]["user"].append(end_user - user)
                times[name]["sys"].append(end_system - system)
    return times
