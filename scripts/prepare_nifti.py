#!/usr/bin/env python
"""Prepare a NIfTI dataset in the Medical Segmentation Decathlon layout as a noisy-label training set.

Input: ``--root`` with ``imagesTr/`` and ``labelsTr/`` (one single-channel ``<case>.nii.gz`` each, nnU-Net's
``<case>_0000`` image names accepted), optional ``imagesTs/`` + ``labelsTs/`` (else ``--test-count`` cases of the
training pool become the test split) and an optional ``dataset.json`` whose ``labels`` declare the classes.

Example::

    python scripts/prepare_nifti.py --root Task02_Heart --out data/heart_noisy --noise symmetric \
        --param rate=0.2 --test-count 4

Exit code 2 with the problem on stderr for bad input (nothing is left half-written).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from custom.data.prepare_cli import main_nifti  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_nifti())
