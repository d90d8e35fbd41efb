"""Where things live in an exported bundle, and which noisyseg code it carries in ``scripts/``.

The bundle runs without this repository on the Python path: the network modules and the folder-inference code are
copied into ``scripts/`` (:data:`SHIPPED_NETWORKS`, :data:`SHIPPED_ALWAYS`), and ``network_def`` targets the copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["EXTRA_MODELS_DIR", "PACKAGE_ROOT", "SHIPPED_ALWAYS", "SHIPPED_NETWORKS", "network_def", "shipped_files"]

# the custom/ package, whose files are copied into a bundle's scripts/
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# training-time networks besides models/model.pt: a subfolder, because MONAI Label offers every models/*.pt as a
# selectable model file (and e.g. JCAS's transition matrices are no network at all)
EXTRA_MODELS_DIR = "models/extra"
# network class -> (module files under custom/ shipped in the bundle's scripts/, dotted target inside the bundle).
# Shipped modules import each other relatively (``from .vnet import PaperVNet``) so they work in both places.
SHIPPED_NETWORKS: dict[str, tuple[tuple[str, ...], str]] = {
    "PaperVNet": (("networks/vnet.py",), "scripts.vnet.PaperVNet"),
    "NnUNetDynUNet": (("networks/dynunet.py",), "scripts.dynunet.NnUNetDynUNet"),
    "JcasVNet": (
        ("networks/vnet.py", "networks/dar.py", "networks/deep_supervision.py"),
        "scripts.deep_supervision.JcasVNet",
    ),
}
SHIPPED_ALWAYS = {
    "inference/folder_inference.py": "folder_inference.py",
    # what folder_inference imports, as its siblings in scripts/
    "inference/input_checks.py": "input_checks.py",
    "io.py": "io.py",
    "errors.py": "errors.py",
}


def network_def(network_class: str, network_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle config's ``network_def``: the shipped copy in ``scripts/`` for a noisyseg network (its import
    waits for ``@bundle_scripts``, which puts the bundle folder on ``sys.path``), else ``network_class`` itself as an
    importable ``_target_``."""
    if network_class in SHIPPED_NETWORKS:
        return {"_target_": SHIPPED_NETWORKS[network_class][1], "_requires_": "@bundle_scripts", **network_kwargs}
    return {"_target_": network_class, **network_kwargs}


def shipped_files(network_class: str) -> dict[str, str]:
    """``{path under custom/: file name in scripts/}`` for a bundle of ``network_class``."""
    shipped = dict(SHIPPED_ALWAYS)
    for src in SHIPPED_NETWORKS.get(network_class, ((), ""))[0]:
        shipped[src] = Path(src).name
    return shipped
