"""Run folders: an existing run or bundle is never reused silently, a folder in use is locked, a failed run leaves
no empty folders, and a resumed run removes the checkpoint it started from once it has saved a newer one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ignite.engine import Engine

from custom.errors import OptionError
from custom.handlers.run_folder import LOCK_FILE, RunFolderHandler, claim_run_folder, run_outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK = "['configs/supervised_la.json','configs/quick.json']"


def _finished_run(folder: Path) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint_final.pt").write_bytes(b"x")
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes(b"x")
    (folder / "notes.txt").write_text("mine")


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    folder = tmp_path / "bundle"
    _finished_run(folder)
    assert run_outputs(folder) == ["checkpoints", "models"]
    with pytest.raises(OptionError) as info:
        claim_run_folder(folder)
    assert str(info.value) == (
        f"--output_dir: {folder} already holds a training run (checkpoints, models); pass --resume true to continue "
        "it, --overwrite true to replace it, or choose another --output_dir"
    )
    run = claim_run_folder(folder, resume=True)
    assert (folder / "models" / "model.pt").is_file()
    assert (folder / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    run.finished = True
    run.release()
    assert not (folder / LOCK_FILE).exists()

    run = claim_run_folder(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE, "notes.txt"]  # only the run's outputs deleted
    run.release()
    with pytest.raises(OptionError, match="--overwrite: cannot be combined with --resume true"):
        claim_run_folder(folder, resume=True, overwrite=True)
    with pytest.raises(OptionError, match="--resume: must be true or false, got 'true'"):
        claim_run_folder(folder, resume="true")


def test_folder_in_use_is_locked_and_a_stale_lock_is_taken_over(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (folder / LOCK_FILE).write_text(f"{other.pid} {socket.gethostname()}\n")
        with pytest.raises(OptionError) as info:
            claim_run_folder(folder)
        assert str(info.value).startswith(f"--output_dir: {folder.resolve()} is in use by another training run "
                                          f"(process {other.pid} on ")
    finally:
        other.kill()
        other.wait()
    run = claim_run_folder(folder)  # the process is gone: its lock is stale
    assert (folder / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    run.release()


def test_unfinished_run_removes_the_folder_it_created_or_its_empty_subfolders(tmp_path):
    fresh = tmp_path / "fresh"
    run = claim_run_folder(fresh)
    (fresh / "logs").mkdir()
    (fresh / "logs" / "events.out").write_text("x")
    (fresh / "checkpoints").mkdir()
    run.release()  # failed before the first checkpoint
    assert not fresh.exists()

    kept = tmp_path / "kept"
    run = claim_run_folder(kept)
    (kept / "checkpoints").mkdir()
    (kept / "checkpoints" / "checkpoint_epoch=1.pt").write_bytes(b"x")
    (kept / "logs").mkdir()
    run.release()  # killed after a checkpoint: kept for --resume; the empty logs/ goes
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoints"]


def test_resumed_run_removes_its_starting_checkpoints_once_it_saved_a_newer_one(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt", "checkpoint_final.pt", "model_best_val.pt"):
        (checkpoints / name).write_bytes(b"old")
    engine = Engine(lambda e, b: None)
    handler = RunFolderHandler(tmp_path, resumed_from=checkpoints / "checkpoint_epoch=3.pt")
    handler.attach(engine)
    handler(engine)
    assert len(list(checkpoints.iterdir())) == 4  # nothing newer yet
    time.sleep(0.01)
    (checkpoints / "checkpoint_epoch=4.pt").write_bytes(b"new")
    (checkpoints / "checkpoint_final.pt").write_bytes(b"rewritten")
    handler(engine)
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint_epoch=4.pt", "checkpoint_final.pt", "model_best_val.pt"]


def _train(out: Path, demo_dataset: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NOISYSEG_TRACEBACK", None)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", QUICK, "--device", "cpu",
               "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset), "--output_dir", str(out),
               *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_second_training_into_a_finished_bundle_is_refused(demo_dataset, tmp_path):
    out = tmp_path / "bundle"
    first = _train(out, demo_dataset)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    second = _train(out, demo_dataset, "--max_epochs", "2")
    assert second.returncode == 1
    last = [line for line in second.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"noisyseg: error: --output_dir: {out} already holds a training run"), last
    assert "Traceback" not in second.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    third = _train(out, demo_dataset, "--max_epochs", "2", "--overwrite", "true")
    assert third.returncode == 0, third.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint_epoch=2.pt", "checkpoint_final.pt", "model_best_val.pt"]
    assert not (out / LOCK_FILE).exists()
    resumed = _train(out, demo_dataset, "--max_epochs", "3", "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [  # epoch 2's checkpoint went
        "checkpoint_epoch=3.pt", "checkpoint_final.pt", "model_best_val.pt"]
