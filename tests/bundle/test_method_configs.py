"""Model-zoo style smoke test per method config: train 2 iterations, evaluate, then run the written bundle's
inference from its own folder in a fresh process that never imports this repository's ``custom`` package."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# method configs define a trainer; overlays (cpu_la.json, paper_la.json, ...) only override ids
METHOD_CONFIGS = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.json") if "train" in json.loads(p.read_text()))
MULTICLASS = {"jcas_la.json"}


def run_bundle(run_id: str, config_files: list[str], **overrides) -> None:
    from monai.bundle import run

    run(run_id, config_file=config_files, **overrides)


@pytest.mark.parametrize("config_name", METHOD_CONFIGS)
def test_method_config_trains_evaluates_and_exports(
    config_name, demo_dataset, demo_dataset_3class, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO_ROOT)  # configs reference configs/base/*.json relative to the repository root
    datalist = demo_dataset_3class if config_name in MULTICLASS else demo_dataset
    out = tmp_path / "bundle"
    configs = [f"configs/{config_name}", "configs/quick.json"]
    common = dict(dataset_dir=str(datalist.parent), datalist=str(datalist), output_dir=str(out), device="cpu")
    run_bundle("training", configs, **common)

    for rel in (
        "configs/metadata.json",
        "configs/inference.json",
        "docs/README.md",
        "models/model.pt",
        "checkpoints/checkpoint_final.pt",
    ):
        assert (out / rel).is_file(), rel
    import torch

    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith("module.") for k in state)

    run_bundle("evaluating", configs, **common)
    with open(out / "eval" / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(json.loads(datalist.read_text())["test"])
    summary = json.loads((out / "eval" / "metrics_summary.json").read_text())
    assert summary  # mean/std per metric

    # the bundle alone: a fresh interpreter, started outside the repository, must not import `custom`
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    test_item = json.loads(datalist.read_text())["test"][0]
    src = nib.load(str(datalist.parent / test_item["image"]))
    nib.save(src, str(inputs / "case0.nii.gz"))
    preds = tmp_path / "preds"
    script = (
        "import sys, runpy\n"
        "sys.argv = ['monai.bundle', 'run', 'inference', '--config_file', sys.argv[1], '--bundle_root', sys.argv[2],"
        " '--dataset_dir', sys.argv[3], '--output_dir', sys.argv[4], '--device', 'cpu']\n"
        "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'custom' not in sys.modules, 'bundle imported the repository package'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out / "configs" / "inference.json"), str(out), str(inputs), str(preds)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seg = nib.load(str(preds / "case0_seg.nii.gz"))
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    labels = np.unique(np.asarray(seg.dataobj))
    assert set(labels.tolist()) <= set(range(3 if config_name in MULTICLASS else 2))


@pytest.mark.parametrize("config_name", METHOD_CONFIGS)
def test_training_cache_reaches_the_first_random_transform(config_name, demo_dataset, demo_dataset_3class,
                                                           monkeypatch):
    """``CacheDataset`` caches up to the first random transform *or the first callable that is not a MONAI
    ``Transform``*: every deterministic step of the training chain must be a ``Transform`` so that loading,
    resampling and normalisation run once per case, not once per iteration."""
    from monai.bundle import ConfigParser
    from monai.transforms import RandomizableTrait, Transform

    monkeypatch.chdir(REPO_ROOT)
    datalist = demo_dataset_3class if config_name in MULTICLASS else demo_dataset
    parser = ConfigParser()
    parser.read_config([f"configs/{config_name}", "configs/cpu_la.json"])
    parser.update({"dataset_dir": str(datalist.parent), "datalist": str(datalist)})
    chain = parser.get_parsed_content("transforms::train", instantiate=True)
    boundary = chain.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    assert boundary is not None and isinstance(chain.transforms[boundary], RandomizableTrait), (
        f"{config_name}: the cache ends at {type(chain.transforms[boundary]).__name__}, not a random transform"
    )
    assert boundary >= 5  # loading, orientation, checks and resampling are all before it


COTEACHING_FAMILY = ["coteaching_la.json", "jocor_la.json", "trinet_la.json", "spguided_la.json",
                     "spguided_voxel_la.json"]


@pytest.mark.parametrize("config_name", COTEACHING_FAMILY)
def test_the_coteaching_family_trusts_the_hq_cases_by_default(config_name, monkeypatch):
    # the validation split preferred trust_hq in 11 of 12 seed-method pairs (CHANGELOG.md); the trainer must receive it
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO_ROOT)  # the shared keys are macros into configs/base/coteaching_family.json
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / config_name)])
    parser.resolve_macro_and_relative_ids()
    assert parser["trust_hq"] is True
    assert parser["train"]["trainer"]["trust_hq"] == "@trust_hq"


@pytest.mark.parametrize("trust_hq", [None, False])  # None: the configs' default (true)
@pytest.mark.parametrize("config_name", ["coteaching_la.json", "spguided_la.json"])
def test_trust_hq_reads_each_samples_quality_through_the_real_pipeline(config_name, trust_hq, demo_dataset, tmp_path,
                                                                       monkeypatch):
    # trust_hq raises at the first selecting step when the collated batch lacks a 'quality' entry per sample; the
    # first epoch is the forget-rate warm-up (R = 1, nothing ranked), so the run needs epochs after it
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "bundle"
    overrides = {} if trust_hq is None else {"trust_hq": trust_hq}
    run_bundle("training", [f"configs/{config_name}", "configs/quick.json"], dataset_dir=str(demo_dataset.parent),
               datalist=str(demo_dataset), output_dir=str(out), device="cpu", max_epochs=3, **overrides)
    assert (out / "models" / "model.pt").is_file()


def test_spguided_relabels_foreground_only_at_a_stricter_gate(demo_dataset, demo_dataset_3class, monkeypatch):
    # issue 15: one gate per noisy class, background 0.8 and every foreground class 0.99 (docs/methods/spguided.md)
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO_ROOT)
    for datalist, expected in ((demo_dataset, [0.8, 0.99]), (demo_dataset_3class, [0.8, 0.99, 0.99])):
        parser = ConfigParser()
        parser.read_config(["configs/spguided_la.json"])
        parser.update({"dataset_dir": str(datalist.parent), "datalist": str(datalist)})
        assert parser.get_parsed_content("refine_min_confidence") == expected
        assert parser.get_parsed_content("label_stage").refine_min_confidence == expected
