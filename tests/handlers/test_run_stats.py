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
