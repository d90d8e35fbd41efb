"""``scripts/add_label_audit_to_app.py``: installs the label-audit app files into a ``monaibundle`` app folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "add_label_audit_to_app.py"
BUNDLE_MAIN = (
    "from monailabel.utils.others.generic import get_bundle_models\n\n\nclass MyApp(MONAILabelApp):\n    pass\n"
)


def _add(app: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--app", str(app)], capture_output=True, text=True,
                          timeout=60)


def test_installs_the_app_and_keeps_the_bundle_app_once(tmp_path):
    app = tmp_path / "monaibundle"
    app.mkdir()
    (app / "main.py").write_text(BUNDLE_MAIN)
    for _ in range(2):  # again: the copies are refreshed, the original main.py is not overwritten with ours
        proc = _add(app)
        assert proc.returncode == 0, proc.stderr
        assert (app / "monaibundle_main.py").read_text() == BUNDLE_MAIN
        assert (app / "main.py").read_text() == (REPO_ROOT / "custom" / "annotation" / "monailabel_app.py").read_text()
        assert (app / "noisyseg_audit_queue.py").read_text() == (
            REPO_ROOT / "custom" / "annotation" / "audit_queue.py").read_text()


def test_refuses_a_folder_that_is_not_a_monaibundle_app(tmp_path):
    proc = _add(tmp_path)
    assert proc.returncode == 2 and "no main.py" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("noisyseg: error: ")
    (tmp_path / "main.py").write_text("print('some other app')\n")
    proc = _add(tmp_path)
    assert proc.returncode == 2 and "not the main.py of MONAI Label's monaibundle app" in proc.stderr
    assert not (tmp_path / "monaibundle_main.py").exists()
