"""The label audit offered to an annotator by a real MONAI Label 0.8.5 server (docs/deploy.md, "The label audit in
MONAI Label"): a tiny ALC bundle trained here, its audit written by ``scripts/audit_labels.py``, the
``monaibundle`` app extended by ``scripts/add_label_audit_to_app.py``, a server on 127.0.0.1.

Checks: ``/activelearning/label_audit`` serves the audit's top case, then (once that one has a submitted label) the
second; ``/infer/label_audit`` returns the refined label of a case byte for byte; an image the audit does not know
is refused; once every audited image is submitted the strategy has nothing left.

Needs the environment built by ``scripts/setup_monailabel_env.sh`` (``NOISYSEG_MONAILABEL_VENV``, default
``<repo>/.venv-monailabel``); skipped with a message otherwise. Run with ``pytest -m deploy tests/deploy``. Every
wait is bounded and the server is stopped at teardown.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests.deploy.monailabel_helpers import clean_env as _clean_env
from tests.deploy.monailabel_helpers import log_tail as _log_tail
from tests.deploy.monailabel_helpers import multipart as _multipart
from tests.deploy.monailabel_helpers import request as _request
from tests.deploy.monailabel_helpers import running_server

pytestmark = pytest.mark.deploy

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "noisyseg_audit_deploy"
AUDIT = "label_audit"  # the strategy's and the infer task's name
BUNDLE_PARTS = ("configs", "models", "scripts", "docs", "LICENSE")


def _run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def trained_run(monailabel_python, demo_dataset, tmp_path_factory) -> dict[str, Any]:
    """A 1-epoch ALC training (its output folder is the bundle) and the bundle's label audit of the datalist's LQ
    cases (teacher uncertainty), both by the project's own entry points, in fresh interpreters."""
    root = tmp_path_factory.mktemp("audit_deploy")
    run_dir, audit_dir = root / "run", root / "audit"
    data = ["--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset)]
    # the configs reference configs/base/*.json relative to the repository root
    _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
          "['configs/alc_la.json','configs/quick.json']", *data, "--output_dir", str(run_dir), "--device", "cpu"],
         cwd=REPO_ROOT)
    _run([sys.executable, str(REPO_ROOT / "scripts" / "audit_labels.py"), "--bundle", str(run_dir), "--datalist",
          str(demo_dataset), "--output_dir", str(audit_dir), "--device", "cpu"], cwd=root)
    with open(audit_dir / "label_audit.csv", newline="") as f:
        audit = sorted(csv.DictReader(f), key=lambda row: int(row["rank"]))
    assert len(audit) >= 3, audit
    items = json.loads(demo_dataset.read_text())["training"]
    return {"root": root, "run": run_dir, "audit_dir": audit_dir, "audit": audit, "items": items,
            "data_root": demo_dataset.parent}


@pytest.fixture(scope="module")
def server(monailabel_python, trained_run):
    """The monaibundle app with the trained bundle and the label audit, studies = the training images; a running
    server on 127.0.0.1 (stopped at teardown)."""
    root = trained_run["root"]
    apps = root / "apps"
    _run([str(monailabel_python), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output",
          str(apps)], cwd=root, timeout=120)
    app = apps / "monaibundle"
    served = app / "model" / MODEL_NAME
    served.mkdir(parents=True)
    for part in BUNDLE_PARTS:  # the bundle, not the whole run folder (checkpoints, logs)
        source = trained_run["run"] / part
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, served / part)
    _run([sys.executable, str(REPO_ROOT / "scripts" / "add_label_audit_to_app.py"), "--app", str(app)], cwd=root)

    # every training image, audited (LQ) or not (HQ): the strategy must pick the audited ones, in rank order
    studies = root / "studies"
    studies.mkdir()
    for item in trained_run["items"]:
        shutil.copyfile(trained_run["data_root"] / item["image"], studies / Path(item["image"]).name)

    with running_server(monailabel_python, app, studies, root, MODEL_NAME,
                        ["--conf", AUDIT, str(trained_run["audit_dir"])]) as (base_url, info, log_path):
        yield {"url": base_url, "info": info, "studies": studies, "log": log_path, **trained_run}


