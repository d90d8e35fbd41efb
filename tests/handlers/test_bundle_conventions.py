"""A bundle from a real (tiny) ALC training against MONAI's and model-zoo's bundle conventions, and a copied bundle
that must infer with its own weights.

- MONAI: ``ConfigWorkflow(workflow_type="infer").check_properties()`` finds no missing property, ``bundle_root``
  resolves to the bundle without ``--bundle_root``, ``verify_net_in_out`` passes, the TorchScript export loads.
- model-zoo (``ci/verify_bundle.py``'s file checks): ``configs/metadata.json``, ``configs/inference.json``,
  ``models/model.pt``, ``LICENSE`` and ``docs/README.md`` with the model-zoo sections; the metadata passes MONAI's
  schema.
- The evaluator path (``dataset`` -> ``evaluator``) writes the same label maps as the folder inference.

Everything that imports the bundle's ``scripts`` package runs in a fresh interpreter started outside the
repository (the bundle's ``scripts`` must not meet this repository's ``scripts/`` folder in the test process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
META_SCHEMA = REPO_ROOT.parent / "shared" / "data" / "monai" / "meta_schema_20240725.json"
README_SECTIONS = (
    "## Model Overview",
    "## Data",
    "## Training configuration",
    "## Performance",
    "## MONAI Bundle Commands",
    "## References",
    "## License",
)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (no PYTHONPATH) and return the finished process."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=300)


def _bundle_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=_clean_env(),
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dataset) -> Path:
    """A bundle written by a 1-epoch ALC training (student + EMA teacher) with one validation."""
    from monai.bundle import run

    out = tmp_path_factory.mktemp("conventions") / "bundle"
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the configs reference configs/base/*.json relative to the repository root
    try:
        run("training", config_file=["configs/alc_la.json", "configs/quick.json"], dataset_dir=str(demo_dataset.parent),
            datalist=str(demo_dataset), output_dir=str(out), device="cpu")
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, demo_dataset) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    item = json.loads(demo_dataset.read_text())["test"][0]
    shutil.copyfile(demo_dataset.parent / item["image"], folder / "case0.nii.gz")
    return folder


def test_infer_properties_pass_monai_check(trained, tmp_path):
    code = (
        "import json, sys\n"
        "from monai.bundle import ConfigWorkflow\n"
        "root = sys.argv[1]\n"
        "wf = ConfigWorkflow(config_file=root + '/configs/inference.json', meta_file=root + '/configs/metadata.json',"
        " logging_file=root + '/configs/logging.conf', workflow_type='infer')\n"
        "wf.initialize()\n"
        "print(json.dumps({'missing': wf.check_properties(), 'bundle_root': wf.bundle_root,"
        " 'dataset': type(wf.dataset).__name__, 'evaluator': type(wf.evaluator).__name__}))\n"
    )
    proc = _python(code, str(trained), cwd=tmp_path)  # cwd: not the bundle, so bundle_root comes from the config path
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["missing"] == []
    assert Path(result["bundle_root"]) == trained.resolve()
    assert result["dataset"] == "Dataset" and result["evaluator"] == "SupervisedEvaluator"


def test_model_zoo_files_and_readme(trained):
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.pt",
                "LICENSE", "docs/README.md"):
        assert (trained / rel).is_file(), rel
    assert "Apache License" in (trained / "LICENSE").read_text()
    # MONAI Label offers every models/*.pt as a model file: only the exported network is there
    assert sorted(p.name for p in (trained / "models").glob("*.pt")) == ["model.pt"]
    assert (trained / "models" / "extra" / "teacher.pt").is_file()
    config = json.loads((trained / "configs" / "inference.json").read_text())
    assert str(trained.resolve()) not in json.dumps(config)  # no path of the training machine in the config

    readme = (trained / "docs" / "README.md").read_text()
    positions = [readme.find(section) for section in README_SECTIONS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), positions
    validation = json.loads((trained / "configs" / "metadata.json").read_text())["noisyseg"]["validation"]
    assert validation["metric"] == "val_mean_dice" and validation["best_epoch"] == 1 and validation["num_cases"] == 1
    assert 0.0 <= validation["best"] <= 1.0
    assert f"| best val_mean_dice | {validation['best']:.4f} | 1 |" in readme
    assert "--bundle_root" not in readme.split("## MONAI Bundle Commands")[1].split("TorchScript export")[0]


def test_metadata_passes_monai_schema(trained):
    if not META_SCHEMA.is_file():
        pytest.skip(f"metadata schema not found at {META_SCHEMA} (it lives in ../shared/data/monai beside the repo)")
    pytest.importorskip("jsonschema", reason="monai.bundle.verify_metadata needs jsonschema")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(trained / "configs" / "metadata.json"), filepath=str(META_SCHEMA))


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    proc = _bundle_cli("verify_net_in_out", "network_def", "--meta_file", str(trained / "configs" / "metadata.json"),
                       "--config_file", str(trained / "configs" / "inference.json"), "--bundle_root", str(trained),
                       "--device", "cpu", cwd=tmp_path)
    assert "verified with no error" in proc.stdout + proc.stderr
    ts_file = tmp_path / "model.ts"
    _bundle_cli("ckpt_export", "network_def", "--filepath", str(ts_file),
                "--meta_file", str(trained / "configs" / "metadata.json"),
                "--config_file", str(trained / "configs" / "inference.json"),
                "--ckpt_file", str(trained / "models" / "model.pt"), "--bundle_root", str(trained), cwd=tmp_path)
    scripted = torch.jit.load(str(ts_file), map_location="cpu").eval()  # loads without the bundle's scripts/
    with torch.no_grad():
        assert scripted(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_evaluator_writes_the_folder_inference_labels(trained, inputs, tmp_path):
    config = str(trained / "configs" / "inference.json")
    for run_id in ("inference", "run_evaluator"):
        _bundle_cli("run", run_id, "--config_file", config, "--dataset_dir", str(inputs), "--output_dir",
                    str(tmp_path / run_id), "--device", "cpu", cwd=tmp_path)
    by_folder = nib.load(str(tmp_path / "inference" / "case0_seg.nii.gz"))
    by_evaluator = nib.load(str(tmp_path / "run_evaluator" / "case0_seg.nii.gz"))
    source = nib.load(str(inputs / "case0.nii.gz"))
    assert by_evaluator.shape == source.shape and by_evaluator.get_data_dtype() == np.uint8
    np.testing.assert_allclose(by_evaluator.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(by_evaluator.dataobj), np.asarray(by_folder.dataobj))


def _constant_weights(src: Path, dst: Path, label: int) -> None:
    """``src``'s state_dict with an output bias that makes every voxel ``label``."""
    state = torch.load(src, map_location="cpu", weights_only=True)
    bias = torch.full_like(state["out_conv.bias"], -1000.0)
    bias[label] = 1000.0
    state["out_conv.bias"] = bias
    torch.save(state, dst)


