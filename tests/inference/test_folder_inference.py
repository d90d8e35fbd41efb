from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import AsDiscreted, Compose

from custom.inference.folder_inference import (
    REPORT_COLUMNS,
    BatchInferenceError,
    InputError,
    SetAsideStrayKeysd,
    _label_dtype,
    default_inference_transforms,
    infer_folder,
    list_nifti_files,
)

SHAPE = (14, 18, 10)


def _cube() -> np.ndarray:
    # off-centre box, so that a flipped or permuted output would score a low Dice
    image = np.zeros(SHAPE, dtype=np.float32)
    image[2:8, 4:12, 3:8] = 1.0
    return image


def _threshold_net() -> torch.nn.Module:
    # logits (0, x - 0.5): class 1 exactly where the (unnormalised) intensity is above 0.5
    net = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.0, -0.5]))
    return net


def _affine(linear: np.ndarray, origin=(5.0, -3.0, 7.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


_ROT20 = np.array(
    [[np.cos(0.35), -np.sin(0.35), 0.0], [np.sin(0.35), np.cos(0.35), 0.0], [0.0, 0.0, 1.0]]
)
AFFINES = {
    # LPS, anisotropic
    "lps": _affine(np.diag([-0.8, -1.2, 2.0])),
    # PLI: array axes are (posterior, left, inferior), permuted and flipped
    "pli": _affine(np.array([[0.0, -1.1, 0.0], [-0.9, 0.0, 0.0], [0.0, 0.0, -1.7]])),
    # oblique: rotated 20 degrees about z
    "oblique": _affine(_ROT20 @ np.diag([0.9, 1.1, 1.7])),
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.astype(bool).sum() + b.astype(bool).sum()))


def _read_report(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_output_on_input_grid(tmp_path, name):
    affine = AFFINES[name]
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(_cube(), affine), str(source))
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)

    rows = infer_folder(
        _threshold_net(), tmp_path / "in", tmp_path / "out", pre, SlidingWindowInferer((8, 8, 8)), post
    )

    assert [r["status"] for r in rows] == ["ok"]
    out = nib.load(str(tmp_path / "out" / f"{name}_seg.nii.gz"))
    original = nib.load(str(source))
    assert out.shape == SHAPE
    assert np.array_equal(out.affine, original.affine)
    assert out.header.get_sform(coded=True)[1] == original.header.get_sform(coded=True)[1]
    assert out.get_data_dtype() == np.uint8
    seg = np.asarray(out.dataobj)
    assert set(np.unique(seg)) == {0, 1}
    # resampled to 1 mm RAS and back: the box comes back where it was (a flip would give ~0.33)
    assert _dice(seg, _cube()) > 0.95
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left


def test_bad_files_are_reported_and_skipped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    affine = AFFINES["lps"]
    nib.save(nib.Nifti1Image(_cube(), affine), str(folder / "a_good.nii.gz"))
    (folder / "b_corrupt.nii.gz").write_bytes(b"not a nifti file")
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), affine), str(folder / "c_4d.nii"))
    nib.save(nib.Nifti1Image(_cube()[..., None], affine), str(folder / "d_single_frame.nii.gz"))
    (folder / "notes.txt").write_text("ignored")
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0))

    rows = infer_folder(_threshold_net(), folder, tmp_path / "out", pre, SimpleInferer(), post, suffix="_label")

    status = {r["case"]: (r["status"], r["message"]) for r in rows}
    assert list(status) == ["a_good", "b_corrupt", "c_4d", "d_single_frame"]
    assert status["a_good"] == ("ok", "")
    assert status["b_corrupt"][0] == "error" and "cannot read NIfTI" in status["b_corrupt"][1]
    assert status["c_4d"][0] == "error" and "expected a 3D image" in status["c_4d"][1]
    # a 4D file with one frame is a 3D image; the output is 3D on the same grid
    assert status["d_single_frame"] == ("ok", "")
    assert nib.load(str(tmp_path / "out" / "d_single_frame_label.nii.gz")).shape == SHAPE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_good_label.nii.gz",
        "d_single_frame_label.nii.gz",
        "inference_report.csv",
    ]

    report = _read_report(tmp_path / "out" / "inference_report.csv")
    assert tuple(report[0]) == REPORT_COLUMNS
    assert [r["status"] for r in report] == ["ok", "error", "error", "ok"]
    assert report[0]["output"].endswith("a_good_label.nii.gz") and report[1]["output"] == ""
    assert all(float(r["seconds"]) >= 0 for r in report)


