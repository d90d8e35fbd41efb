"""Turning a labelled dataset into the noisy-label training set: splits, simulated noise, datalist.

Shared logic of ``scripts/prepare_la.py`` (LA HDF5 release), ``scripts/prepare_nifti.py`` (MSD NIfTI layout)
and the synthetic demo set. The output folder holds::

    imagesTr/  labelsTr/ (clean)  labelsTr_noisy/ (LQ cases)  imagesTs/  labelsTs/
    datalist.json  noise_report.csv

Order of work per training case: load, check, simulate noise at native resolution (LQ cases; sizes in mm are
converted with the native spacing), then downsample image and labels by ``K`` (image: mean over K x K x K blocks;
labels: majority vote over the same blocks, ties going to the higher class index, i.e. a binary block is
foreground when at least half of it is; :mod:`custom.transforms.resampling`). Trailing voxels that do not fill a
whole block are cropped.

A noisy label that lost a class of its clean label (compared at the stored resolution, after pooling) is handled
by ``on_empty`` (``--on-empty``): ``redraw`` (default; another draw of the same simulator, seeded by
``(seed, case, attempt)``, at most ``max_attempts`` draws, then an error), ``keep`` (kept and counted) or
``error``. ``noise_report.csv`` (:mod:`custom.data.noise_report`) has one row per training case.

Everything is written into a staged folder renamed into place at the end (:mod:`custom.data.staging`), so a failed
or interrupted run leaves nothing half-written. NIfTI files are gzip-compressed with a zero timestamp and no file
name in the header (nibabel's deterministic writer), so two runs with the same seed give byte-identical files.

The modules around it: :mod:`custom.data.splits` (which case is test, validation, HQ or LQ),
:mod:`custom.data.sources` (LA HDF5 and NIfTI discovery), :mod:`custom.data.prepare_cli` (the two scripts).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.data.case_checks import check_case_arrays
from custom.data.datalist import relative_path
from custom.data.la_tasks import DEFAULT_BAND_MM, task_labels, task_params
from custom.data.noise_report import (
    CHECK_COLUMNS,
    NO_CHECK,
    REPORT_COLUMNS,
    dice_columns,
    json_ready,
    noise_check_summary,
    progress_text,
    report_row,
    summary_lines,
)
from custom.data.sources import CaseSource, check_label_values, infer_num_classes, la_sources, nifti_sources, with_task
from custom.data.splits import assign_splits, check_split_options
from custom.data.staging import apply_umask, resolve_output, staged_directory
from custom.io import DataError, save_nifti, write_csv, write_json
from custom.noise import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_ON_EMPTY,
    NOISE_NAMES,
    LostClassError,
    applied_sizes,
    check_on_empty,
    class_dice,
    foreground_dice,
    noise_parameters,
    select_corrupted_cases,
    simulate_checked,
)
from custom.transforms.resampling import downsample_affine, downsample_image, downsample_label, voxel_spacing

__all__ = ["check_noise", "prepare_dataset", "prepare_la", "prepare_nifti"]


def check_noise(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`DataError` unless ``name`` is a known noise simulator that accepts the parameter names in
    ``params`` (checked before any work is done; values are checked by the simulator)."""
    if name not in NOISE_NAMES:
        raise DataError(None, f"unknown noise {name!r}; choose one of {sorted(NOISE_NAMES)}")
    accepted = noise_parameters(name)
    unknown = sorted(set(params or {}) - set(accepted))
    if unknown:
        raise DataError(None, f"noise {name!r} does not take parameter(s) {unknown}; it accepts {sorted(accepted)}")


def _check_case_ids(sources: Sequence[CaseSource]) -> None:
    for source in sources:
        # the ID becomes a file name in the output
        if not source.case_id or source.case_id.startswith(".") or any(c in source.case_id for c in "/\\\0"):
            raise DataError(source.image_origin, f"case ID {source.case_id!r} is not usable as a file name")
    all_ids = [s.case_id for s in sources]
    duplicates = sorted({i for i in all_ids if all_ids.count(i) > 1})
    if duplicates:
        raise DataError(None, f"case IDs appear more than once: {duplicates}")


