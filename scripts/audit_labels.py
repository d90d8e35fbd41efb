"""Label audit from any trained bundle: the refined label of every case as NIfTI (in the label file's geometry) and
``label_audit.csv`` ranking which annotations to re-check first (``custom.refinement.label_audit``).

    python scripts/audit_labels.py --bundle <trained bundle> --images <NIfTI folder> --labels <NIfTI folder> \
        --output_dir <dir> [--clean_labels <NIfTI folder>] [--source auto|alc|spguided|disagreement] [--device cpu]
    python scripts/audit_labels.py --bundle <trained bundle> --datalist <datalist.json> --output_dir <dir> \
        [--include_hq] [--ranking <audit_ranking.json>]

The bundle is read as it was written by training (``custom.bundle``): ``configs/inference.json``
gives the network, the preprocessing and the sliding-window inferer; ``models/model.pt`` the weights. Images and
labels pair by file name (``case.nii.gz`` in both folders; the case id is the name without ``.nii.gz``);
images without a label are skipped and counted on stderr (a prepared data set has noisy labels for its LQ cases
only). A datalist audits its ``training`` LQ cases (``--include_hq``: all of them) and knows the clean labels of
simulated noise.

Sources (``--source auto`` takes the first that the bundle has):

- ``alc``: ``models/extra/teacher.pt`` (ALC, MTCL, mean teacher): the teacher's fused prediction over
  ``--num_samples`` perturbations (input noise + MC dropout); score = its uncertainty (``teacher_uncertainty``).
- ``spguided``: ``refined_labels/round_<r>/`` in the bundle (an SP-guided run folder): the latest refined labels;
  score = fraction of voxels changed (``changed_fraction``).
- ``disagreement``: any bundle: the network's prediction is the refined label; score = ``1 - Dice(prediction,
  noisy label)`` (``prediction_disagreement``).

The probabilities are computed on the preprocessed grid and mapped back to the image file's grid by inverting the
bundle's preprocessing (as the bundle's own postprocessing does); the image and its label must share that grid.
``--ranking`` (needs clean labels and cleanlab, the ``test`` extra) also writes the ranking figures of
:mod:`custom.benchmark.audit_ranking`: AUC, top-k precision and Spearman of our score and of cleanlab's
label-quality score computed from the same probabilities.

Progress: one line per case on stderr. Errors end with one line ``noisyseg: error: <file or --option>: <problem>``
and exit status 1; the output folder (which must not exist or be empty) is then removed, so nothing half-written
stays behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SOURCES = ("auto", "alc", "spguided", "disagreement")
SCORE_NAMES = {"alc": "teacher_uncertainty", "spguided": "changed_fraction", "disagreement": "prediction_disagreement"}
TEACHER_FILE = "models/extra/teacher.pt"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="trained bundle folder (configs/inference.json, models/)")
    parser.add_argument("--images", help="folder of NIfTI images")
    parser.add_argument("--labels", help="folder of NIfTI labels to audit (same file names as the images; images "
                        "without one are skipped)")
    parser.add_argument("--clean_labels", help="folder of reference labels (evaluation only, same names)")
    parser.add_argument("--datalist", help="datalist JSON instead of --images/--labels (its training cases)")
    parser.add_argument("--include_hq", action="store_true", help="datalist: audit the HQ cases too")
    parser.add_argument("--output_dir", required=True, help="where to write labels/ and label_audit.csv")
    parser.add_argument("--source", choices=SOURCES, default="auto")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--num_samples", type=int, default=8, help="alc: perturbations per case")
    parser.add_argument("--noise_std", type=float, default=0.1, help="alc: input noise std")
    parser.add_argument("--noise_clip", type=float, default=0.2, help="alc: input noise clip")
    parser.add_argument("--seed", type=int, default=0, help="alc: seed of the perturbations")
    parser.add_argument("--ranking", help="also write the ranking figures (ours vs cleanlab) to this JSON file")
    return parser.parse_args(argv)


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: str, option: str) -> dict[str, Path]:
    from custom.errors import OptionError

    root = Path(folder)
    if not root.is_dir():
        raise OptionError(option, f"{root}: no such folder")
    files = {_case_id(p): p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)}
    if not files:
        raise OptionError(option, f"{root}: no NIfTI file (.nii / .nii.gz) in the folder")
    return files


def folder_items(
    images: str, labels: str, clean_labels: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Audit items from image / label folders paired by file name, and the images that have no label.

    A prepared data set keeps every image in one folder and the noisy labels of the LQ cases only in another: the
    images without a label are skipped (and reported by the caller), not an error.

    Returns:
        ``(items, skipped)``: one item per image that has a label, and the file names of the images without one.

    Raises:
        custom.errors.OptionError: a missing or empty folder, no image with a label, or an audited image without a
            clean label when ``clean_labels`` is given.
    """
    from custom.errors import OptionError

    image_files = _nifti_files(images, "images")
    label_files = _nifti_files(labels, "labels")
    clean_files = _nifti_files(clean_labels, "clean_labels") if clean_labels else {}
    items, skipped = [], []
    for case_id, image in image_files.items():
        if case_id not in label_files:
            skipped.append(image.name)
            continue
        item = {"case_id": case_id, "image": str(image), "label": str(label_files[case_id])}
        if clean_labels:
            if case_id not in clean_files:
                raise OptionError("clean_labels", f"{clean_labels}: no clean label for {image.name}")
            item["label_clean"] = str(clean_files[case_id])
        items.append(item)
    if not items:
        raise OptionError("labels", f"{labels}: no label for any image of {images} (labels pair with images by file "
                                    f"name, e.g. {next(iter(image_files.values())).name})")
    return items, skipped