def test_missing_file_in_list_and_wrong_shape_without_invert(tmp_path):
    source = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(_cube(), AFFINES["lps"]), str(source))
    pre, _ = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)
    no_invert = Compose([AsDiscreted(keys="pred", argmax=True)])

    rows = infer_folder(
        _threshold_net(), [tmp_path / "missing.nii.gz", source], tmp_path / "out", pre, SimpleInferer(), no_invert,
        report_name=None,
    )

    assert rows[0]["status"] == "error" and "file not found" in rows[0]["message"]
    assert rows[1]["status"] == "error" and "differs from the input shape" in rows[1]["message"]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_multichannel_postprocessing_is_an_error(tmp_path):
    source = tmp_path / "y.nii"
    nib.save(nib.Nifti1Image(_cube(), np.eye(4)), str(source))
    pre, _ = default_inference_transforms(pixdim=None, normalize=False)
    rows = infer_folder(_threshold_net(), source, tmp_path / "out", pre, SimpleInferer(), Compose([]))
    assert rows[0]["status"] == "error" and "2 channels" in rows[0]["message"]


def test_rerun_into_input_folder_skips_outputs_and_restores_mode(tmp_path):
    nib.save(nib.Nifti1Image(_cube(), np.eye(4)), str(tmp_path / "z.nii.gz"))
    pre, post = default_inference_transforms(pixdim=None, normalize=False)
    net = _threshold_net().train()
    for _ in range(2):
        rows = infer_folder(net, tmp_path, tmp_path, pre, SimpleInferer(), post)
        assert [r["case"] for r in rows] == ["z"]
    assert net.training
    seg = np.asarray(nib.load(str(tmp_path / "z_seg.nii.gz")).dataobj)
    assert np.array_equal(seg, _cube().astype(np.uint8))  # native grid: exact


