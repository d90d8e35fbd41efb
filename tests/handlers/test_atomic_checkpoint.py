"""Training checkpoints are written to a temporary file and renamed: a full disk leaves no partial checkpoint."""

from __future__ import annotations

import os

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from custom.errors import describe
from custom.handlers.atomic_checkpoint import AtomicCheckpointSaver
from custom.io import DataError


def test_checkpoints_are_saved_and_rotated(tmp_path):
    net = nn.Conv3d(1, 2, 3)
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net, "peer": nn.Conv3d(1, 2, 1)}, save_interval=1,
                                  n_saved=1, save_final=True,
                                  final_filename="checkpoint_final.pt", epoch_level=True)
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "checkpoint_final.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    loaded = torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)
    assert torch.equal(loaded["network"]["weight"], net.weight)


def test_full_disk_leaves_no_partial_checkpoint(small_tmpfs):
    small_disk = small_tmpfs("64k")
    net = nn.Conv3d(1, 64, 5)  # 8,064 parameters, about 33 KiB: two do not fit in 64 KiB
    saver = AtomicCheckpointSaver(str(small_disk), {"network": net, "copy": nn.Conv3d(1, 64, 5)}, save_interval=1,
                                  n_saved=1, epoch_level=True)
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    with pytest.raises(DataError) as info:
        engine.run([0], max_epochs=1)
    target = small_disk / "checkpoint_epoch=1.pt"
    assert describe(info.value).startswith(f"{target}: cannot write the checkpoint: no space left on the device ("), \
        describe(info.value)
    assert list(small_disk.iterdir()) == []  # neither the checkpoint nor its temporary file