def _next_case(server) -> dict[str, Any]:
    status, body = _request("POST", f"{server['url']}/activelearning/{AUDIT}", body=b"{}",
                            headers={"Content-Type": "application/json"})
    assert status == 200, f"{body[:2000]!r}\n{_log_tail(server['log'])}"
    return json.loads(body)


def _submit(server, image_id: str, label_file: Path) -> None:
    body, content_type = _multipart("label", label_file.name, label_file.read_bytes())
    status, answer = _request("PUT", f"{server['url']}/datastore/label?image={image_id}", body=body,
                              headers={"Content-Type": content_type})
    assert status == 200, answer[:2000]


# ---------------------------------------------------------------------------------------------
# tests (in file order: they submit labels one after the other)


def test_app_offers_the_audit_strategy_and_model(server):
    info = server["info"]
    assert AUDIT in info["strategies"]
    assert {"random", "first"} <= set(info["strategies"])  # the monaibundle app's own strategies stay
    assert MODEL_NAME in info["models"] and AUDIT in info["models"]
    assert next(iter(info["models"])) == AUDIT  # first: the model Slicer auto-runs after "Next Sample"
    assert info["models"][AUDIT]["type"] == "segmentation"
    assert info["models"][AUDIT]["labels"] == info["models"][MODEL_NAME]["labels"] == {"left_atrium": 1}


def test_strategy_serves_the_top_two_cases_in_order(server):
    audit = server["audit"]
    first = _next_case(server)
    assert first["id"] == audit[0]["case_id"]
    assert first["audit"]["rank"] == 1 and first["audit"]["score"] == pytest.approx(float(audit[0]["score"]))
    assert Path(first["path"]).parent == server["studies"]
    # not submitted yet: asked again, the same case
    assert _next_case(server)["id"] == audit[0]["case_id"]

    # the annotator submits a label for it (labels/final): the next one is the audit's second
    _submit(server, first["id"], Path(audit[0]["refined_label"]))
    assert (server["studies"] / "labels" / "final" / f"{first['id']}.nii.gz").is_file()
    second = _next_case(server)
    assert second["id"] == audit[1]["case_id"]
    assert second["audit"]["rank"] == 2


def test_infer_returns_the_refined_label_as_pre_annotation(server):
    entry = server["audit"][1]
    status, body = _request("POST", f"{server['url']}/infer/{AUDIT}?image={entry['case_id']}&output=image",
                            body=b"")
    assert status == 200, f"{body[:2000]!r}\n{_log_tail(server['log'])}"
    assert body == Path(entry["refined_label"]).read_bytes()

    served_file = server["root"] / "pre_annotation.nii.gz"
    served_file.write_bytes(body)
    label, image = nib.load(str(served_file)), nib.load(str(server["studies"] / f"{entry['case_id']}.nii.gz"))
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
    values = np.unique(np.asanyarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1}

    # the JSON part names the labels and the audit row
    status, body = _request("POST", f"{server['url']}/infer/{AUDIT}?image={entry['case_id']}&output=json", body=b"")
    assert status == 200, body[:2000]
    params = json.loads(body)
    assert params["label_names"] == {"left_atrium": 1}
    assert params["audit"]["case_id"] == entry["case_id"] and params["audit"]["rank"] == 2


def test_infer_refuses_an_image_the_audit_does_not_know(server):
    audited = {row["case_id"] for row in server["audit"]}
    other = next(Path(i["image"]).name.split(".")[0] for i in server["items"]
                 if Path(i["image"]).name.split(".")[0] not in audited)
    status, _ = _request("POST", f"{server['url']}/infer/{AUDIT}?image={other}&output=image", body=b"")
    assert status >= 400


def test_strategy_has_nothing_left_once_every_audited_case_is_submitted(server):
    for row in server["audit"][1:]:
        _submit(server, row["case_id"], Path(row["refined_label"]))
    assert _next_case(server) == {}
    # unaudited images are still there for the app's other strategies
    status, body = _request("POST", f"{server['url']}/activelearning/first", body=b"{}",
                            headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["id"] not in {row["case_id"] for row in server["audit"]}