def test_copied_bundle_infers_with_its_own_weights(trained, inputs, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(trained, original)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    # the copy predicts foreground everywhere, the original background everywhere
    _constant_weights(trained / "models" / "model.pt", copy / "models" / "model.pt", label=1)
    _constant_weights(trained / "models" / "model.pt", original / "models" / "model.pt", label=0)

    config = str(copy / "configs" / "inference.json")
    for cwd in (tmp_path, original):  # even from inside the original folder
        out = tmp_path / f"preds_{cwd.name}"
        _bundle_cli("run", "inference", "--config_file", config, "--dataset_dir", str(inputs), "--output_dir",
                    str(out), "--device", "cpu", cwd=cwd)
        labels = np.asarray(nib.load(str(out / "case0_seg.nii.gz")).dataobj)
        assert np.all(labels == 1), f"run from {cwd}: not the copy's weights"

    # without the original's weights the copy still runs
    (original / "models" / "model.pt").unlink()
    out = tmp_path / "preds_no_original"
    _bundle_cli("run", "inference", "--config_file", config, "--dataset_dir", str(inputs), "--output_dir", str(out),
                "--device", "cpu", cwd=tmp_path)
    assert np.all(np.asarray(nib.load(str(out / "case0_seg.nii.gz")).dataobj) == 1)


def test_unresolvable_bundle_root_fails_clearly(trained, tmp_path):
    # a tool that reads the config without MONAI's workflow, outside any bundle, without --bundle_root
    code = (
        "import sys\n"
        "from monai.bundle import ConfigParser\n"
        "parser = ConfigParser()\n"
        "parser.read_config(sys.argv[1])\n"
        "parser.get_parsed_content('network')\n"
    )
    proc = _python(code, str(trained / "configs" / "inference.json"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "Pass --bundle_root" in proc.stderr, proc.stderr[-2000:]
    # model-zoo's "." convention: from inside the bundle folder it resolves to that folder
    code_here = code.replace("parser.get_parsed_content('network')", "print(parser.get_parsed_content('bundle_root'))")
    proc = _python(code_here, "configs/inference.json", cwd=trained)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1]) == trained.resolve()
