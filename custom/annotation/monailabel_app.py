"""MONAI Label app with the label audit: MONAI Label's ``monaibundle`` sample app plus

* the active-learning strategy ``label_audit`` (``POST /activelearning/label_audit``): the datastore image that
  ``label_audit.csv`` ranks highest among those without a submitted (``final``) label, answered as
  ``{"id": <image id>, "audit": {"rank", "case_id", "score_name", "score", "changed_fraction"}}``;
* the segmentation model ``label_audit`` (``POST /infer/label_audit?image=<id>``): the audit's refined label of that
  image, as it was written (NIfTI, the noisy label file's grid), as the pre-annotation to correct.

This file is not imported from the repository: ``scripts/add_label_audit_to_app.py`` copies it into a downloaded
``monaibundle`` app as ``main.py`` (the app's own ``main.py`` becomes ``monaibundle_main.py``, which this file
extends) and copies :mod:`custom.annotation.audit_queue` beside it as ``noisyseg_audit_queue.py``. It needs only
MONAI Label and the standard library.

Configuration (``start_server --conf``): ``label_audit`` the audit's ``label_audit.csv`` or its folder (without it the
app is the plain ``monaibundle`` app); ``label_audit_labels`` the label names of the refined labels as
``name=value,...`` (default: those of the first served bundle). Image ids meet the audit's ``case_id`` by file stem
(``noisyseg_audit_queue.case_id_of``). The CSV is read again on every request, so a new audit of the same path is
served without restarting.
"""

import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple

import monaibundle_main
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.strategy import Strategy
from noisyseg_audit_queue import AUDIT_CSV, AuditQueue

logger = logging.getLogger(__name__)

AUDIT_NAME = "label_audit"  # the strategy's and the infer task's name


def audit_csv_path(conf_value: str) -> str:
    """``label_audit.csv`` of ``--conf label_audit`` (the CSV itself or its folder)."""
    path = os.path.abspath(os.path.expanduser(conf_value))
    return os.path.join(path, AUDIT_CSV) if os.path.isdir(path) else path


def _audit_info(entry) -> Dict[str, Any]:
    return {"rank": entry.rank, "case_id": entry.case_id, "score_name": entry.score_name, "score": entry.score,
            "changed_fraction": entry.changed_fraction}


class LabelAuditStrategy(Strategy):
    """The most suspicious audited image without a submitted label (``datastore.get_labeled_images()``: the
    images with a ``final`` label); ``None`` (an empty answer) once every audited image has one."""

    def __init__(self, csv_path: str):
        super().__init__(f"Most suspicious annotation first ({os.path.basename(csv_path)}: highest audit score "
                         "among the images without a final label)")
        self.csv_path = csv_path

    def __call__(self, request, datastore: Datastore):
        queue = AuditQueue.from_csv(self.csv_path)
        found = queue.next_case(datastore.list_images(), submitted=datastore.get_labeled_images())
        if found is None:
            logger.info(f"{AUDIT_NAME}: every audited image has a final label")
            return None
        image_id, entry = found
        logger.info(f"{AUDIT_NAME}: selected {image_id} (rank {entry.rank}, {entry.score_name}={entry.score})")
        return {"id": image_id, "audit": _audit_info(entry)}


class LabelAuditInferTask(InferTask):
    """The audit's refined label of the requested image (found by its file stem), returned as it was written."""

    def __init__(self, csv_path: str, labels: Dict[str, int]):
        super().__init__(type=InferType.SEGMENTATION, labels=labels, dimension=3,
                         description=f"Refined label of the label audit ({csv_path}) as a pre-annotation")
        self.csv_path = csv_path

    def is_valid(self) -> bool:
        return os.path.isfile(self.csv_path)

    def __call__(self, request) -> Tuple[Optional[str], Dict[str, Any]]:
        image = str(request.get("image", ""))
        entry = AuditQueue.from_csv(self.csv_path).entry(image)
        if entry is None:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      f"{os.path.basename(image)} is not a case of the label audit {self.csv_path}")
        if not entry.refined_label.is_file():
            raise MONAILabelException(MONAILabelError.SERVER_ERROR,
                                      f"refined label of {entry.case_id} not found: {entry.refined_label}")
        # the server deletes the file it sends back: send a copy
        suffix = ".nii.gz" if entry.refined_label.name.endswith(".nii.gz") else entry.refined_label.suffix
        fd, copy = tempfile.mkstemp(suffix=suffix, prefix=f"{entry.case_id}_audit_")
        os.close(fd)
        shutil.copyfile(entry.refined_label, copy)
        return copy, {"label_names": dict(self.labels), "audit": _audit_info(entry)}


def _parse_labels(text: str) -> Dict[str, int]:
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        labels[name.strip()] = int(value)
    return labels


class NoisySegAuditApp(monaibundle_main.MyApp, MONAILabelApp):
    """The ``monaibundle`` app (its bundles, trainers and strategies) plus the label audit's strategy and infer task.

    ``MONAILabelApp`` is named among the bases because MONAI Label picks the class of ``main.py`` whose direct
    bases include it."""

    def __init__(self, app_dir, studies, conf):
        value = conf.get(AUDIT_NAME)
        self.audit_csv = audit_csv_path(value) if value else None
        if self.audit_csv and not os.path.isfile(self.audit_csv):
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR,
                                      f"--conf {AUDIT_NAME}: no label audit at {self.audit_csv}")
        super().__init__(app_dir, studies, conf)

    def init_infers(self) -> Dict[str, InferTask]:
        infers = super().init_infers()
        if self.audit_csv:
            labels = _parse_labels(self.conf.get("label_audit_labels", ""))
            if not labels:
                served = [t for n, t in infers.items() if n in self.models and t.type == InferType.SEGMENTATION]
                labels = dict(served[0].labels) if served and isinstance(served[0].labels, dict) else {}
            # listed first: Slicer's MONAI Label module auto-runs the first model with the image's labels after
            # "Next Sample", so the refined label is the pre-annotation that appears by itself
            infers = {AUDIT_NAME: LabelAuditInferTask(self.audit_csv, labels), **infers}
            logger.info(f"+++ Adding Inferer:: {AUDIT_NAME} => {self.audit_csv} (labels {labels})")
        return infers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies = super().init_strategies()
        if self.audit_csv:
            strategies[AUDIT_NAME] = LabelAuditStrategy(self.audit_csv)
            logger.info(f"Active Learning Strategy:: {AUDIT_NAME} => {self.audit_csv}")
        return strategies
