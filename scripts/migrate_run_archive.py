#!/usr/bin/env python
"""One-off: give every run of a run archive its ``run_record.json`` from the method tables of this commit.

    python scripts/migrate_run_archive.py docs/benchmark_runs_converged

Run once, before the historical variants' entries leave the code; the records then carry them. Each record's configs
and overrides are the table's entry, which reproduces the run on this commit's code; the command the run actually
ran is its ``training_command.json``, and a run whose bundle name differs from its folder name says so in its note.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from custom.benchmark.harness import AUDIT_SOURCES, METHOD_LABELS, METHODS, SETTINGS
from custom.benchmark.registry import MethodSpec
from custom.benchmark.results import DIFF_TO
from custom.benchmark.run_record import RUN_RECORD_FILE, current_commit, make_run_record, write_run_record

_RUN_KEYS = {"dataset_dir", "output_dir", "seed", "bundle_name"}
# the labels of the variants whose table labels dated them by work sessions
_LABELS = {
    "spguided_all_ranked": "SP-guided, HQ voxels ranked too, one refinement gate 0.8 (the paper's ranking; earlier "
    "defaults)",
    "coteaching_all_ranked": "Co-teaching, HQ voxels ranked too (the paper; earlier default)",
    "spguided_gate08": "SP-guided, one refinement gate 0.8 for both classes (earlier default)",
}


def _family(key: str) -> str:
    if key in ("h_sup", "hl_sup", "clean"):
        return "baseline"
    if key.startswith(("alc", "mean_teacher", "mtcl")):
        return "mean_teacher"
    if key.startswith(("coteaching", "spguided", "jocor", "trinet")):
        return "coteaching"
    return "jcas" if key.startswith("jcas") else ""


def spec_of(key: str) -> MethodSpec:
    configs, overrides = METHODS[key]
    families = tuple(s.family for s in SETTINGS.values() if key in s.methods)
    return MethodSpec(key, _LABELS.get(key, METHOD_LABELS[key]), _family(key), tuple(configs), dict(overrides),
                      tuple(DIFF_TO.get(key, [])), AUDIT_SOURCES.get(key), tuple(dict.fromkeys(families)))


def _command_parts(command: list[str]) -> tuple[list[str], dict[str, str]]:
    configs = json.loads(command[command.index("--config_file") + 1])
    tail = command[command.index("--config_file") + 2:]
    options = {tail[i][2:]: tail[i + 1] for i in range(0, len(tail) - 1, 2) if tail[i].startswith("--")}
    return configs, options


def migrate(archive: Path, commit: str) -> int:
    renamed = {}  # (setting, method) -> the renaming notes of the timing records that trained it
    timing = json.loads((archive / "benchmark_timing.json").read_text())
    for record in timing:
        for key in [k for k in record if k.startswith("renamed")]:
            for run in record.get("runs") or []:
                renamed.setdefault((run["setting"], run["method"]), []).append(record[key])
    written = 0
    for run_dir in sorted(p for p in archive.glob("*/*_s*") if (p / "eval" / "metrics_summary.json").is_file()):
        if (run_dir / RUN_RECORD_FILE).is_file():
            continue
        key, _, seed = run_dir.name.rpartition("_s")
        spec = spec_of(key)
        command = json.loads((run_dir / "training_command.json").read_text())["command"]
        configs, options = _command_parts(command)
        profile = [c for c in configs if c not in spec.configs]
        extra = {k: v for k, v in options.items() if k not in _RUN_KEYS and k not in spec.overrides}
        note = (f"migrated: configs and overrides are this variant's entry in the method tables of commit {commit}, "
                "which reproduces the run on that commit's code; the command it ran is training_command.json")
        bundle = options.get("bundle_name")
        if bundle and bundle != key:
            note += f"; it ran as {bundle} and its folder was renamed"
            extra = {}  # the overrides of its old name are part of the variant's entry
        for text in dict.fromkeys(renamed.get((run_dir.parent.name, key), [])):
            note += f"; timing record: {text}"
        write_run_record(run_dir, make_run_record(spec, run_dir.parent.name, int(seed), profile, extra, commit, note))
        written += 1
    return written


if __name__ == "__main__":
    commit = current_commit().removesuffix("-dirty")  # the configs the records name are committed
    for folder in sys.argv[1:]:
        print(folder, migrate(Path(folder), commit), "records written")
