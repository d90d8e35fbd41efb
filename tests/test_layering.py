"""The package's layering (docs/architecture.md, "Layers") and its file sizes, checked on the source text.

Every module under ``custom/`` belongs to a floor: its top-level module or subpackage (``custom/io.py`` -> ``io``,
``custom/noise/hq_draws.py`` -> ``noise``). A module may import its own package and anything on a lower floor,
never a package on its own floor or above; imports inside functions count too, so a deferred import cannot hide an
upward arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "custom"

# bottom to top; the same list as docs/architecture.md's "Layers"
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "errors", "io", "seeding", "host_memory", "distributed"}),
    frozenset({"transforms", "evaluation", "networks", "inference", "init_from"}),
    frozenset({"noise", "losses"}),
    frozenset({"data", "selection"}),
    frozenset({"refinement"}),
    frozenset({"engines", "bundle"}),
    frozenset({"handlers"}),
    frozenset({"annotation", "benchmark", "options"}),
)
MAX_LINES = 600


def _floor_of() -> dict[str, int]:
    return {unit: level for level, units in enumerate(FLOORS) for unit in units}


def _unit(path: Path) -> str:
    """``custom/noise/hq_draws.py`` -> ``noise``; ``custom/io.py`` -> ``io``."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _module_name(path: Path, root: Path) -> str:
    parts = ("custom", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_units(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, unit)`` of every import of a ``custom`` module in ``path`` under the package folder ``root``
    (relative imports resolved), in line order."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # "from custom import io" names the unit in the imported names
            targets = [f"{module}.{a.name}" for a in node.names] if module == "custom" else [module]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] == "custom" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return sorted(found)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_floor():
    floor = _floor_of()
    missing = sorted({_unit(p) for p in _modules()} - set(floor))
    assert not missing, f"place these in FLOORS (and docs/architecture.md's Layers): {missing}"


def test_no_upward_or_sideways_import():
    floor = _floor_of()
    wrong = []
    for path in _modules():
        unit = _unit(path)
        for line, target in imported_units(path):
            if target == unit or target not in floor or unit not in floor:
                continue  # own package; unknown units fail test_every_module_has_a_floor
            if floor[target] >= floor[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports custom.{target} "
                             f"(floor {floor[target]}) from {unit} (floor {floor[unit]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_deferred_relative_and_package_imports(tmp_path):
    # the checker itself: each form of import is found, with its line
    root = tmp_path / "custom"
    (root / "noise").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "noise" / "__init__.py").write_text("")
    module = root / "noise" / "draws.py"
    module.write_text(
        "def f():\n"
        "    from custom.data.prepare import x\n"
        "from ..data import y\n"
        "from custom import handlers\n"
        "import custom.engines.base\n"
        "from . import registry\n"
    )
    assert imported_units(module, root) == [(2, "data"), (3, "data"), (4, "handlers"), (5, "engines"), (6, "noise")]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_above_the_size_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (limit {MAX_LINES}): split it"
