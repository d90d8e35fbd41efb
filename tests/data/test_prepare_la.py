from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from custom.data import load_datalist, read_datalist_meta
from custom.data.prepare_cli import main_la, parse_noise_params
from custom.data.splits import assign_splits
from custom.data.staging import resolve_output, staged_directory
from custom.io import DataError, load_nifti
from custom.transforms.resampling import downsample_affine, downsample_image, downsample_label

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "prepare_la.py"
SHARED_LA = REPO.parent / "shared" / "data" / "la2018_h5"
TRAIN_IDS = ["CASE_A", "CASE_B", "CASE_C", "CASE_D"]
TEST_IDS = ["TEST_1"]
SMALL_NOISE = ("--param", "r_min=3", "--param", "r_max=7")


def _write_case(path: Path, seed: int, shape=(24, 22, 16), keys=("image", "label"), label_value: int = 1) -> None:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    lo = rng.integers(4, 7, 3)
    label[lo[0] : lo[0] + 12, lo[1] : lo[1] + 11, lo[2] : lo[2] + 8] = label_value
    image = (rng.standard_normal(shape) + 2.0 * label).astype(np.float32)
    with h5py.File(path, "w") as f:
        if "image" in keys:
            f["image"] = image
        if "label" in keys:
            f["label"] = label


@pytest.fixture()
def h5_dir(tmp_path) -> Path:
    folder = tmp_path / "h5"
    folder.mkdir()
    for index, case_id in enumerate(TRAIN_IDS + TEST_IDS):
        _write_case(folder / f"{case_id}.h5", seed=index)
    (folder / "train.list").write_text("\n".join(TRAIN_IDS) + "\n")
    (folder / "test.list").write_text("\n".join(TEST_IDS) + "\n")
    return folder


