"""``ssl_mt`` (configs/alc_la.json + configs/ablations/ssl_mt.json) never uses the LQ labels.

Two one-step trainings, built from the real configs on tiny NIfTI cases, differ only in the LQ cases' labels: the
student's weights after the step must be identical, bit for bit. Two controls show that the comparison can fail: the
plain Mean Teacher overlay (LQ labels as targets) and ssl_mt's trainer options with the default LQ transform (patches
cropped around the LQ label's foreground) both give different weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

VOLUME = (24, 24, 16)  # larger than the patch in x and y: where a patch is cropped matters
PATCH = [16, 16, 16]


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny dataset twice; in the second, every LQ label is replaced by another foreground blob."""
    from custom.data import make_synthetic_dataset

    first = Path(
        make_synthetic_dataset(tmp_path_factory.mktemp("ssl_a") / "data", num_cases=6, shape=VOLUME, val_count=0,
                               test_count=1, hq_fraction=0.4, seed=0)
    )
    second = tmp_path_factory.mktemp("ssl_b") / "data"
    shutil.copytree(first.parent, second)
    lq = [i for i in json.loads(first.read_text())["training"] if i.get("quality") != "hq"]
    assert lq
    for index, item in enumerate(lq):
        path = second / item["label"]
        image = nib.load(str(path))
        label = np.zeros(image.shape, dtype=np.uint8)
        x0 = 2 + 3 * index
        label[x0 : x0 + 6, 14:20, 4:10] = 1  # a box elsewhere: other crop centres, other targets
        assert not np.array_equal(label, np.asarray(image.dataobj))
        nib.save(nib.Nifti1Image(label, image.affine), str(path))
    return first, second / "datalist.json"


def _one_step_weights(repo_root: Path, datalist: Path, overlays: list[str], **overrides) -> dict[str, torch.Tensor]:
    """Student weights after one training step of ``configs/alc_la.json`` + ``overlays`` on ``datalist``."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config([str(repo_root / "configs" / "alc_la.json"), *(str(repo_root / o) for o in overlays)])
    settings = dict(
        dataset_dir=str(datalist.parent), datalist=str(datalist), device="cpu", patch_size=PATCH, network_width=4,
        dropout=0.0, max_epochs=1, epoch_length=1, batch_hq=1, batch_lq=2, num_workers=0, amp=False, **overrides,
    )
    for key, value in settings.items():
        parser[key] = value
    parser["train"]["trainer"]["train_handlers"] = []  # the step alone: no validation, bundle or log writers
    set_determinism(seed=0)
    try:
        trainer = parser.get_parsed_content("train::trainer")
        trainer.run()
        return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    finally:
        set_determinism(seed=None)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ssl_mt_overlay_switches_off_every_use_of_the_lq_labels(repo_root):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(repo_root / "configs" / n) for n in ("alc_la.json", "ablations/ssl_mt.json")])
    assert (parser["refine_labels"], parser["select_samples"]) == (False, False)
    assert (parser["lambda_sel"], parser["lambda_noisy"]) == (0.0, 0.0)
    assert parser["two_stream_data"]["lq_dataset"]["transform"] == "@ssl_lq_transform"


def test_lq_labels_do_not_change_the_ssl_mt_step(repo_root, two_datasets):
    original, changed = two_datasets
    overlay = ["configs/ablations/ssl_mt.json"]
    a = _one_step_weights(repo_root, original, overlay)
    b = _one_step_weights(repo_root, changed, overlay)
    assert _same(a, b)
    start = _one_step_weights(repo_root, original, overlay, learning_rate=0.0)
    assert not _same(a, start)  # the step did train the student


def test_mean_teacher_step_depends_on_the_lq_labels(repo_root, two_datasets):
    original, changed = two_datasets
    overlay = ["configs/ablations/mean_teacher.json"]
    assert not _same(_one_step_weights(repo_root, original, overlay), _one_step_weights(repo_root, changed, overlay))


def test_label_guided_lq_crop_alone_lets_the_lq_labels_in(repo_root, two_datasets):
    """ssl_mt's losses with the default LQ transform (RandCropByPosNegLabeld on the LQ label): the crop positions
    carry the labels into the step, which is why the overlay crops the LQ patches at random."""
    original, changed = two_datasets
    overlay = ["configs/ablations/ssl_mt.json"]

    def weights(datalist: Path) -> dict[str, torch.Tensor]:
        return _one_step_weights(repo_root, datalist, overlay, ssl_lq_transform="@transforms::train")

    assert not _same(weights(original), weights(changed))