def _skipped_message(num_items: int, skipped: Sequence[str], labels: str) -> str:
    """One line: how many images are audited, and which were skipped for lack of a label (the first few named)."""
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return (f"auditing {num_items} of {num_items + len(skipped)} images; {len(skipped)} skipped: no label in "
            f"{labels} ({shown})")


def datalist_items(datalist: str, include_hq: bool = False) -> list[dict[str, Any]]:
    """The training cases of a datalist to audit (LQ only unless ``include_hq``), with absolute paths.

    Raises:
        custom.io.DataError: unreadable datalist or missing files; ValueError: no case to audit.
    """
    from custom.data.datalist import load_datalist

    items = [i for i in load_datalist(datalist, "training") if include_hq or i.get("quality") != "hq"]
    if not items:
        raise ValueError(f"{datalist}: no {'training' if include_hq else 'LQ training'} case to audit")
    return items


def load_bundle(bundle: str | Path, device: str | None) -> dict[str, Any]:
    """The network (weights of ``models/model.pt``), preprocessing, inferer and device of a trained bundle.

    Raises:
        custom.errors.OptionError: when ``bundle`` has no ``configs/inference.json`` or no ``models/model.pt``.
    """
    from monai.bundle import ConfigParser

    from custom.errors import OptionError
    from custom.init_from import load_weights

    root = Path(bundle).resolve()
    for needed in ("configs/inference.json", "models/model.pt"):
        if not (root / needed).is_file():
            raise OptionError("bundle", f"{root}: no {needed} (a trained bundle holds it; train first)")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    if device:
        parser["device"] = f"$torch.device({device!r})"
    device_obj = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network_def").to(device_obj)
    load_weights(network, root / "models" / "model.pt")  # checked: names the file and what it holds
    return {
        "root": root,
        "device": device_obj,
        "network": network,
        "new_network": lambda: parser.get_parsed_content("network_def", instantiate=True, lazy=False),
        "preprocessing": parser.get_parsed_content("preprocessing"),
        "inferer": parser.get_parsed_content("inferer"),
    }


