"""Batch inference into a full output folder stops once, naming the folder and how far it got (it used to blame
each remaining input file and end without a summary), and leaves no partial output."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from custom.errors import describe
from custom.inference.folder_inference import OutputError, default_inference_transforms, infer_folder


class _Threshold(torch.nn.Module):
    """(B, 1, H, W, D) -> (B, 2, H, W, D) logits of ``image > 0.5``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_full_output_folder_stops_the_batch_once(tmp_path, small_tmpfs):
    small_disk = small_tmpfs("4k")  # room for one small label file
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        nib.save(nib.Nifti1Image(rng.random((24, 24, 16)).astype(np.float32), np.eye(4)), str(inputs / f"c{i}.nii.gz"))
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)
    with pytest.raises(OutputError) as info:
        infer_folder(_Threshold(), inputs, small_disk, pre, SimpleInferer(), post, raise_on_error=True)
    message = describe(info.value)
    assert message.startswith(f"{small_disk}: cannot write "), message
    assert "No space left on device, " in message and "images were segmented before it (their outputs are kept)" \
        in message
    assert str(inputs) not in message  # not blamed on an input
    for path in small_disk.iterdir():  # complete files only: no temporary or half-written output
        assert not path.name.startswith("."), path
        if path.name.endswith(".nii.gz"):
            assert nib.load(str(path)).shape == (24, 24, 16)
