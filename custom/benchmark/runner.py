"""Running one benchmark run: its child processes, its dataset, its reuse across settings, training, evaluation and
the label audit.

A run ``<work_dir>/<setting>/<key>_s<seed>/`` is trained and evaluated by ``monai.bundle run`` children with the
method's configs, the profile's overlays and the overrides (:func:`run_one`); it writes its own record first
(``run_record.json``, :mod:`custom.benchmark.run_record`). A run whose ``eval/metrics_summary.json`` exists is
finished and is not repeated. A setting's dataset is made by ``scripts/prepare_la.py`` (:func:`prepare_setting`).

After evaluation, a run of a method with a label audit (:attr:`~custom.benchmark.registry.MethodSpec.audit_source`)
is audited on its LQ training cases (``scripts/audit_labels.py`` on the run's bundle and the setting's datalist):
``<run>/audit/`` and ``<run>/audit_ranking.json`` (our score and cleanlab's, :mod:`custom.benchmark.audit_ranking`).
A finished run without ``audit_ranking.json`` is audited when the harness meets it again; a failed audit is logged
and leaves no ranking (the run itself counts as finished).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from custom.benchmark.audit_ranking import AUDIT_RANKING_FILE
from custom.benchmark.registry import METHODS, SETTING_INDEPENDENT_METHODS, SETTINGS, MethodSpec, Setting
from custom.benchmark.results import audit_ranking_figures, label_quality, refinement_volume_dice
from custom.benchmark.run_archive import IMPORTED_FILE
from custom.benchmark.run_record import RUN_RECORD_FILE, make_run_record, write_run_record
from custom.io import write_json

__all__ = [
    "REUSED_FILE",
    "AUDIT_DIR",
    "log",
    "run_child",
    "terminate_children",
    "dataset_folder_name",
    "prepare_setting",
    "reusable_run",
    "copy_reused_run",
    "method_spec",
    "audit_run",
    "run_one",
    "read_run",
    "read_json",
]


def log(msg: str) -> None:
    """One progress line of the benchmark, with the time."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def method_spec(method: str | MethodSpec) -> MethodSpec:
    """``method`` itself, or the protocol's spec of that key.

    Raises:
        ValueError: for a key that is not one of the protocol's methods.
    """
    if isinstance(method, MethodSpec):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return METHODS[method]


REUSED_FILE = "reused_from.json"

# the checkout whose configs and scripts the children run (their paths are relative to it), the same one whose
# commit the run records name (run_record.current_commit), whatever the caller's working directory
CHECKOUT = Path(__file__).resolve().parents[2]

