"""Issue 19: the bundle entry points end with one line naming the file or option and the problem, and a bad option
or dataset leaves nothing behind. Each test builds its bad input and runs ``python -m monai.bundle`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.errors import (
    PREFIX,
    OptionError,
    describe,
    install_excepthook,
    quiet_unactionable_warnings,
    root_cause,
    source_file,
)
from custom.io import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK = "['configs/alc_la.json','configs/quick.json']"


def _bundle(run_id: str, *args: str, config: str = QUICK, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NOISYSEG_TRACEBACK", None)
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, "--device", "cpu", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stdout[-2000:]
    return lines[-1]


def _copy_dataset(datalist: Path, dest: Path) -> Path:
    shutil.copytree(datalist.parent, dest)
    return dest / datalist.name


# ------------------------------------------------------------------------------------------- unit level


def test_root_cause_unwraps_monai_wrappers_and_prefers_user_errors():
    try:
        try:
            try:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            except EOFError as exc:
                raise DataError("/data/a.nii.gz", "cannot read NIfTI") from exc
        except DataError as exc:
            raise RuntimeError("applying transform <LoadImaged object at 0x1>") from exc
    except RuntimeError as exc:
        wrapped = exc
    assert isinstance(root_cause(wrapped), DataError)
    assert describe(wrapped) == "/data/a.nii.gz: cannot read NIfTI"

    try:
        try:
            raise TypeError("'>' not supported between instances of 'str' and 'int'")
        except TypeError as exc:
            raise RuntimeError("Failed to instantiate component 'x' with keywords: a") from exc
    except RuntimeError as exc:
        assert describe(exc) == "TypeError: '>' not supported between instances of 'str' and 'int'"


def test_source_file_names_the_file_a_library_error_came_from(tmp_path):
    path = tmp_path / "case.nii.gz"
    path.write_bytes(b"x")

    def load(filename):
        raise EOFError("Compressed file ended")

    try:
        load(str(path))
    except EOFError as exc:
        assert source_file(exc) == str(path)
        assert describe(exc) == f"{path}: EOFError: Compressed file ended"


def test_excepthook_prints_one_last_line(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: calls.append(a))
    install_excepthook()
    install_excepthook()  # idempotent
    err = OptionError("patch_size", "must be 3 positive integers")
    sys.excepthook(OptionError, err, None)
    assert capsys.readouterr().err.splitlines()[-1] == PREFIX + "--patch_size: must be 3 positive integers"
    assert calls == []  # a user error: no traceback
    other = ZeroDivisionError("division by zero")
    sys.excepthook(ZeroDivisionError, other, None)
    assert capsys.readouterr().err.splitlines()[-1] == PREFIX + "ZeroDivisionError: division by zero"
    assert len(calls) == 1  # a bug: the traceback first


# ------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "override, expected",
    [
        (("--patch_size", "abc"), "--patch_size: must be a list of 3 positive integers"),
        (("--patch_size", "[16,16]"), "--patch_size: must have 3 sizes"),
        (("--patch_size", "[40,40,24]"), "nearest valid sizes: [32, 32, 16] or [48, 48, 32]"),
        (("--max_epochs", "abc"), "--max_epochs: must be an integer >= 1, got 'abc'"),
        (("--epoch_length", "0"), "--epoch_length: must be an integer >= 1, got 0"),
        (("--batch_lq", "0"), "--batch_lq: must be an integer >= 1, got 0"),
        (("--learning_rate", "-1"), "--learning_rate: must be in (0.0, inf], got -1"),
    ],
)
def test_bad_option_is_one_line_and_leaves_nothing(override, expected, demo_dataset, tmp_path):
    out = tmp_path / "bundle"
    proc = _bundle("training", "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset),
                   "--output_dir", str(out), *override)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = _last_line(proc)
    assert last.startswith(PREFIX) and expected in last, last
    assert not out.exists()  # no checkpoints/ or logs/ left behind
    assert len(proc.stderr.splitlines()) < 15  # no 100-line traceback for a user error


@pytest.mark.parametrize(
    "override, expected",
    [
        (("--batch_size", "0"), "--batch_size: must be an integer >= 1, got 0"),
        (("--label_mode", "foo"), "--label_mode: must be one of ('hq', 'hq+lq', 'clean'), got 'foo'"),
    ],
)
def test_bad_option_of_the_supervised_config(override, expected, demo_dataset, tmp_path):
    out = tmp_path / "bundle"
    proc = _bundle("training", "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset),
                   "--output_dir", str(out), *override, config="['configs/supervised_la.json','configs/quick.json']")
    assert proc.returncode == 1
    assert _last_line(proc) == PREFIX + expected
    assert not (out / "models").exists()
    assert len(proc.stderr.splitlines()) < 15


# ------------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("run_id", ["training", "inference"])
def test_mistyped_dataset_dir_is_an_error_naming_it(run_id, tmp_path):
    missing = tmp_path / "data" / "la_mtcl_dsx"
    out = tmp_path / "bundle"
    proc = _bundle(run_id, "--dataset_dir", str(missing), "--output_dir", str(out))
    assert proc.returncode == 1
    last = _last_line(proc)
    assert last.startswith(PREFIX + str(missing)) and "dataset folder not found" in last, last
    assert not (tmp_path / "data").exists() and not out.exists()  # no demo set generated there


def test_datalist_error_is_not_buried_under_failed_to_instantiate(demo_dataset, tmp_path):
    datalist = _copy_dataset(demo_dataset, tmp_path / "data")
    content = json.loads(datalist.read_text())
    content["training"][0].pop("label")
    datalist.write_text(json.dumps(content))
    out = tmp_path / "bundle"
    proc = _bundle("training", "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
                   "--output_dir", str(out))
    assert proc.returncode == 1
    last = _last_line(proc)
    assert last.startswith(PREFIX + str(datalist)) and "lacks required key(s) ['label']" in last, last
    assert "Failed to instantiate" not in last
    assert not out.exists()


def _training_image(datalist: Path) -> Path:
    item = json.loads(datalist.read_text())["training"][0]
    return datalist.parent / item["image"]


def test_truncated_image_names_the_file_and_the_cause(demo_dataset, tmp_path):
    datalist = _copy_dataset(demo_dataset, tmp_path / "data")
    image = _training_image(datalist)
    raw = image.read_bytes()
    image.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "bundle"
    proc = _bundle("training", "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
                   "--output_dir", str(out))
    assert proc.returncode == 1
    last = _last_line(proc)
    assert last.startswith(PREFIX) and str(image) in last and "applying transform" not in last, last
    assert not (out / "models").exists()
    assert "Traceback" not in proc.stdout + proc.stderr  # a truncated file is fixable: the line says it all


def test_non_finite_training_image_names_the_file(demo_dataset, tmp_path):
    datalist = _copy_dataset(demo_dataset, tmp_path / "data")
    image = _training_image(datalist)
    source = nib.load(str(image))
    array = np.asarray(source.dataobj, dtype=np.float32)
    array[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(array, source.affine), str(image))
    out = tmp_path / "bundle"
    proc = _bundle("training", "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
                   "--output_dir", str(out))
    assert proc.returncode == 1
    last = _last_line(proc)
    assert last == PREFIX + f"{image}: 1 non-finite voxel(s) (NaN or Inf); they would make the whole segmentation " \
        "background. Replace them (e.g. with 0) before segmenting", last
    assert not (out / "models").exists()


def test_coarse_spacing_is_refused_before_resampling(demo_dataset, tmp_path):
    datalist = _copy_dataset(demo_dataset, tmp_path / "data")
    image = _training_image(datalist)
    source = nib.load(str(image))
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), np.diag([50.0, 50.0, 50.0, 1.0])), str(image))
    out = tmp_path / "bundle"
    proc = _bundle("training", "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
                   "--output_dir", str(out), timeout=120)
    assert proc.returncode == 1
    last = _last_line(proc)
    assert last.startswith(PREFIX + str(image)) and "spacing [50.0, 50.0, 50.0] mm" in last, last
    assert "over the limit of 268,435,456 voxels (max_voxels)" in last
    assert not (out / "models").exists()


# ------------------------------------------------------------------------------------------- inference


def _model(out: Path) -> None:
    import torch

    from custom.networks import PaperVNet

    net = PaperVNet(spatial_dims=3, in_channels=1, out_channels=2, base_filters=4, dropout=0.5, normalization="batch")
    (out / "models").mkdir(parents=True)
    torch.save(net.state_dict(), out / "models" / "model.pt")


def test_inference_exits_non_zero_when_a_file_fails(demo_dataset, tmp_path):
    datalist = _copy_dataset(demo_dataset, tmp_path / "data")
    images = datalist.parent / "imagesTs"  # the configs segment <dataset_dir>/imagesTs
    shutil.rmtree(images)
    images.mkdir()
    good = _training_image(datalist)
    shutil.copy(good, images / "a_good.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(images / "b_2d.nii.gz"))
    out = tmp_path / "bundle"
    _model(out)
    proc = _bundle("inference", "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
                   "--output_dir", str(out))
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = _last_line(proc)
    report = out / "predictions" / "inference_report.csv"
    assert last.startswith(PREFIX + f"1 of 2 images failed (report: {report})"), last
    assert "b_2d.nii.gz: ValueError: expected a 3D image" in last
    summary = f"segmented: 1 ok, 1 failed, 0 skipped (earlier outputs); report: {report}"
    assert summary in proc.stdout + proc.stderr  # logged (stdout) or printed (stderr) once
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["a_good_seg.nii.gz", "inference_report.csv"]


@pytest.mark.parametrize("run_id", ["evaluating", "inference"])
def test_missing_model_names_the_file(run_id, demo_dataset, tmp_path):
    out = tmp_path / "bundle"
    proc = _bundle(run_id, "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset),
                   "--output_dir", str(out))
    assert proc.returncode == 1
    last = _last_line(proc)
    assert last.startswith(PREFIX + "FileNotFoundError") and str(out / "models" / "model.pt") in last, last
    assert not (out / "predictions").exists() and not (out / "eval" / "metrics_summary.json").exists()
    assert len(proc.stderr.splitlines()) < 20


# ------------------------------------------------------------------------------------------- run faults


def test_logged_user_error_has_no_traceback(caplog):
    import logging

    install_excepthook()
    logger = logging.getLogger("ignite.engine.engine.Probe")
    with caplog.at_level(logging.ERROR):
        for exc in (DataError("/x.pt", "cannot write the checkpoint"), ZeroDivisionError("bug")):
            try:
                raise exc
            except Exception as error:
                logger.exception(f"Exception: {error}")
    user, bug = caplog.records[-2:]
    assert user.exc_info is None and bug.exc_info is not None  # a bug keeps its traceback


def test_full_disk_during_training_leaves_no_partial_file(demo_dataset, small_tmpfs):
    small_disk = small_tmpfs("900k")  # room for the first checkpoint's start, not for the run
    out = small_disk / "run"
    proc = _bundle("training", "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset),
                   "--output_dir", str(out), config="['configs/supervised_la.json','configs/quick.json']")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = _last_line(proc)
    assert last.startswith(PREFIX + str(out / "checkpoints")) and "cannot write the checkpoint: no space left on " \
        "the device (" in last, last
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(small_disk.iterdir()) == []  # no partial checkpoint, and the run folder of the failed run removed


def test_mistyped_run_id_names_the_valid_ones(tmp_path):
    proc = _bundle("trainnig", "--output_dir", str(tmp_path / "bundle"))
    assert proc.returncode == 1
    last = _last_line(proc)
    expected = "run trainnig: no such run id in the config; did you mean training? (run ids: "
    assert last.startswith(PREFIX + expected), last
    assert "evaluating" in last and "inference" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("run_id", ["training", "evaluating"])
def test_bad_label_is_refused_before_the_run(run_id, demo_dataset, tmp_path):
    datalist = _copy_dataset(demo_dataset, tmp_path / "data")
    split = "training" if run_id == "training" else "test"
    item = json.loads(datalist.read_text())[split][-1]
    label = datalist.parent / item["label"]
    source = nib.load(str(label))
    array = np.asarray(source.dataobj).astype(np.uint8)
    array[array > 0] = 255
    nib.save(nib.Nifti1Image(array, source.affine), str(label))
    out = tmp_path / "bundle"
    if run_id == "evaluating":
        _model(out)
    proc = _bundle(run_id, "--dataset_dir", str(datalist.parent), "--datalist", str(datalist),
                   "--output_dir", str(out), config="['configs/supervised_la.json','configs/quick.json']")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert _last_line(proc) == PREFIX + f"{label}: label values [255] are outside the task's classes 0..1 " \
        "(num_classes 2 in the datalist)"
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "eval").exists()


def test_out_of_memory_names_no_file_and_the_options_to_change(tmp_path):
    label = tmp_path / "label.nii.gz"
    label.write_bytes(b"x")

    def cache(filename):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 68719476736 bytes")

    try:
        cache(str(label))
    except RuntimeError as exc:
        message = describe(exc)
    assert message.startswith("out of memory (RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator")
    assert message.endswith("reduce --patch_size, --batch_size (or --batch_hq/--batch_lq) or --num_samples, or use a "
                            "machine with more memory")
    assert str(label) not in message


def _shown_warnings(emit) -> list[str]:
    """The messages of the warnings ``emit()`` raises that the filters installed by quiet_unactionable_warnings let
    through (every warning is shown otherwise, pytest's own filters included)."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_unactionable_warnings()
        emit()
    return [str(w.message) for w in shown]


def test_orientationd_labels_future_warning_is_silenced():
    from monai.transforms import Orientationd

    with warnings.catch_warnings(record=True) as unfiltered:  # MONAI still warns, so the filter is what silences it
        warnings.simplefilter("always")
        Orientationd(keys="image", axcodes="RAS")
    assert any("Orientationd.__init__:labels" in str(w.message) and w.category is FutureWarning for w in unfiltered)
    assert _shown_warnings(lambda: Orientationd(keys="image", axcodes="RAS")) == []


def test_other_warnings_are_still_shown():
    orientation = ("monai.transforms.spatial.dictionary Orientationd.__init__:labels: Current default value of "
                   "argument `labels=...`")

    def emit():
        warnings.warn("monai.transforms.spatial.dictionary Spacingd.__init__:x: Current default value", FutureWarning)
        warnings.warn("some other future change", FutureWarning)
        warnings.warn(orientation, UserWarning)  # same text, another category
        warnings.warn(orientation, FutureWarning)  # the one silenced

    assert _shown_warnings(emit) == [
        "monai.transforms.spatial.dictionary Spacingd.__init__:x: Current default value",
        "some other future change",
        orientation,
    ]
