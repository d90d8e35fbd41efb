"""A run's own record (``run_record.json``): what it ran with and how the report shows it.

Every run folder ``<setting>/<key>_s<seed>/`` holds one, written when the run starts::

    {"format": 1,
     "method": {"key": "spguided", "label": "SP-guided", "family": "coteaching",
                "configs": ["configs/spguided_la.json"], "overrides": {}, "diff_to": ["coteaching"],
                "audit_source": "spguided", "noise_families": ["mtcl", "sp"]},
     "setting": "mtcl_hq25", "seed": 0,
     "profile": ["configs/cpu_la.json", "configs/cpu_converged.json"], "extra_overrides": {},
     "commit": "<git commit the configs and overrides refer to>", "recorded": "<ISO time>", "note": "..."}

The method's configs and overrides reproduce the run on the code of ``commit`` (configs' defaults change; the
record does not). The report takes each method's label, family and baselines from its runs' records
(:func:`method_specs`), so an archived variant is reported with no entry in code; a run without a record (made before
records existed, or by hand) falls back to the protocol's :data:`~custom.benchmark.registry.METHODS`, else to its
folder name.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.benchmark.registry import FAMILIES, METHODS, MethodSpec
from custom.io import DataError, write_json

__all__ = [
    "RUN_RECORD_FILE",
    "RECORD_FORMAT",
    "current_commit",
    "make_run_record",
    "write_run_record",
    "read_run_record",
    "method_specs",
    "report_order",
]

RUN_RECORD_FILE = "run_record.json"
RECORD_FORMAT = 1


def current_commit(repo: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``repo`` (default: this checkout), with ``-dirty`` when tracked files differ from
    it; None outside a git checkout."""
    root = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def make_run_record(
    spec: MethodSpec,
    setting: str,
    seed: int,
    profile: Sequence[str],
    extra_overrides: Mapping[str, Any] | None = None,
    commit: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """The record of one run of ``spec`` (module docstring); ``commit`` None: :func:`current_commit`."""
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "method": spec.to_dict(),
        "setting": str(setting),
        "seed": int(seed),
        "profile": list(profile),
        "extra_overrides": dict(extra_overrides or {}),
        "commit": commit if commit is not None else current_commit(),
        "recorded": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if note:
        record["note"] = note
    return record


def write_run_record(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``<run_dir>/run_record.json`` (atomically)."""
    return write_json(dict(record), Path(run_dir) / RUN_RECORD_FILE)


def read_run_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The record of a run folder, its ``"method"`` entry checked (None when the folder has none).

    Raises:
        DataError: when the file is not valid JSON, has another format, or its method entry is malformed.
    """
    path = Path(run_dir) / RUN_RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise DataError(path, f"expected a run record of format {RECORD_FORMAT}")
    try:
        MethodSpec.from_dict(record.get("method") or {})
    except (TypeError, ValueError) as exc:
        raise DataError(path, str(exc)) from exc
    return record


def method_specs(runs: Sequence[Mapping[str, Any]]) -> dict[str, MethodSpec]:
    """Each method of ``runs`` (records of :func:`custom.benchmark.results.collect_runs`) with its spec: from its
    runs' records (the first seed's), else the protocol's :data:`METHODS` entry, else a spec named after the key."""
    specs: dict[str, MethodSpec] = {}
    for run in sorted(runs, key=lambda r: (r["method"], r.get("seed", 0))):
        key = run["method"]
        if key in specs:
            continue
        recorded = run.get("method_record")
        if recorded:
            specs[key] = MethodSpec.from_dict(recorded)
        elif key in METHODS:
            specs[key] = METHODS[key]
        else:
            specs[key] = MethodSpec(key, key, "", ("unknown",))
    return specs


def report_order(specs: Mapping[str, MethodSpec]) -> list[str]:
    """The report's method order: the protocol's :data:`METHODS` in their order, each family's archived variants
    (sorted by key) right after the family's last current method, then the methods of other families."""
    current = [k for k in METHODS if k in specs]
    variants = sorted(k for k in specs if k not in METHODS)
    order: list[str] = []
    for i, key in enumerate(current):
        order.append(key)
        family = specs[key].family
        if i + 1 == len(current) or specs[current[i + 1]].family != family:
            order += [v for v in variants if specs[v].family == family and v not in order]
    known = {specs[k].family for k in current} | set(FAMILIES)
    order += [v for v in variants if v not in order and specs[v].family in known]
    order += [v for v in variants if v not in order]
    return order
