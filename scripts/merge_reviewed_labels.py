"""Retrain on reviewed labels: a copy of a datalist in which every training case with a label submitted in MONAI
Label (``<studies>/labels/final/<case_id>.nii.gz``) trains on that label as an HQ case
(``custom.annotation.reviewed_labels``; docs/deploy.md, "The annotator's loop").

    python scripts/merge_reviewed_labels.py --datalist data/la_noisy/datalist.json \
        --reviewed /tmp/noisyseg_studies/labels/final --out data/la_noisy/datalist_reviewed.json

Prints the cases that changed. Exit status 1 with ``error: <file>: <problem>`` on stderr for a bad datalist, a
reviewed label whose name is no training case id, or ``--out`` equal to ``--datalist``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from custom.annotation.reviewed_labels import merge_reviewed_labels  # noqa: E402
from custom.errors import PREFIX  # noqa: E402
from custom.io import DataError  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", required=True, help="the datalist the bundle was trained on")
    parser.add_argument("--reviewed", required=True, help="folder of reviewed labels: <studies>/labels/final")
    parser.add_argument("--out", required=True, help="the new datalist (paths are written relative to its folder)")
    args = parser.parse_args(argv)
    try:
        out, merged = merge_reviewed_labels(args.datalist, args.reviewed, args.out)
    except DataError as exc:
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 1
    print(f"{out}: {len(merged)} training case(s) on reviewed labels (quality hq): {', '.join(merged) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
