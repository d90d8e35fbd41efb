"""Resume: a run stopped after N iterations continues from its checkpoint with iteration count, optimizer and
scheduler state restored (through the real configs and MONAI's CheckpointSaver/CheckpointLoader)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[2]


def _workflow(demo_dataset, out, **overrides):
    wf = ConfigWorkflow(
        config_file=["configs/supervised_la.json", "configs/quick.json"], workflow_type="train",
        dataset_dir=str(demo_dataset.parent), datalist=str(demo_dataset), output_dir=str(out), device="cpu",
        val_interval=100, **overrides,
    )
    wf.initialize()
    return wf


def test_resume_restores_iteration_optimizer_and_scheduler(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "run"
    first = _workflow(demo_dataset, out, max_epochs=1, epoch_length=2)
    first.run()
    trainer1 = first.parser.get_parsed_content("train::trainer")
    assert trainer1.state.iteration == 2
    momentum1 = {k: v["momentum_buffer"].clone() for k, v in trainer1.optimizer.state_dict()["state"].items()}
    lr1 = trainer1.optimizer.param_groups[0]["lr"]

    second = _workflow(demo_dataset, out, max_epochs=2, epoch_length=2, resume=True)
    trainer2 = second.parser.get_parsed_content("train::trainer")
    started = {}

    def record_first_iteration(engine):
        if not started:  # before the first new step: what the checkpoint restored
            started.update(
                iteration=engine.state.iteration, lr=engine.optimizer.param_groups[0]["lr"],
                momentum={k: v["momentum_buffer"].clone() for k, v in engine.optimizer.state_dict()["state"].items()},
            )

    trainer2.add_event_handler(Events.ITERATION_STARTED, record_first_iteration)
    second.run()
    # restored before the first new iteration: counter, optimizer momentum and the scheduled learning rate
    assert started["iteration"] == 3  # ignite counts the new iteration before ITERATION_STARTED
    assert started["lr"] == lr1
    assert momentum1.keys() == started["momentum"].keys()
    for k in momentum1:
        torch.testing.assert_close(started["momentum"][k], momentum1[k])
    # and it ran only the remaining epoch
    assert trainer2.state.iteration == 4 and trainer2.state.epoch == 2

    # without resume the same command starts from scratch
    third = _workflow(demo_dataset, tmp_path / "fresh", max_epochs=1, epoch_length=2, resume=True)
    trainer3 = third.parser.get_parsed_content("train::trainer")
    seen = []
    trainer3.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.iteration))
    third.run()
    assert seen[0] == 1


def _complete_zip(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


@pytest.mark.slow  # subprocess trainings: ~20-35 s; CI runs them with -m slow
@pytest.mark.parametrize("method", ["supervised_la", "alc_la"])  # one DataLoader; a TwoStreamLoader + a teacher
def test_killed_and_resumed_run_ends_with_the_weights_of_the_unbroken_run(method, demo_dataset, tmp_path):
    """Issue 19: SIGKILL after the first epoch checkpoint, then ``--resume true``: bit-identical final weights on CPU
    (the RNG states, the random transforms' states and the loaders' positions are in the checkpoint)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                f"['configs/{method}.json','configs/quick.json']", "--device", "cpu", "--val_interval", "1",
                "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset), "--output_dir", str(out),
                "--max_epochs", "3", "--epoch_length", "4", *extra]  # 4 iterations: not a whole pass over the data

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    unbroken = tmp_path / "unbroken"
    subprocess.run(command(unbroken), cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(command(broken), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = broken / "checkpoints" / "checkpoint_epoch=1.pt"
    deadline = time.monotonic() + 600
    while not _complete_zip(first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "models" / "model.pt").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(command(broken, "--resume", "true"), cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = torch.load(unbroken / "models" / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(broken / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the best-metric tracker came back with the checkpoint: the same best model and score
    best_a = torch.load(unbroken / "checkpoints" / "model_best_val.pt", map_location="cpu", weights_only=True)
    best_b = torch.load(broken / "checkpoints" / "model_best_val.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