def _simulate_case(
    source: CaseSource,
    clean: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    noise: str,
    noise_params: Mapping[str, Any],
    seed: int,
    on_empty: str,
    max_attempts: int,
    downsample: int,
    num_classes: int,
    class_names: Mapping[int, str],
    say: Callable[[str], None],
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """The kept noisy draw of one LQ case at native resolution ``(H, W, D)``, its JSON-ready parameters and its
    lost-class check (see :data:`custom.data.noise_report.NO_CHECK` for the keys)."""
    case_id = source.case_id
    try:
        checked = simulate_checked(
            noise,
            clean,
            seed=seed,
            case_id=case_id,
            on_empty=on_empty,
            max_attempts=max_attempts,
            # the label that is kept is the pooled one: a class must survive the pooling too
            view=lambda array: downsample_label(array, downsample, num_classes),
            class_names=class_names,
            num_classes=num_classes,
            spacing=spacing,
            **noise_params,
        )
    except LostClassError as exc:
        raise DataError(source.label_origin, f"{exc} (--on-empty {on_empty})") from exc
    except (TypeError, ValueError) as exc:
        raise DataError(source.label_origin, f"noise {noise!r} failed: {exc}") from exc
    result = checked.result
    noisy = check_label_values(result.noisy, num_classes, f"{source.label_origin} ({noise} noise)")
    size_mm, size_voxels = applied_sizes(result.params, spacing)
    check = {
        "lost": checked.lost,
        "attempts": checked.attempts,
        "rejected": json_ready(checked.rejected),
        "size_mm": json_ready(size_mm),
        "size_voxels": json_ready(size_voxels),
    }
    if checked.lost:
        names = ", ".join(class_names.get(c, str(c)) for c in checked.lost)
        say(f"warning: {case_id}: the noisy label lost {names} (kept: --on-empty keep)")
    return noisy, json_ready(dict(result.params)), check


def prepare_dataset(
    train_sources: Sequence[CaseSource],
    test_sources: Sequence[CaseSource],
    out: str | os.PathLike,
    *,
    num_classes: int,
    labels: Mapping[str, str],
    noise: str = "mtcl",
    noise_params: Mapping[str, Any] | None = None,
    alpha: float | None = None,
    hq_fraction: float | None = None,
    hq_count: int | None = None,
    val_count: int = 2,
    test_count: int = 0,
    seed: int = 0,
    downsample: int = 1,
    on_empty: str = DEFAULT_ON_EMPTY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    name: str = "",
    description: str = "",
    extra_meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
    val_sources: Sequence[CaseSource] = (),
) -> Path:
    """Split, corrupt, downsample and write a dataset with its datalist and noise report.

    Args:
        train_sources: the labelled training pool (validation, HQ, LQ and, with ``test_count``, test cases).
        test_sources: dedicated test cases (clean labels); must be empty when ``test_count > 0``.
        val_sources: dedicated validation cases (clean labels), listed after the pool's ``val_count`` ones; the
            pool's split does not depend on them, so adding some leaves the training cases and their labels as
            they are.
        out: output folder, or a ``*.json`` datalist path (see :func:`resolve_output`).
        num_classes: C >= 2; every label must hold values in ``[0, C)``.
        labels: class names, ``{"0": "background", ...}`` with C entries.
        noise: a name from ``custom.noise.NOISE_NAMES``; applied to LQ cases at native resolution.
        noise_params: keyword arguments of the noise simulator.
        alpha: fraction of LQ cases that get corrupted (``select_corrupted_cases``); the others keep their clean
            label but stay LQ. ``None`` corrupts every LQ case.
        hq_fraction, hq_count, val_count, test_count, seed: see :func:`assign_splits`.
        downsample: block size K of the image mean / label majority pooling (1 = native resolution).
        on_empty: what to do with a noisy label that lost a class of the clean label (compared after pooling):
            ``"redraw"`` (draw again, deterministic per ``(seed, case, attempt)``), ``"keep"`` (keep, count and
            report it) or ``"error"`` (stop with a :class:`DataError` naming the case and class).
        max_attempts: draws allowed per case with ``"redraw"`` before the :class:`DataError`.
        name, description, extra_meta: stored in the datalist (which also gets ``noise_check``: the policy and,
            per class, the LQ mean Dice and the numbers of LQ cases that lost the class / were redrawn for it).
        overwrite: replace an existing non-empty output folder.
        log: progress printer (one line per case); ``None`` is silent.

    Returns:
        The datalist path.

    Raises:
        DataError: bad input data (naming the file), an unknown noise name (checked before any work), or a
            noisy label that lost a class when ``on_empty`` forbids it (or every redraw lost one).
        ValueError: bad options.
    """
    check_noise(noise, noise_params)
    check_on_empty(on_empty, max_attempts)
    check_split_options(
        hq_fraction=hq_fraction,
        hq_count=hq_count,
        val_count=val_count,
        test_count=test_count,
        alpha=alpha,
        downsample=downsample,
    )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if sorted(int(k) for k in labels) != list(range(num_classes)):
        raise ValueError(f"labels {dict(labels)} must name the classes 0..{num_classes - 1}")
    if test_sources and test_count:
        raise ValueError("test cases are given already: test_count must be 0")
    # training-pool order first (as listed), then the dedicated validation and test cases
    ordered = [*train_sources, *val_sources, *test_sources]
    _check_case_ids(ordered)
    noise_params = dict(noise_params or {})
    downsample = int(downsample)
    say = log or (lambda message: None)

    splits = assign_splits(
        [s.case_id for s in train_sources],
        seed=seed,
        val_count=val_count,
        test_count=test_count,
        hq_fraction=hq_fraction,
        hq_count=hq_count,
    )
    corrupted = set(splits["lq"] if alpha is None else select_corrupted_cases(splits["lq"], alpha, seed))
    role = {case_id: group for group, members in splits.items() for case_id in members}
    role.update({s.case_id: "test" for s in test_sources})
    role.update({s.case_id: "validation" for s in val_sources})

    data_dir, datalist_path = resolve_output(out)
    if datalist_path.parent != data_dir and datalist_path.exists() and not overwrite:
        raise DataError(datalist_path, "datalist exists; choose another output or overwrite it")

    def final(rel: str) -> str:
        return relative_path(data_dir / rel, datalist_path)

    entries: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    report: list[dict[str, Any]] = []
    class_names = {int(k): str(v) for k, v in labels.items()}
    columns = dice_columns(labels, num_classes)
    spacings: list[tuple[float, float, float]] = []
    simulate = dict(
        noise=noise, noise_params=noise_params, seed=seed, on_empty=on_empty, max_attempts=max_attempts,
        downsample=downsample, num_classes=num_classes, class_names=class_names, say=say,
    )
    with staged_directory(data_dir, overwrite=overwrite) as stage:
        for index, source in enumerate(ordered, start=1):
            case_id, group = source.case_id, role[source.case_id]
            image, clean, affine, header = source.load()
            check_case_arrays(image, clean, affine, source.image_origin, source.label_origin)
            clean = check_label_values(clean, num_classes, source.label_origin)
            noisy, noise_used, params_used, check = None, "none", {}, dict(NO_CHECK)
            if group == "lq":
                noisy = clean
                if case_id in corrupted:
                    noisy, params_used, check = _simulate_case(source, clean, voxel_spacing(affine), **simulate)
                    noise_used = noise

            image = downsample_image(image, downsample)
            clean = downsample_label(clean, downsample, num_classes)
            out_affine = downsample_affine(affine, downsample)
            header = header if downsample == 1 else None  # a pooled volume no longer matches the source header

            test = group == "test"
            image_rel = f"{'imagesTs' if test else 'imagesTr'}/{case_id}.nii.gz"
            clean_rel = f"{'labelsTs' if test else 'labelsTr'}/{case_id}.nii.gz"
            save_nifti(image, out_affine, stage / image_rel, header=header, dtype=np.float32)
            save_nifti(clean, out_affine, stage / clean_rel, header=header, dtype=clean.dtype)
            clean_path = final(clean_rel)
            item = {"case_id": case_id, "image": final(image_rel), "label": clean_path, "label_clean": clean_path}
            status = group
            if group in ("hq", "lq"):
                spacings.append(voxel_spacing(out_affine))
                dice = 1.0
                stored_noisy = clean
                if noisy is not None:
                    noisy = downsample_label(noisy, downsample, num_classes)
                    noisy_rel = f"labelsTr_noisy/{case_id}.nii.gz"
                    save_nifti(noisy, out_affine, stage / noisy_rel, header=header, dtype=noisy.dtype)
                    item["label"] = final(noisy_rel)
                    dice = float(foreground_dice(noisy, clean, num_classes))
                    stored_noisy = noisy
                item.update({"quality": group, "noisy_dice": round(dice, 6)})
                entries["training"].append(item)
                per_class = class_dice(stored_noisy, clean, num_classes)
                report.append(report_row(case_id, group, noise_used, params_used, dice, per_class, columns, check))
                status = progress_text(group, noise_used, params_used, check, dice)
            else:
                entries["validation" if group == "validation" else "test"].append(item)
            say(f"[{index:>3}/{len(ordered)}] {case_id}  {status}")

        lq_dice = [row["noisy_dice"] for row in entries["training"] if row["quality"] == "lq"]
        mean_lq = round(float(np.mean(lq_dice)), 6) if lq_dice else None
        noise_check = noise_check_summary(report, columns, labels, on_empty, max_attempts)
        datalist = {
            "name": name,
            "description": description,
            "labels": {str(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))},
            "num_classes": int(num_classes),
            "spacing": [round(float(s), 6) for s in np.median(np.asarray(spacings), axis=0)],
            "seed": int(seed),
            "downsample": downsample,
            "noise": {"name": noise, "params": json_ready(noise_params), "alpha": alpha},
            "mean_noisy_dice_lq": mean_lq,
            "noise_check": noise_check,
            **json_ready(dict(extra_meta or {})),
            **entries,
        }
        rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in report]
        write_csv(rows, stage / "noise_report.csv", fieldnames=[*REPORT_COLUMNS, *columns, *CHECK_COLUMNS])
        inside = datalist_path.parent == data_dir
        if inside:
            write_json(datalist, stage / datalist_path.name)
    if not inside:
        write_json(datalist, datalist_path)
        apply_umask(datalist_path)
    counts = {k: len(v) for k, v in splits.items()}
    counts["test"] += len(test_sources)
    counts["validation"] += len(val_sources)
    for line in summary_lines(counts, mean_lq, len(lq_dice), noise_check):
        say(line)
    say(f"datalist: {datalist_path}")
    return datalist_path