def test_no_nifti_raises_naming_the_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    pre, post = default_inference_transforms(pixdim=None)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        infer_folder(_threshold_net(), tmp_path, tmp_path / "out", pre, SimpleInferer(), post)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_nifti_files(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        list_nifti_files([])


def test_image_path_key_survives_spacing(tmp_path):
    # MONAI Label adds the string key "image_path"; MONAI 1.6.1 Spacingd calls .update() on every
    # "image_*" entry, so the preprocessing must keep it away from Spacingd
    source = tmp_path / "w.nii.gz"
    nib.save(nib.Nifti1Image(_cube(), np.diag([2.0, 1.0, 1.0, 1.0])), str(source))
    pre, _ = default_inference_transforms(pixdim=(1.0, 1.0, 1.0))

    data = pre({"image": str(source), "image_path": str(source)})

    assert tuple(data["image"].shape) == (1, 27, 18, 10)  # resampled along the 2 mm axis
    assert data["set_aside"] == {"image_path": str(source)}
    assert "image_path" not in data


def test_set_aside_stray_keys():
    meta = {"affine": np.eye(4)}
    moved = SetAsideStrayKeysd("image")({"image": 1, "image_meta_dict": meta, "image_path": "p", "imagery": "q"})
    assert moved == {"image": 1, "image_meta_dict": meta, "imagery": "q", "set_aside": {"image_path": "p"}}
    untouched = {"image": 1, "label_path": "l"}
    assert SetAsideStrayKeysd("image")(untouched) == untouched
    with pytest.raises(ValueError, match="stash_key"):
        SetAsideStrayKeysd("image", stash_key="image_extra")
    with pytest.raises(ValueError, match="keys"):
        SetAsideStrayKeysd([])


def test_label_dtype_and_pixdim_validation():
    assert _label_dtype(np.array([0, 3])) == np.uint8
    assert _label_dtype(np.array([0, 300])) == np.int16
    with pytest.raises(ValueError, match="int16"):
        _label_dtype(np.array([0, 70000]))
    with pytest.raises(ValueError, match="pixdim"):
        default_inference_transforms(pixdim=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="pixdim"):
        default_inference_transforms(pixdim=(1.0, 1.0))


@pytest.mark.parametrize("shipped", ["custom.inference.folder_inference", "custom.inference.input_checks",
                                     "custom.io", "custom.errors"])
def test_shipped_modules_import_only_what_bundles_ship(shipped):
    # these files are copied verbatim into bundles' scripts/: third-party packages that a bundle needs anyway, and
    # project modules only when they are shipped too (as `custom.X` in the source tree, `.X` in the bundle)
    import ast
    import importlib
    import sys
    from pathlib import Path

    from custom.bundle.layout import SHIPPED_ALWAYS

    module = importlib.import_module(shipped)
    shipped_names = {Path(name).stem for name in SHIPPED_ALWAYS.values()}
    shipped_paths = {"custom." + src[: -len(".py")].replace("/", ".") for src in SHIPPED_ALWAYS}
    assert shipped in shipped_paths
    allowed = {"torch", "numpy", "nibabel", "monai", "tqdm", "__future__"} | set(sys.stdlib_module_names)
    tree = ast.parse(Path(module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module in shipped_names, f"relative import of a module bundles do not ship: {node.module}"
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            if node.module.startswith("custom"):
                assert node.module in shipped_paths, f"{node.module} is not shipped with bundles"
            else:
                imported.add(node.module.split(".")[0])
    assert imported <= allowed, imported - allowed


# ---------------------------------------------------------------------------------------------
# issue 19: non-finite voxels, oversized grids, exit status, summary line, permissions


def _folder_with(tmp_path, images: dict) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (array, affine) in images.items():
        nib.save(nib.Nifti1Image(array, affine), str(folder / f"{name}.nii.gz"))
    return folder


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_voxels_are_a_per_file_error_never_all_background(tmp_path, bad_value, capsys, caplog):
    bad = _cube()
    bad[0, 0, 0] = bad_value
    folder = _folder_with(tmp_path, {"a_good": (_cube(), np.eye(4)), "b_bad": (bad, np.eye(4))})
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)
    out = tmp_path / "out"
    with pytest.raises(BatchInferenceError) as info:
        infer_folder(_threshold_net(), folder, out, pre, SimpleInferer(), post, raise_on_error=True)
    message = str(info.value)
    assert "1 of 2 images failed" in message and "b_bad.nii.gz" in message and "non-finite voxel" in message
    assert (out / "a_good_seg.nii.gz").is_file()  # the good one is still written
    assert not (out / "b_bad_seg.nii.gz").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a_good_seg.nii.gz", "inference_report.csv"]  # no temp files
    report = {r["case"]: r for r in _read_report(out / "inference_report.csv")}
    assert report["b_bad"]["status"] == "error" and "InputError" in report["b_bad"]["message"]
    assert "1 non-finite voxel(s)" in report["b_bad"]["message"]
    # the summary goes to the log where logging shows INFO (a bundle run), else to stderr: once, either way
    err = capsys.readouterr().err.strip().splitlines()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("segmented:")]
    shown = logged + [line for line in err if line.startswith("segmented:")]
    assert shown == [f"segmented: 1 ok, 1 failed, 0 skipped (earlier outputs); report: {out / 'inference_report.csv'}"]


def test_the_summary_line_appears_once_where_logging_shows_it(tmp_path, capsys, caplog):
    # a bundle run configures logging at INFO: the summary goes through the logger only, not a second time to stderr
    folder = _folder_with(tmp_path, {"a_good": (_cube(), np.eye(4))})
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)
    with caplog.at_level("INFO", logger="custom.inference.folder_inference"):
        infer_folder(_threshold_net(), folder, tmp_path / "out", pre, SimpleInferer(), post)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("segmented:")]
    report = tmp_path / "out" / "inference_report.csv"
    assert logged == [f"segmented: 1 ok, 0 failed, 0 skipped (earlier outputs); report: {report}"]
    assert "segmented:" not in capsys.readouterr().err


