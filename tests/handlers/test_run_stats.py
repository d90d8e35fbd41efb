"""run_stats.json of a resumed run says where it started (issue 19)."""

from __future__ import annotations

import json

from ignite.engine import Engine, Events

from custom.handlers.run_stats import RunStatsHandler


def test_resumed_run_reports_its_first_and_total_iterations(tmp_path):
    engine = Engine(lambda e, b: None)
    RunStatsHandler(str(tmp_path)).attach(engine)

    @engine.on(Events.STARTED)
    def resume(e):  # what CheckpointLoader does after 2 of 4 epochs of 3 iterations
        e.state.epoch, e.state.iteration = 2, 6

    engine.run(range(3), max_epochs=4)
    stats = json.loads((tmp_path / "run_stats.json").read_text())
    assert stats["iterations"] == 6 and stats["resumed_from_iteration"] == 6 and stats["total_iterations"] == 12


def test_estimate_seconds_left_and_format():
    import pytest

    from custom.handlers.run_stats import estimate_seconds_left, format_duration

    assert estimate_seconds_left(30.0, 3, 7) == 70.0  # 10 s per epoch, 7 epochs to go
    assert estimate_seconds_left(5.0, 0, 4) is None  # no epoch of this process finished yet
    assert estimate_seconds_left(30.0, 3, 0) == 0.0
    with pytest.raises(ValueError):
        estimate_seconds_left(1.0, -1, 2)
    assert format_duration(3725.2) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"


def _logged_run(tmp_path, caplog, resume_at_epoch: int = 0) -> list[str]:
    import logging

    engine = Engine(lambda e, b: None)
    engine.logger = logging.getLogger("ignite.engine.engine.TestTrainer")
    with caplog.at_level(logging.INFO):
        RunStatsHandler(str(tmp_path)).attach(engine)
        # as MONAI's Workflow does before run(): max_epochs set, so ignite speaks of resuming even at iteration 0
        engine.state.max_epochs = 3
        engine.state.epoch_length = 2
        engine.state.epoch = resume_at_epoch
        engine.state.iteration = resume_at_epoch * 2
        engine.run([0, 1], max_epochs=3)
    return [r.getMessage() for r in caplog.records]


def test_a_fresh_run_says_starting_and_logs_the_time_left(tmp_path, caplog):
    messages = _logged_run(tmp_path, caplog)
    assert not any("resuming" in m for m in messages), messages
    assert any(m.startswith("Engine run starting at iteration 0, epoch 0 until 3 epochs") for m in messages), messages
    progress = [m for m in messages if m.startswith("progress: ")]
    assert [m.split(",")[0] for m in progress] == ["progress: epoch 1/3", "progress: epoch 2/3", "progress: epoch 3/3"]
    assert all(" elapsed, about " in m and m.endswith(" left") for m in progress)
    assert json.loads((tmp_path / "progress.json").read_text())["estimated_seconds_left"] == 0.0


def test_a_real_resume_keeps_ignites_resuming_line(tmp_path, caplog):
    messages = _logged_run(tmp_path, caplog, resume_at_epoch=1)
    assert any(m.startswith("Engine run resuming from iteration 2, epoch 1") for m in messages), messages
    assert [m.split(",")[0] for m in messages if m.startswith("progress: ")] == ["progress: epoch 2/3",
                                                                                 "progress: epoch 3/3"]