# child processes of the runs in progress, so that an interrupted benchmark can stop them
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def run_child(cmd: Sequence[str], env: Mapping[str, str] | None = None, stdout: IO[str] | None = None) -> int:
    """Run ``cmd`` to completion (output to ``stdout``, stderr merged into it when given); returns its exit code."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=CHECKOUT,
        env=None if env is None else dict(env),
        stdout=stdout,
        stderr=None if stdout is None else subprocess.STDOUT,
    )
    with _CHILDREN_LOCK:
        _CHILDREN.add(proc)
    try:
        return proc.wait()
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)


def terminate_children(timeout: float = 20.0) -> None:
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def dataset_folder_name(setting_name: str, seed: int, downsample: int, prepare_args: Sequence[str] = ()) -> str:
    """``<setting>_seed<seed>_ds<K>``, plus a short digest of the extra preparation arguments when there are any
    (so that datasets of different case lists never share a folder)."""
    name = f"{setting_name}_seed{seed}_ds{downsample}"
    if prepare_args:
        name += "_" + hashlib.sha1(json.dumps(list(prepare_args)).encode()).hexdigest()[:8]
    return name


def prepare_setting(
    setting: Setting,
    h5_dir: str,
    data_root: Path,
    seed: int,
    downsample: int,
    env: Mapping[str, str] | None = None,
    prepare_args: Sequence[str] = (),
) -> Path:
    """Prepare (once) the dataset of a setting; returns its folder.

    Args:
        prepare_args: more ``scripts/prepare_la.py`` arguments for every setting (the protocol's case lists,
            :data:`PROTOCOL_PREPARE_ARGS`).

    Raises:
        RuntimeError: when ``scripts/prepare_la.py`` fails.
    """
    out = data_root / dataset_folder_name(setting.name, seed, downsample, prepare_args)
    if (out / "datalist.json").is_file():
        return out
    cmd = [
        sys.executable,
        "scripts/prepare_la.py",
        "--h5-dir",
        h5_dir,
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--downsample",
        str(downsample),
        *setting.prepare_args,
        *prepare_args,
    ]
    log(" ".join(cmd))
    code = run_child(cmd, env)
    if code != 0:
        raise RuntimeError(f"{setting.name}: dataset preparation failed (exit {code}): {' '.join(cmd)}")
    return out


def _hq_fraction(setting: Setting) -> str | None:
    args = setting.prepare_args
    return args[args.index("--hq-fraction") + 1] if "--hq-fraction" in args else None


def reusable_run(work: Path, setting: Setting, method: str, seed: int) -> Path | None:
    """A finished run of ``method`` and ``seed`` in another setting that this setting's run would repeat bit for bit
    (a :data:`SETTING_INDEPENDENT_METHODS` method and the same HQ fraction, hence the same split and HQ labels),
    or None. H-Sup seed 0 and clean seeds 0-2 were trained under both primary settings: identical weights (H-Sup)
    and per-case metrics (both)."""
    if method not in SETTING_INDEPENDENT_METHODS:
        return None
    for other in SETTINGS.values():
        if other.name == setting.name or _hq_fraction(other) != _hq_fraction(setting):
            continue
        candidate = work / other.name / f"{method}_s{seed}"
        if (candidate / "eval" / "metrics_summary.json").is_file() and not (candidate / REUSED_FILE).is_file():
            return candidate
    return None


def copy_reused_run(source: Path, target: Path, work: Path) -> None:
    """Copy a finished run folder and record where it came from (``reused_from.json``)."""
    shutil.copytree(source, target)
    record = read_json(target / RUN_RECORD_FILE)
    if isinstance(record, dict):  # the copy stands for this setting's run
        write_json({**record, "setting": target.parent.name}, target / RUN_RECORD_FILE)
    record = {"reused_from": str(source.relative_to(work)), "why": "setting-independent method"}
    write_json(record, target / REUSED_FILE)


def _cli_value(value: Any) -> str:
    """An override as ``monai.bundle run`` reads it back: its argument parser (python-fire) evaluates Python
    literals, so booleans and None go as ``True``/``False``/``None`` (JSON's ``false`` would arrive as a string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return repr(value)
    return json.dumps(value)


def _bundle_cmd(run_id: str, configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(list(configs))]
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


AUDIT_DIR = "audit"


def _dataset_of(run_dir: Path) -> Path | None:
    """The ``--dataset_dir`` a finished run was trained with (from ``training_command.json``), or None."""
    command = (read_json(run_dir / "training_command.json") or {}).get("command") or []
    return Path(command[command.index("--dataset_dir") + 1]) if "--dataset_dir" in command[:-1] else None


def audit_run(
    method: str | MethodSpec,
    dataset_dir: Path | None,
    run_dir: Path,
    extra: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
) -> bool:
    """Audit a finished run of a method with an audit source once (no-op when ``audit_ranking.json`` exists or the
    method has no audit); returns whether the ranking exists afterwards. A failure is logged, not raised.

    Args:
        method: the run's method (a protocol key or its spec).
        dataset_dir: the run's dataset (None: the one of its ``training_command.json``).
    """
    source = method_spec(method).audit_source
    if source is None or (run_dir / AUDIT_RANKING_FILE).is_file():
        return (run_dir / AUDIT_RANKING_FILE).is_file()
    dataset_dir = dataset_dir or _dataset_of(run_dir)
    if dataset_dir is None or not (dataset_dir / "datalist.json").is_file():
        log(f"{run_dir}: no audit (the run's dataset is unknown)")
        return False
    shutil.rmtree(run_dir / AUDIT_DIR, ignore_errors=True)  # an audit cut short earlier
    cmd = [
        sys.executable, "scripts/audit_labels.py", "--bundle", str(run_dir), "--datalist",
        str(dataset_dir / "datalist.json"), "--output_dir", str(run_dir / AUDIT_DIR), "--source",
        source, "--ranking", str(run_dir / AUDIT_RANKING_FILE),
    ]
    if (extra or {}).get("device"):
        cmd += ["--device", str(extra["device"])]
    log_path = log_file or run_dir / "benchmark.log"
    with open(log_path, "a") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        code = run_child(cmd, env, stdout=out)
    if code != 0:
        log(f"{run_dir}: the label audit failed (exit {code}); see {log_path}")
    return (run_dir / AUDIT_RANKING_FILE).is_file()


def run_one(
    method: str | MethodSpec,
    dataset_dir: Path,
    run_dir: Path,
    profile: Sequence[str],
    seed: int,
    extra: Mapping[str, Any] | None = None,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    audit: bool = True,
    setting: str | None = None,
) -> dict[str, Any]:
    """Train + evaluate one method (skipped when its evaluation summary already exists), then audit it when
    ``audit`` is True and the method has an audit (:func:`audit_run`).

    Before training, the run's record (``run_record.json``: the method's spec, ``profile``, ``seed``, ``extra``, the
    commit) is written into ``run_dir``. The commands run with environment ``env`` (default: this process's) and log
    to ``log_file`` (default ``<run_dir>/benchmark.log``).

    Args:
        method: a protocol key or any :class:`MethodSpec` (a variant runs with no entry in the registry).
        setting: the setting's name for the record (default: the name of ``run_dir``'s parent).

    Raises:
        ValueError: for an unknown method key.
        RuntimeError: when training or evaluation exits with an error.
    """
    spec = method_spec(method)
    summary = run_dir / "eval" / "metrics_summary.json"
    if not summary.is_file():
        params = {
            "dataset_dir": str(dataset_dir),
            "output_dir": str(run_dir),
            "seed": seed,
            "bundle_name": spec.key,
            **spec.overrides,
            **(extra or {}),
        }
        all_configs = [*spec.configs, *profile]
        run_dir.mkdir(parents=True, exist_ok=True)
        record = make_run_record(spec, setting or run_dir.parent.name, seed, profile, extra)
        write_run_record(run_dir, record)
        log_path = log_file or run_dir / "benchmark.log"
        with open(log_path, "a") as out:
            for run_id in ("training", "evaluating"):
                cmd = _bundle_cmd(run_id, all_configs, params)
                out.write(" ".join(cmd) + "\n")
                out.flush()
                start = time.perf_counter()
                code = run_child(cmd, env, stdout=out)
                if code != 0:
                    raise RuntimeError(f"{spec.key}: `{run_id}` failed (exit {code}); see {log_path}")
                write_json({"seconds": time.perf_counter() - start, "command": cmd}, run_dir / f"{run_id}_command.json")
    if audit and not (run_dir / IMPORTED_FILE).is_file():  # an imported run has no checkpoint to audit
        audit_run(spec, dataset_dir, run_dir, extra, env, log_file)
    return read_run(spec.key, run_dir)


def read_run(method: str, run_dir: Path) -> dict[str, Any]:
    """One results row from a finished run folder."""
    summary = json.loads((run_dir / "eval" / "metrics_summary.json").read_text())
    row: dict[str, Any] = {"method": method}
    for metric in ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
        entry = summary.get(f"{metric}_mean", {})
        row[f"{metric}_mean"] = entry.get("mean")
        row[f"{metric}_std"] = entry.get("std")
    stats_path = run_dir / "run_stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        row["sec_per_iter"] = stats.get("seconds_per_iteration_median")
        row["iterations"] = stats.get("iterations")
        row["peak_rss_mb"] = stats.get("peak_rss_mb")
    quality = label_quality(run_dir)
    row.update({k: quality[k] for k in ("noisy_label_dice", "refined_label_dice") if k in quality})
    row.update(refinement_volume_dice(run_dir))  # SP-guided: LQ volumes' Dice before/after the latest round
    row.update(audit_ranking_figures(run_dir))  # the label audit's ranking figures, ours and cleanlab's
    for run_id in ("training", "evaluating"):
        cmd_path = run_dir / f"{run_id}_command.json"
        if cmd_path.is_file():
            row[f"{run_id}_seconds"] = round(json.loads(cmd_path.read_text())["seconds"], 1)
    return row


def read_json(path: Path) -> Any:
    """The JSON document at ``path``, or None when it is missing or unreadable (a run's progress file, mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
