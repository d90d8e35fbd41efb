#!/usr/bin/env python
"""Prepare the left-atrium HDF5 release as a noisy-label training set.

Example::

    python scripts/prepare_la.py --h5-dir ../shared/data/la2018_h5 --out data/la_mtcl \
        --noise mtcl --hq-fraction 0.25 --seed 0 --downsample 2

Writes ``imagesTr/ labelsTr/ labelsTr_noisy/ imagesTs/ labelsTs/ datalist.json noise_report.csv`` under
``--out``; exit code 2 with the problem on stderr for bad input (nothing is left half-written).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from custom.data.prepare_cli import main_la  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_la())