def _check_output_apart(source_dir: str | os.PathLike, out: str | os.PathLike) -> None:
    # replacing an output folder that holds the input would delete the input
    data_dir = resolve_output(out)[0].resolve()
    source = Path(source_dir).resolve()
    if source == data_dir or data_dir in source.parents:
        raise DataError(out, f"the output must not contain the input folder {source}")


def prepare_la(
    h5_dir: str | os.PathLike,
    out: str | os.PathLike,
    train_lists: Sequence[str] | None = None,
    test_lists: Sequence[str] | None = None,
    task: str = "atrium",
    band_mm: float = DEFAULT_BAND_MM,
    val_lists: Sequence[str] | None = None,
    **options: Any,
) -> Path:
    """Prepare the LA HDF5 release (see :func:`la_sources` for the lists, :func:`prepare_dataset` for
    ``options``); returns the datalist path. ``task`` (:data:`custom.data.la_tasks.LA_TASKS`) is the released
    binary atrium, or ``atrium_band``: 3 classes, the atrium split into core and a ``band_mm`` boundary band."""
    check_noise(options.get("noise", "mtcl"), options.get("noise_params"))
    labels = task_labels(task)
    params = task_params(task, band_mm)
    _check_output_apart(h5_dir, out)
    train, test, val = la_sources(h5_dir, train_lists, test_lists, val_lists)
    if task != "atrium":
        train, test, val = ([with_task(s, task, params) for s in sources] for sources in (train, test, val))
    options["extra_meta"] = {
        **dict(options.get("extra_meta") or {}),
        "train_lists": list(train_lists or ["train.list"]),
        "test_lists": list(test_lists) if test_lists is not None else ["test.list"],
        **({"val_lists": list(val_lists)} if val_lists else {}),
        "task": task,
        **({"task_params": params} if params else {}),
    }
    options.setdefault("name", "la2018_noisy")
    options.setdefault(
        "description", f"Left atrium LGE-MRI (2018 challenge, {Path(h5_dir).name}) with simulated label noise"
    )
    return prepare_dataset(train, test, out, num_classes=len(labels), labels=labels, val_sources=val, **options)


def prepare_nifti(
    root: str | os.PathLike, out: str | os.PathLike, log: Callable[[str], None] | None = print, **options: Any
) -> Path:
    """Prepare an MSD-layout NIfTI dataset (see :func:`prepare_dataset` for ``options``); returns the datalist
    path. Without ``dataset.json`` labels, C is the largest label value + 1 (labels are scanned once first)."""
    check_noise(options.get("noise", "mtcl"), options.get("noise_params"))
    _check_output_apart(root, out)
    train, test, labels = nifti_sources(root, log=log)
    if labels is None:
        num_classes = infer_num_classes([*train, *test])
        labels = {"0": "background", **{str(c): f"class_{c}" for c in range(1, num_classes)}}
    options.setdefault("name", Path(root).resolve().name)
    options.setdefault("description", f"{Path(root).resolve().name} with simulated label noise")
    return prepare_dataset(train, test, out, num_classes=len(labels), labels=labels, log=log, **options)
