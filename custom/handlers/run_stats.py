"""Cost figures of a training run: seconds per iteration and peak memory, written to ``run_stats.json``.

Two per-iteration clocks: the *step* (``ITERATION_STARTED`` -> ``ITERATION_COMPLETED``: the trainer's process function,
data loading excluded) and the *iteration* (``GET_BATCH_STARTED`` -> ``ITERATION_COMPLETED``: fetching the batch from
the loader, i.e. the random transforms of a ``CacheDataset`` and the collation, plus the step). Their ratio says how
much the data pipeline adds to the network's work. ``progress.json`` (rewritten at every epoch end) lets a caller
such as the benchmark harness report per-epoch progress of a run in another process; each epoch end also logs a
progress line with the estimated time left (:func:`estimate_seconds_left`).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from custom.distributed import is_main_process
from custom.handlers.log_filters import install_fresh_run_filter
from custom.io import write_json

__all__ = ["RunStatsHandler", "estimate_seconds_left", "format_duration", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def estimate_seconds_left(elapsed_seconds: float, epochs_done: int, epochs_left: int) -> float | None:
    """Seconds left at this run's mean epoch time so far (validation and handlers included): ``elapsed_seconds /
    epochs_done * epochs_left``; ``None`` before the first epoch of this process ends.

    Raises:
        ValueError: for a negative number of epochs or elapsed seconds.
    """
    if epochs_done < 0 or epochs_left < 0 or elapsed_seconds < 0:
        raise ValueError(f"need non-negative values, got {elapsed_seconds=}, {epochs_done=}, {epochs_left=}.")
    if epochs_done == 0:
        return None
    return elapsed_seconds / epochs_done * epochs_left


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``3725.2`` -> ``1:02:05``)."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class RunStatsHandler:
    """Time each training iteration (data loading excluded, handlers on ITERATION_COMPLETED included only when
    they were attached before this one) and write ``run_stats.json`` at completion: iterations (of this process;
    ``resumed_from_iteration`` and ``total_iterations`` tell a resumed run's place), median and mean
    seconds per iteration, total training-step seconds, wall seconds, peak RSS and, on CUDA, peak allocated memory.
    """

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "run_stats.json"
        self.progress_path = Path(output_dir) / "progress.json"
        self.durations: list[float] = []
        self.iteration_durations: list[float] = []
        self._start = 0.0
        self._batch_start = 0.0
        self._wall = 0.0
        self._start_epoch = 0

    def attach(self, engine: Engine) -> None:
        # before the run starts: ignite's first line of a fresh run would read "resuming from iteration 0"
        install_fresh_run_filter()
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_batch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._wall = time.perf_counter()
        self._start_epoch = int(engine.state.epoch)  # > 0 when resumed: the estimate uses this process's epochs

    def _get_batch_started(self, engine: Engine) -> None:
        self._batch_start = time.perf_counter()

    def _iteration_started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # make the GPU time visible to the host clock (cost accounting only)
        now = time.perf_counter()
        self.durations.append(now - self._start)
        self.iteration_durations.append(now - self._batch_start)

    def _epoch_completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = engine.state
        elapsed = time.perf_counter() - self._wall
        left = estimate_seconds_left(elapsed, int(state.epoch) - self._start_epoch,
                                     max(int(state.max_epochs or state.epoch) - int(state.epoch), 0))
        write_json(
            {
                "epoch": state.epoch,
                "max_epochs": state.max_epochs,
                "iteration": state.iteration,
                "elapsed_seconds": round(elapsed, 1),
                "estimated_seconds_left": None if left is None else round(left, 1),
            },
            self.progress_path,
        )
        if left is not None:
            engine.logger.info(f"progress: epoch {state.epoch}/{state.max_epochs}, {format_duration(elapsed)} "
                               f"elapsed, about {format_duration(left)} left")

    def _completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        d, full = self.durations, self.iteration_durations
        step_median = statistics.median(d) if d else None
        full_median = statistics.median(full) if full else None
        stats = {
            "iterations": len(d),
            # a resumed run times only its own iterations; these say where it started and where the run stands
            "resumed_from_iteration": max(int(engine.state.iteration) - len(d), 0),
            "total_iterations": int(engine.state.iteration),
            "seconds_per_iteration_median": step_median,
            "seconds_per_iteration_mean": statistics.fmean(d) if d else None,
            "seconds_per_iteration_with_data_median": full_median,
            "iteration_to_step_ratio": (full_median / step_median) if step_median and full_median else None,
            "train_step_seconds": sum(d),
            "wall_seconds": time.perf_counter() - self._wall,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        }
        write_json(stats, self.path)
