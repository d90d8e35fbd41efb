import subprocess
from pathlib import Path

import pytest

from tests.deploy.monailabel_helpers import monailabel_venv


@pytest.fixture(scope="module")
def monailabel_python() -> Path:
    """The MONAI Label environment's python; the test is skipped with a message when it is missing or broken."""
    python = monailabel_venv() / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no MONAI Label environment at {python.parent.parent}: build it with "
                    "scripts/setup_monailabel_env.sh (or set NOISYSEG_MONAILABEL_VENV)")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u, sys; "
                            "sys.exit(u.find_spec('monailabel') is None)"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import monailabel: rebuild with scripts/setup_monailabel_env.sh")
    return python