def _args(h5: Path, out: Path, *extra: str, noise: tuple[str, ...] = SMALL_NOISE) -> list[str]:
    return ["--h5-dir", str(h5), "--out", str(out), "--val-count", "1", "--hq-count", "1", *noise, *extra]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _report(folder: Path) -> dict[str, dict]:
    with open(folder / "noise_report.csv", newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


# ----- CLI


def test_cli_rerun_is_byte_identical_and_prints_progress(h5_dir, tmp_path):
    first, second = tmp_path / "out1", tmp_path / "out2"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *_args(h5_dir, first, "--seed", "0")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert sum(line.startswith("[") and "/5]" in line for line in lines) == 5  # one progress line per case
    assert any("mean noisy Dice on the 2 LQ cases" in line for line in lines)
    assert main_la(_args(h5_dir, second, "--seed", "0")) == 0  # same code in-process: same bytes
    files = _files(first)
    assert set(files) >= {"datalist.json", "noise_report.csv", "imagesTs/TEST_1.nii.gz", "labelsTs/TEST_1.nii.gz"}
    assert files == _files(second)


def test_layout_splits_and_datalist(h5_dir, tmp_path):
    out = tmp_path / "out"
    assert main_la(_args(h5_dir, out, "--seed", "3")) == 0
    training = load_datalist(out / "datalist.json")
    assert [i["case_id"] for i in training] == [i for i in TRAIN_IDS if i in {t["case_id"] for t in training}]
    assert sorted(i["quality"] for i in training) == ["hq", "lq", "lq"]
    validation = load_datalist(out / "datalist.json", "validation")
    test = load_datalist(out / "datalist.json", "test")
    assert len(validation) == 1 and [i["case_id"] for i in test] == TEST_IDS
    assert validation[0]["label"] == validation[0]["label_clean"]
    assert test[0]["image"].endswith("imagesTs/TEST_1.nii.gz")
    for item in training:
        noisy_file = out / "labelsTr_noisy" / f"{item['case_id']}.nii.gz"
        assert noisy_file.exists() == (item["quality"] == "lq")
        assert item["label"] == (str(noisy_file) if item["quality"] == "lq" else item["label_clean"])
    raw = json.loads((out / "datalist.json").read_text())
    assert raw["training"][0]["image"].startswith("imagesTr/")  # stored relative
    keys = {key for split in ("training", "validation", "test") for item in raw[split] for key in item}
    assert not any(key.startswith("image_") for key in keys)
    meta = read_datalist_meta(out / "datalist.json")
    assert meta["num_classes"] == 2 and meta["labels"] == {"0": "background", "1": "left_atrium"}
    assert meta["spacing"] == [0.625, 0.625, 0.625] and meta["seed"] == 3
    assert meta["noise"] == {"name": "mtcl", "params": {"r_min": 3, "r_max": 7}, "alpha": None}
    report = _report(out)
    assert set(report) == {i["case_id"] for i in training}
    lq = [i for i in training if i["quality"] == "lq"]
    assert meta["mean_noisy_dice_lq"] == pytest.approx(np.mean([i["noisy_dice"] for i in lq]), abs=1e-6)
    for item in lq:
        params = json.loads(report[item["case_id"]]["params"])
        assert report[item["case_id"]]["noise"] == "mtcl" and 3 <= params["r"] <= 7
        assert float(report[item["case_id"]]["noisy_dice"]) == pytest.approx(item["noisy_dice"], abs=1e-6)
    # the image is the h5 image, voxel for voxel, with the LA spacing
    image, affine, _ = load_nifti(out / "imagesTr" / f"{training[0]['case_id']}.nii.gz")
    with h5py.File(h5_dir / f"{training[0]['case_id']}.h5") as f:
        np.testing.assert_array_equal(image, f["image"][()])
    np.testing.assert_allclose(affine, np.diag([0.625, 0.625, 0.625, 1.0]))


def test_another_seed_gives_other_noisy_labels(h5_dir, tmp_path):
    assert main_la(_args(h5_dir, tmp_path / "s0", "--seed", "0", "--hq-count", "0")) == 0
    assert main_la(_args(h5_dir, tmp_path / "s1", "--seed", "1", "--hq-count", "0")) == 0
    noisy0, noisy1 = _files(tmp_path / "s0" / "labelsTr_noisy"), _files(tmp_path / "s1" / "labelsTr_noisy")
    common = set(noisy0) & set(noisy1)
    assert common and any(noisy0[name] != noisy1[name] for name in common)


def test_downsampled_output(h5_dir, tmp_path):
    out = tmp_path / "out"
    assert main_la(_args(h5_dir, out, "--downsample", "2")) == 0
    meta = read_datalist_meta(out / "datalist.json")
    assert meta["spacing"] == [1.25, 1.25, 1.25] and meta["downsample"] == 2
    item = load_datalist(out / "datalist.json", quality="lq")[0]
    image, affine, _ = load_nifti(item["image"])
    label, label_affine, _ = load_nifti(item["label"])
    assert image.shape == label.shape == (12, 11, 8)
    # 1.25 mm voxels whose centres sit at the centres of the native 2x2x2 blocks
    expected = np.diag([1.25, 1.25, 1.25, 1.0])
    expected[:3, 3] = 0.3125
    np.testing.assert_allclose(affine, expected)
    np.testing.assert_allclose(label_affine, expected)
    with h5py.File(h5_dir / f"{item['case_id']}.h5") as f:
        native = f["image"][()]
    np.testing.assert_allclose(image[0, 0, 0], native[:2, :2, :2].mean(), rtol=1e-5)


def test_atrium_band_task_gives_three_classes_split_by_distance(h5_dir, tmp_path):
    out = tmp_path / "out"
    assert main_la(_args(h5_dir, out, "--task", "atrium_band", "--band-mm", "1.25", "--seed", "0")) == 0
    meta = read_datalist_meta(out / "datalist.json")
    assert meta["num_classes"] == 3
    assert meta["labels"] == {"0": "background", "1": "la_core", "2": "la_boundary_band"}
    assert meta["task"] == "atrium_band" and meta["task_params"] == {"band_mm": 1.25}
    item = load_datalist(out / "datalist.json", "test")[0]
    label, _, _ = load_nifti(item["label"])
    with h5py.File(h5_dir / "TEST_1.h5") as f:
        released = f["label"][()]
    # the 12 x 11 x 8 box at 0.625 mm: the band is its outer two voxel layers (1.25 mm), the core the rest
    np.testing.assert_array_equal(label > 0, released > 0)
    box = np.argwhere(released > 0)
    lo, hi = box.min(axis=0), box.max(axis=0) + 1
    core = np.zeros_like(released, dtype=bool)
    core[lo[0] + 2 : hi[0] - 2, lo[1] + 2 : hi[1] - 2, lo[2] + 2 : hi[2] - 2] = True
    np.testing.assert_array_equal(label == 1, core)
    report = _report(out)
    assert {"dice_1_la_core", "dice_2_la_boundary_band"} <= set(next(iter(report.values())))


def test_alpha_corrupts_only_a_fraction_of_lq_cases(h5_dir, tmp_path):
    out = tmp_path / "out"
    noise = ("--noise", "symmetric", "--param", "rate=0.2", "--alpha", "0.5")
    assert main_la(_args(h5_dir, out, "--hq-count", "0", noise=noise)) == 0
    lq = load_datalist(out / "datalist.json", quality="lq")
    assert len(lq) == 3
    report = _report(out)
    assert sorted(report[i["case_id"]]["noise"] for i in lq) == ["none", "symmetric", "symmetric"]  # round(1.5) = 2
    for item in lq:
        assert "labelsTr_noisy" in item["label"]  # uncorrupted LQ cases keep a (clean) copy in labelsTr_noisy
        same = np.array_equal(load_nifti(item["label"])[0], load_nifti(item["label_clean"])[0])
        assert same == (report[item["case_id"]]["noise"] == "none")


# ----- errors


def _corrupt(folder: Path) -> None:
    (folder / "CASE_B.h5").write_bytes(b"not an hdf5 file")


def _missing_key(folder: Path) -> None:
    _write_case(folder / "CASE_C.h5", seed=9, keys=("image",))


def _shape_mismatch(folder: Path) -> None:
    with h5py.File(folder / "CASE_A.h5", "a") as f:
        del f["label"]
        f["label"] = np.zeros((24, 22, 15), dtype=np.uint8)


def _bad_label_value(folder: Path) -> None:
    _write_case(folder / "TEST_1.h5", seed=3, label_value=2)


def _missing_file(folder: Path) -> None:
    (folder / "CASE_D.h5").unlink()


def _no_train_list(folder: Path) -> None:
    (folder / "train.list").unlink()


def _empty_train_list(folder: Path) -> None:
    (folder / "train.list").write_text("\n")


@pytest.mark.parametrize(
    "damage, culprit, problem",
    [
        (_corrupt, "CASE_B.h5", "cannot read HDF5"),
        (_missing_key, "CASE_C.h5", "missing HDF5 key(s) ['label']"),
        (_shape_mismatch, "CASE_A.h5", "differs from 'image' shape"),
        (_bad_label_value, "TEST_1.h5", "outside the declared classes 0..1"),
        (_missing_file, "CASE_D.h5", "file not found (listed in train.list)"),
        (_no_train_list, "train.list", "ID list not found"),
        (_empty_train_list, "train.list", "ID list is empty"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(h5_dir, tmp_path, capsys, damage, culprit, problem):
    damage(h5_dir)
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "out"
    assert main_la(_args(h5_dir, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {h5_dir / culprit}: ") and problem in err
    assert not out.exists() and list((tmp_path / "results").iterdir()) == []  # no temporary folder left either


def test_bad_input_from_the_script_itself(h5_dir, tmp_path):
    _missing_key(h5_dir)
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), *_args(h5_dir, out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert str(h5_dir / "CASE_C.h5") in run.stderr and "missing HDF5 key" in run.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--noise", "gaussian"], "unknown noise 'gaussian'"),
        (["--param", "radius=3"], "does not take parameter(s) ['radius']"),
        (["--param", "3x=1"], "KEY=VALUE"),
        (["--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["--downsample", "0"], "downsample must be an integer >= 1"),
        (["--task", "atrium_band", "--band-mm", "0"], "--band-mm must be > 0"),
        (["--task", "wall"], "invalid choice: 'wall'"),
    ],
)
def test_bad_options_are_refused_before_any_work(h5_dir, tmp_path, capsys, extra, problem):
    _corrupt(h5_dir)  # would fail later: the option error must come first
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main_la(_args(h5_dir, out, *extra))
    assert info.value.code == 2
    assert problem in capsys.readouterr().err and not out.exists()


def test_too_few_cases_and_existing_output(h5_dir, tmp_path, capsys):
    assert main_la(_args(h5_dir, tmp_path / "a", "--val-count", "4")) == 2
    assert "cannot hold 0 test + 4 validation cases" in capsys.readouterr().err
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main_la(_args(h5_dir, out)) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main_la(_args(h5_dir, out, "--overwrite")) == 0
    assert (out / "datalist.json").is_file() and not (out / "keep.txt").exists()


# ----- units


def test_assign_splits_is_deterministic_and_order_free():
    ids = [f"c{i}" for i in range(10)]
    splits = assign_splits(ids, seed=0, val_count=2, test_count=1, hq_fraction=0.25)
    # 10 - 2 - 1 = 7 training cases; round_half_up(1.75) = 2 HQ
    assert [len(splits[k]) for k in ("test", "validation", "hq", "lq")] == [1, 2, 2, 5]
    assert sorted(sum(splits.values(), [])) == sorted(ids)
    assert assign_splits(ids[::-1], seed=0, val_count=2, test_count=1, hq_fraction=0.25) == {
        k: v[::-1] for k, v in splits.items()
    }
    assert assign_splits(ids, seed=1, val_count=2, test_count=1, hq_fraction=0.25) != splits
    # half up, not half to even: 2 * 0.25 ... 10 cases, 0 held out, 0.25 -> 2.5 -> 3
    assert len(assign_splits(ids, seed=0, val_count=0, hq_fraction=0.25)["hq"]) == 3
    assert len(assign_splits(ids, seed=0, val_count=0)["hq"]) == 3  # default fraction 0.25
    assert len(assign_splits(ids, seed=0, val_count=0, hq_count=7)["hq"]) == 7


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        (dict(val_count=5, test_count=5), "cannot hold"),
        (dict(hq_count=11), "exceeds"),
        (dict(hq_fraction=0.5, hq_count=1), "not both"),
        (dict(hq_fraction=-0.1), "hq_fraction"),
        (dict(val_count=-1), "val_count"),
    ],
)
def test_assign_splits_errors(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        assign_splits([f"c{i}" for i in range(10)], seed=0, **kwargs)
    with pytest.raises(ValueError, match="unique"):
        assign_splits(["a", "a"], seed=0, val_count=0)


def test_downsample_label_majority_with_ties_to_the_higher_class():
    # shape (4, 2, 2): two 2x2x2 blocks
    label = np.zeros((4, 2, 2), dtype=np.uint8)
    label[0:2].flat[:3] = 1  # block 0: 3 of 8 foreground -> background
    label[2:4].flat[:4] = 1  # block 1: 4 of 8 foreground (a tie) -> foreground
    np.testing.assert_array_equal(downsample_label(label, 2, 2), [[[0]], [[1]]])
    # three classes, block of 8: 3 x class 2, 3 x class 1, 2 x class 0 -> tie between 1 and 2 goes to 2
    block = np.array([2, 2, 2, 1, 1, 1, 0, 0], dtype=np.uint8).reshape(2, 2, 2)
    assert downsample_label(block, 2, 3).item() == 2
    # trailing voxels are cropped: (5, 3, 2) -> (2, 1, 1)
    assert downsample_label(np.ones((5, 3, 2), dtype=np.uint8), 2, 2).shape == (2, 1, 1)
    np.testing.assert_array_equal(downsample_label(label, 1, 2), label)


def test_downsample_image_block_mean():
    image = np.arange(16, dtype=np.float32).reshape(4, 2, 2)
    # block 0 holds 0..7 (mean 3.5), block 1 holds 8..15 (mean 11.5)
    np.testing.assert_allclose(downsample_image(image, 2), [[[3.5]], [[11.5]]])
    assert downsample_image(image, 1).dtype == np.float32
    with pytest.raises(ValueError, match="smaller than the downsampling factor"):
        downsample_image(image, 3)
    with pytest.raises(ValueError, match="3D"):
        downsample_image(np.zeros((4, 4)), 2)


def test_downsample_affine_keeps_world_positions():
    affine = np.array([[0, -2.0, 0, 10], [1.0, 0, 0, 20], [0, 0, 3.0, 30], [0, 0, 0, 1]])
    pooled = downsample_affine(affine, 2)
    # voxel (0, 0, 0) of the pooled grid is the centre of native voxels 0..1 on each axis, i.e. native (0.5, 0.5, 0.5)
    np.testing.assert_allclose(pooled @ [0, 0, 0, 1], affine @ [0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(pooled @ [1, 2, 3, 1], affine @ [2.5, 4.5, 6.5, 1])
    np.testing.assert_allclose(downsample_affine(affine, 1), affine)


def test_parse_noise_params():
    assert parse_noise_params(["beta=0.3", "ops=[1, 2]", "mode=fast", "flag=true", "x="]) == {
        "beta": 0.3, "ops": [1, 2], "mode": "fast", "flag": True, "x": "",
    }
    for bad in (["beta"], ["=1"], ["a-b=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_noise_params(bad)


def test_resolve_output(tmp_path):
    assert resolve_output(tmp_path / "out") == (tmp_path / "out", tmp_path / "out" / "datalist.json")
    assert resolve_output(tmp_path / "x" / "la.json") == (tmp_path / "x" / "la", tmp_path / "x" / "la.json")


def test_staged_directory_publishes_only_on_success(tmp_path):
    target = tmp_path / "final"
    with pytest.raises(RuntimeError):
        with staged_directory(target) as stage:
            (stage / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with staged_directory(target) as stage:
        (stage / "done.txt").write_text("x")
    assert [p.name for p in target.iterdir()] == ["done.txt"]
    with pytest.raises(DataError, match="not empty"):
        with staged_directory(target):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        with staged_directory(tmp_path / "file"):
            pass


def test_case_ids_must_be_file_names(tmp_path):
    from custom.data.prepare import prepare_dataset
    from custom.data.sources import CaseSource

    def load():
        raise AssertionError("must not be loaded")

    sources = [CaseSource(case_id, "origin", "origin", load) for case_id in ("ok", "sub/dir", "x")]
    with pytest.raises(DataError, match="'sub/dir' is not usable as a file name"):
        prepare_dataset(sources, [], tmp_path / "out", num_classes=2, labels={"0": "bg", "1": "fg"}, val_count=0)
    assert not (tmp_path / "out").exists()


# ----- real data


@pytest.mark.slow
def test_real_la_data_mtcl_noise_level(tmp_path):
    if not (SHARED_LA / "train.list").is_file():
        pytest.skip(f"LA HDF5 data not found at {SHARED_LA} (see shared/data/la2018_h5/README.md)")
    out = tmp_path / "la"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--h5-dir", str(SHARED_LA), "--out", str(out), "--noise", "mtcl",
         "--hq-fraction", "0.25", "--seed", "0", "--downsample", "2"],
        capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stderr
    meta = read_datalist_meta(out / "datalist.json")
    assert 0.55 <= meta["mean_noisy_dice_lq"] <= 0.8
    assert meta["spacing"] == [1.25, 1.25, 1.25]
    training = load_datalist(out / "datalist.json")
    assert len(training) == 22 and sum(i["quality"] == "hq" for i in training) == 6  # round_half_up(0.25 * 22)
    assert len(load_datalist(out / "datalist.json", "test")) == 6


# ----- case lists (--train-list / --test-list)


def _extra_list(folder: Path, ids: list[str]) -> None:
    for index, case_id in enumerate(ids):
        _write_case(folder / f"{case_id}.h5", seed=100 + index)
    (folder / "extra.list").write_text("\n".join(ids) + "\n")


def test_parse_list_spec_slices_like_python(h5_dir):
    from custom.data.sources import parse_list_spec, read_list_specs

    assert parse_list_spec("test.list", h5_dir) == (h5_dir / "test.list", slice(None, None))
    assert parse_list_spec("extra.list::2", h5_dir) == (h5_dir / "extra.list", slice(None, 2))
    assert parse_list_spec("extra.list:1:", h5_dir) == (h5_dir / "extra.list", slice(1, None))
    _extra_list(h5_dir, ["X1", "X2", "X3"])
    ids, origin = read_list_specs(["train.list", "extra.list:1:3"], h5_dir)
    assert ids == [*TRAIN_IDS, "X2", "X3"] and origin["X2"] == "extra.list:1:3" and origin["CASE_A"] == "train.list"
    with pytest.raises(DataError, match="must be integers"):
        parse_list_spec("extra.list:a:3", h5_dir)
    with pytest.raises(DataError, match="selects no ID"):
        read_list_specs(["extra.list:5:"], h5_dir)
    with pytest.raises(DataError, match=r"ID X1 is listed twice \(extra.list::1 and extra.list\)"):
        read_list_specs(["extra.list::1", "extra.list"], h5_dir)


def test_train_and_test_lists_choose_the_cases(h5_dir, tmp_path):
    _extra_list(h5_dir, ["X1", "X2", "X3"])
    out = tmp_path / "out"
    argv = _args(h5_dir, out, "--train-list", "train.list", "extra.list::1", "--test-list", "test.list",
                 "extra.list:1:")
    assert main_la(argv) == 0
    test_ids = sorted(Path(item["label"]).name.split(".")[0] for item in load_datalist(out / "datalist.json", "test"))
    assert test_ids == ["TEST_1", "X2", "X3"]
    pool = load_datalist(out / "datalist.json") + load_datalist(out / "datalist.json", "validation")
    assert len(pool) == 5  # the 4 of train.list and X1
    meta = read_datalist_meta(out / "datalist.json")
    assert meta["train_lists"] == ["train.list", "extra.list::1"]
    assert meta["test_lists"] == ["test.list", "extra.list:1:"]


def test_val_list_adds_validation_cases_and_leaves_the_training_set_alone(h5_dir, tmp_path):
    _extra_list(h5_dir, ["X1", "X2", "X3"])
    plain, extended = tmp_path / "plain", tmp_path / "extended"
    assert main_la(_args(h5_dir, plain, "--seed", "3")) == 0
    assert main_la(_args(h5_dir, extended, "--seed", "3", "--val-list", "extra.list:1:")) == 0

    def ids(folder, split):
        return [Path(item["image"]).name.split(".")[0] for item in load_datalist(folder / "datalist.json", split)]

    assert ids(extended, "validation") == [*ids(plain, "validation"), "X2", "X3"]  # pool's first, then the list's
    assert ids(extended, "training") == ids(plain, "training") and ids(extended, "test") == ids(plain, "test")
    pairs = zip(load_datalist(extended / "datalist.json"), load_datalist(plain / "datalist.json"))
    for item, twin in pairs:  # same HQ/LQ roles and the same noisy labels
        assert item["quality"] == twin["quality"]
        np.testing.assert_array_equal(load_nifti(item["label"])[0], load_nifti(twin["label"])[0])
    assert read_datalist_meta(extended / "datalist.json")["val_lists"] == ["extra.list:1:"]
    assert "val_lists" not in read_datalist_meta(plain / "datalist.json")


@pytest.mark.parametrize(
    "lists, culprit, problem",
    [
        (["--test-list", "extra.list"], "X9.h5", "file not found (listed in extra.list)"),
        (["--test-list", "train.list"], "train.list", "IDs in both the training pool and the test cases"),
        (["--val-list", "extra.list"], "X9.h5", "file not found (listed in extra.list)"),
        (["--val-list", "test.list"], "test.list", "IDs in both the test cases and the validation lists"),
        (["--train-list", "nowhere.list"], "nowhere.list", "ID list not found"),
    ],
)
def test_bad_lists_exit_2_and_name_the_file(h5_dir, tmp_path, capsys, lists, culprit, problem):
    (h5_dir / "extra.list").write_text("X9\n")  # an ID without its .h5 file
    out = tmp_path / "out"
    assert main_la(_args(h5_dir, out, *lists)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {h5_dir / culprit}: ") and problem in err
    assert not out.exists()


# ----- noise sizes in mm, per-class report (issue 21)


def test_report_states_per_class_dice_and_the_lost_class_check(h5_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main_la(_args(h5_dir, out, "--seed", "0", noise=("--noise", "mtcl"))) == 0  # mm defaults
    stdout = capsys.readouterr().out
    report = _report(out)
    lq = [row for row in report.values() if row["quality"] == "lq"]
    for row in lq:
        params = json.loads(row["params"])
        assert params["units"] == "mm" and params["r_range_voxels"] == [3, 15]  # 1.875..9.375 mm at 0.625 mm
        assert json.loads(row["size_voxels"]) == [params["r"]] * 3
        assert json.loads(row["size_mm"]) == [0.625 * params["r"]] * 3
        assert row["dice_1_left_atrium"] == row["noisy_dice"]  # one foreground class
    assert "per class (LQ noisy-vs-clean Dice, LQ cases that lost the class): left_atrium " in stdout
    assert "lost-class check (--on-empty redraw)" in stdout
    assert read_datalist_meta(out / "datalist.json")["noise_check"]["on_empty"] == "redraw"


# sha256 of the stored noisy labels (uint8 array bytes, C order) that prepare_la wrote with the code of commit
# 34e8289 (MTCL sizes in voxels, 3..15), before the sizes became mm: --seed 0 --val-count 0 --hq-count 0 on the
# first 3 LA cases, at --downsample 1 and 3
LA_MTCL_REFERENCE = {
    1: {
        "06SR5RBREL16DQ6M8LWS": "6a2f55f64dcda00b38c7024098f962e2a406dcec296322c25bd4779b4ceb4903",
        "0RZDK210BSMWAA6467LU": "aa5f58f88aea1e48b612144af8e7aa9245aff760bf0a79c49aa2f9216649c0a1",
        "1D7CUD1955YZPGK8XHJX": "cde02949c3ff57f71f298645e5a40fd710fb4714fddc49c39f5724a57d3e1c8c",
    },
    3: {
        "06SR5RBREL16DQ6M8LWS": "24fd283c8b9a98063568962a40347d8e85db10a81b031738bb81b634dedded66",
        "0RZDK210BSMWAA6467LU": "66c3a289db3af60d0e4c14c2e423b3664fb12efeca471c7de50deecbf1aa329c",
        "1D7CUD1955YZPGK8XHJX": "82f6947eb8ae7257a3dbadfaa2c17418f4c0a1e1ae752700054e769e36ced540",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("downsample", [1, 3])
def test_real_la_default_mtcl_is_byte_identical_to_the_voxel_code(tmp_path, downsample):
    import hashlib

    ids = sorted(LA_MTCL_REFERENCE[downsample])
    if not all((SHARED_LA / f"{case_id}.h5").is_file() for case_id in ids):
        pytest.skip(f"LA HDF5 data not found at {SHARED_LA} (need {ids})")
    h5 = tmp_path / "h5"
    h5.mkdir()
    for case_id in ids:
        (h5 / f"{case_id}.h5").symlink_to(SHARED_LA / f"{case_id}.h5")
    (h5 / "train.list").write_text("\n".join(ids) + "\n")
    out = tmp_path / "out"
    argv = ["--h5-dir", str(h5), "--out", str(out), "--val-count", "0", "--hq-count", "0", "--seed", "0",
            "--downsample", str(downsample)]
    assert main_la(argv) == 0  # default noise: mtcl, sizes 1.875..9.375 mm, --on-empty redraw
    for case_id, digest in LA_MTCL_REFERENCE[downsample].items():
        noisy = load_nifti(out / "labelsTr_noisy" / f"{case_id}.nii.gz")[0].astype(np.uint8)
        assert hashlib.sha256(np.ascontiguousarray(noisy).tobytes()).hexdigest() == digest, case_id
    assert all(row["attempts"] == "1" for row in _report(out).values())  # first draws, no redraw
