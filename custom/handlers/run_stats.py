"""Cost figures of a training run: seconds per iteration and peak memory, written to ``run_stats.json``."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from custom.io import write_json

__all__ = ["RunStatsHandler", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class RunStatsHandler:
    """Time each training iteration (data loading excluded, handlers on ITERATION_COMPLETED included only when
    they were attached before this one) and write ``run_stats.json`` at completion: iterations, median and mean
    seconds per iteration, total training-step seconds, wall seconds, peak RSS and, on CUDA, peak allocated memory.
    """

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "run_stats.json"
        self.durations: list[float] = []
        self._start = 0.0
        self._wall = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._wall = time.perf_counter()

    def _iteration_started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # make the GPU time visible to the host clock (cost accounting only)
        self.durations.append(time.perf_counter() - self._start)

    def _completed(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return
        d = self.durations
        stats = {
            "iterations": len(d),
            "seconds_per_iteration_median": statistics.median(d) if d else None,
            "seconds_per_iteration_mean": statistics.fmean(d) if d else None,
            "train_step_seconds": sum(d),
            "wall_seconds": time.perf_counter() - self._wall,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        }
        write_json(stats, self.path)