def test_grid_too_large_once_resampled_names_file_spacing_and_size(tmp_path):
    affine = np.diag([50.0, 50.0, 50.0, 1.0])
    folder = _folder_with(tmp_path, {"coarse": (_cube(), affine)})
    pre, post = default_inference_transforms(pixdim=(0.625, 0.625, 0.625), normalize=False)
    rows = infer_folder(_threshold_net(), folder, tmp_path / "out", pre, SimpleInferer(), post)
    assert rows[0]["status"] == "error"
    message = rows[0]["message"]
    assert message.startswith("InputError: ") and str(folder / "coarse.nii.gz") in message
    assert "spacing [50.0, 50.0, 50.0] mm" in message and "[1120, 1440, 800] grid" in message
    assert "max_voxels" in message
    # the limit is configurable: without it the same file would be resampled (here a small limit refuses a small file)
    pre_small, _ = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False, max_voxels=100)
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps it
        pre_small({"image": str(folder / "coarse.nii.gz")})
    assert isinstance(info.value.__cause__, InputError) and "over the limit of 100 voxels" in str(info.value.__cause__)


def test_every_file_failing_raises_after_the_report_and_outputs_are_0644(tmp_path):
    folder = _folder_with(tmp_path, {"a": (_cube(), np.eye(4))})
    (folder / "b.nii.gz").write_bytes(b"not a nifti")
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        with pytest.raises(BatchInferenceError, match=r"1 of 2 images failed .*b\.nii\.gz: ValueError: cannot read"):
            infer_folder(_threshold_net(), folder, out, pre, SimpleInferer(), post, raise_on_error=True)
    finally:
        os.umask(old)
    for name in ("a_seg.nii.gz", "inference_report.csv"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_monai_wrapper_is_unwrapped_in_the_report(tmp_path):
    folder = _folder_with(tmp_path, {"a": (_cube(), np.eye(4))})
    raw = (folder / "a.nii.gz").read_bytes()
    (folder / "a.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated gzip: header readable, data not
    pre, post = default_inference_transforms(pixdim=(1.0, 1.0, 1.0), normalize=False)
    rows = infer_folder(_threshold_net(), folder, tmp_path / "out", pre, SimpleInferer(), post)
    assert rows[0]["status"] == "error"
    assert not rows[0]["message"].startswith("RuntimeError: applying transform"), rows[0]["message"]


def test_load_bundle_weights_says_what_a_bad_weights_file_holds(tmp_path):
    from custom.inference.folder_inference import load_bundle_weights
    from custom.io import DataError
    from custom.networks import PaperVNet

    network = PaperVNet(base_filters=2, dropout=0.0)
    good = tmp_path / "model.pt"
    torch.save(network.state_dict(), good)
    fresh = PaperVNet(base_filters=2, dropout=0.0)
    assert load_bundle_weights(fresh, good) is fresh
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), network.state_dict().values()))

    text = tmp_path / "text.pt"
    text.write_text("not weights")
    wider = tmp_path / "wider.pt"
    torch.save(PaperVNet(base_filters=4, dropout=0.0).state_dict(), wider)
    pickled = tmp_path / "pickled.pt"
    torch.save({"network": network, "epoch": 3}, pickled)
    cases = {
        tmp_path / "missing.pt": "no such file",
        text: "not a readable PyTorch file: it holds text",
        wider: "does not match the network PaperVNet: shape mismatch (file vs network)",
        pickled: "holds Python objects besides tensors",
    }
    for path, problem in cases.items():
        with pytest.raises(DataError) as raised:
            load_bundle_weights(PaperVNet(base_filters=2, dropout=0.0), path)
        assert str(raised.value).startswith(f"{path}: {problem}"), str(raised.value)
        assert "weights_only=False" not in str(raised.value)
