"""Add the label audit to a MONAI Label ``monaibundle`` app (docs/deploy.md, "The label audit in MONAI Label").

    python scripts/add_label_audit_to_app.py --app /tmp/noisyseg_app/monaibundle

Copies ``custom/annotation/monailabel_app.py`` into the app as its ``main.py`` (the app's own ``main.py``, which it
extends, is kept as ``monaibundle_main.py``) and ``custom/annotation/audit_queue.py`` as ``noisyseg_audit_queue.py``.
Run it again after updating this repository: it refreshes the two copies and leaves ``monaibundle_main.py`` alone.
The audit itself is named when the server starts: ``--conf label_audit <audit folder or label_audit.csv>``.

Standard library only: runs with the project's Python or the MONAI Label environment's. Exit status 2 with the
problem on stderr when the folder is not a ``monaibundle`` app.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout, also in the MONAI Label venv
from custom.errors import PREFIX  # noqa: E402  (standard library only)

SOURCE = REPO / "custom" / "annotation"
MARKER = "class NoisySegAuditApp("  # how a main.py written by this script is recognised
BUNDLE_MAIN = "monaibundle_main.py"
QUEUE_MODULE = "noisyseg_audit_queue.py"


def add_label_audit(app: str | Path) -> Path:
    """Install the audit files into ``app``; returns the app folder.

    Raises:
        ValueError: ``app`` has no ``main.py`` of a ``monaibundle`` app (nor one written here).
    """
    app = Path(app)
    main = app / "main.py"
    if not main.is_file():
        raise ValueError(f"{app}: no main.py; download the app first (python -m monailabel.main apps --download "
                         "--name monaibundle --output <folder>)")
    text = main.read_text()
    if MARKER not in text:
        if "class MyApp(" not in text or "get_bundle_models" not in text:
            raise ValueError(f"{main}: not the main.py of MONAI Label's monaibundle app")
        shutil.copyfile(main, app / BUNDLE_MAIN)
    elif not (app / BUNDLE_MAIN).is_file():
        raise ValueError(f"{app}: main.py is the label-audit app but {BUNDLE_MAIN} is missing")
    shutil.copyfile(SOURCE / "audit_queue.py", app / QUEUE_MODULE)
    shutil.copyfile(SOURCE / "monailabel_app.py", main)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", required=True, help="the monaibundle app folder (the one holding main.py)")
    args = parser.parse_args(argv)
    try:
        app = add_label_audit(args.app)
    except ValueError as exc:
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 2
    print(f"label audit added to {app} (start the server with --conf label_audit <audit folder>)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