def choose_source(source: str, bundle_root: Path) -> str:
    """``auto`` -> ``alc`` with a teacher, ``spguided`` with refined labels, else ``disagreement``.

    Raises:
        custom.errors.OptionError: an explicit source whose files the bundle lacks.
    """
    from custom.errors import OptionError
    from custom.refinement.label_audit import latest_refined_labels

    has_teacher = (bundle_root / TEACHER_FILE).is_file()
    has_refined = bool(latest_refined_labels(bundle_root))
    if source == "auto":
        return "alc" if has_teacher else "spguided" if has_refined else "disagreement"
    if source == "alc" and not has_teacher:
        raise OptionError("source", f"alc needs {bundle_root / TEACHER_FILE} (a run with an EMA teacher)")
    if source == "spguided" and not has_refined:
        raise OptionError("source", f"spguided needs {bundle_root}/refined_labels/round_<r>/ (an SP-guided run)")
    return source


def _to_source_grid(probabilities: Any, image: Any, preprocessing: Any) -> Any:
    """Probabilities ``(C, *S)`` on the preprocessed grid -> the image file's grid (the bundle's Invertd)."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    data = {"image": image, "pred": MetaTensor(probabilities.detach().float().cpu())}
    inverted = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
    return inverted.detach().cpu().numpy() if hasattr(inverted, "detach") else inverted


def audit_case(item: Mapping[str, Any], bundle: Mapping[str, Any], source: str, teacher: Any = None,
               refined_files: Mapping[str, Path] | None = None, generator: Any = None,
               options: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """One case: ``(AuditCase, probabilities (C, H, W, D) on the label file's grid)``.

    Raises:
        custom.io.DataError: a label whose shape differs from the image's (after mapping back to its grid).
    """
    import numpy as np
    import torch

    from custom.io import DataError, load_nifti
    from custom.noise.quality import foreground_dice
    from custom.refinement.label_audit import AuditCase, SlidingWindowPredictor
    from custom.refinement.teacher_fusion import alc_refine

    options = dict(options or {})
    data = bundle["preprocessing"]({"image": str(item["image"])})
    image = data["image"]
    batch = torch.as_tensor(image).as_subclass(torch.Tensor).unsqueeze(0).to(bundle["device"])
    score = None
    if source == "alc":
        predictor = SlidingWindowPredictor(teacher, bundle["inferer"]).to(bundle["device"])
        result = alc_refine(
            predictor, batch, num_samples=int(options.get("num_samples", 8)),
            noise_std=float(options.get("noise_std", 0.1)), noise_clip=float(options.get("noise_clip", 0.2)),
            mc_chunk=1, generator=generator,
        )
        probabilities = result.fused_probs[0]
        score = float(result.uncertainty[0])
    else:
        network = bundle["network"].eval()
        with torch.no_grad():
            logits = SlidingWindowPredictor(network, bundle["inferer"])(batch)
        probabilities = torch.softmax(logits.float(), dim=1)[0]
    probabilities = np.asarray(_to_source_grid(probabilities, image, bundle["preprocessing"]), dtype=np.float32)
    noisy, affine, header = load_nifti(item["label"])
    noisy = np.rint(noisy).astype(np.int64)
    if probabilities.shape[1:] != noisy.shape:
        raise DataError(item["label"], f"label shape {noisy.shape} differs from the image's {probabilities.shape[1:]} "
                                       f"({item['image']}); the image and its label must share one grid")
    case_id = str(item.get("case_id") or _case_id(Path(item["image"])))
    refined = probabilities.argmax(axis=0).astype(np.int64)
    if source == "spguided":
        if case_id in (refined_files or {}):
            refined = np.rint(load_nifti(refined_files[case_id])[0]).astype(np.int64)
            if refined.shape != noisy.shape:
                raise DataError(refined_files[case_id], f"shape {refined.shape} differs from the noisy label's "
                                                        f"{noisy.shape}")
        else:
            refined = noisy  # never refined: listed with its noisy label (score 0)
        score = float(np.mean(refined != noisy))
    elif source == "disagreement":
        score = 1.0 - foreground_dice(refined, noisy, probabilities.shape[0])
    case = AuditCase(case_id, refined, affine, header, score, str(item["label"]), item.get("label_clean"))
    return case, probabilities


def ranking_record(case: Any, probabilities: Any) -> dict[str, Any]:
    """One case of ``audit_ranking.json``: corrupted flag and noisy Dice from the clean label, our score and
    cleanlab's suspicion score from the same probabilities."""
    import numpy as np

    from custom.benchmark.audit_ranking import cleanlab_suspicion, is_corrupted
    from custom.io import load_nifti
    from custom.noise.quality import foreground_dice

    noisy = np.rint(load_nifti(case.noisy_label)[0]).astype(np.int64)
    clean = np.rint(load_nifti(case.clean_label)[0]).astype(np.int64)
    return {
        "case_id": case.case_id,
        "corrupted": is_corrupted(noisy, clean),
        "noisy_dice": foreground_dice(noisy, clean, probabilities.shape[0]),
        "scores": {"audit": float(case.score), "cleanlab": cleanlab_suspicion(probabilities, noisy)},
    }


def _check_output(output_dir: Path) -> None:
    """``output_dir`` must not exist or be an empty folder (nothing of an earlier audit is overwritten)."""
    from custom.errors import OptionError

    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise OptionError("output_dir", f"{output_dir}: exists and is not an empty folder; choose another one")


def audit(args: argparse.Namespace) -> Path:
    """Run the audit of ``args`` (see :func:`parse_args`); returns the CSV path."""
    import torch

    from custom.errors import OptionError
    from custom.init_from import load_weights
    from custom.io import write_json
    from custom.refinement.label_audit import latest_refined_labels, write_label_audit

    if bool(args.datalist) == bool(args.images or args.labels):
        raise OptionError("datalist", "give either --datalist or both --images and --labels")
    if not args.datalist and not (args.images and args.labels):
        raise OptionError("labels" if args.images else "images", "--images and --labels go together")
    if args.num_samples < 1:
        raise OptionError("num_samples", f"must be an integer >= 1, got {args.num_samples}")
    output_dir = Path(args.output_dir).resolve()
    _check_output(output_dir)
    if args.datalist:
        items = datalist_items(args.datalist, args.include_hq)
    else:
        items, skipped = folder_items(args.images, args.labels, args.clean_labels)
        if skipped:
            print(_skipped_message(len(items), skipped, args.labels), file=sys.stderr, flush=True)
    if args.ranking and not all(i.get("label_clean") for i in items):
        raise OptionError("ranking", "needs the clean labels of every case (--clean_labels or a datalist with "
                                     "label_clean)")
    if args.ranking:
        from custom.benchmark.audit_ranking import _import_cleanlab_rank

        _import_cleanlab_rank()  # fail before any work when cleanlab is missing
    bundle = load_bundle(args.bundle, args.device)
    source = choose_source(args.source, bundle["root"])
    teacher = generator = None
    if source == "alc":
        teacher = bundle["new_network"]().to(bundle["device"])
        load_weights(teacher, bundle["root"] / TEACHER_FILE)
        torch.manual_seed(int(args.seed))
        generator = torch.Generator(device=bundle["device"]).manual_seed(int(args.seed))
    refined_files = latest_refined_labels(bundle["root"]) if source == "spguided" else {}
    options = {"num_samples": args.num_samples, "noise_std": args.noise_std, "noise_clip": args.noise_clip}

    ranking_path = Path(args.ranking).resolve() if args.ranking else None
    _check_output(output_dir)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        cases, records = [], []
        for index, item in enumerate(items, start=1):
            start = time.perf_counter()
            case, probabilities = audit_case(item, bundle, source, teacher, refined_files, generator, options)
            if ranking_path is not None:
                records.append(ranking_record(case, probabilities))
            cases.append(case)
            print(f"[{index}/{len(items)}] {case.case_id}: {SCORE_NAMES[source]}={case.score:.4f} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        csv_path = write_label_audit(cases, output_dir, SCORE_NAMES[source], int(probabilities.shape[0]))
        if ranking_path is not None:
            from custom.benchmark.audit_ranking import audit_ranking

            write_json(audit_ranking(records, SCORE_NAMES[source]), ranking_path)
    except BaseException:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        else:
            for child in output_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    from custom.errors import PREFIX

    args = parse_args(argv)
    try:
        csv_path = audit(args)
    except (FileNotFoundError, ImportError, ValueError) as exc:  # DataError / OptionError are ValueErrors
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 1
    print(f"label audit: {csv_path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
