"""Dice of a trained mean teacher on LQ training cases with its BatchNorm on running vs batch statistics.

Why this exists: ALC's teacher samples with dropout active; whether its BatchNorm uses the running statistics
(averaged from the student) or the statistics of the batch changes its predictions a lot in short schedules. This
script measures it on a finished run (``models/model.pt`` and ``models/extra/teacher.pt``)::

    python scripts/teacher_batch_norm_check.py --run runs/benchmark/mtcl_hq25/mean_teacher_s0 \\
        --config configs/alc_la.json configs/cpu_la.json --dataset-dir runs/benchmark/data/mtcl_hq25_seed0_ds2

For each case it prints the Dice against the clean label of: the noisy label, the student (eval mode), the teacher
with running statistics (``"running"``) and with batch statistics (``"batch"``), both without dropout, and the
teacher's ALC fused prediction (T perturbations) in each mode. Whole volumes, sliding window with the patch as ROI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder with models/model.pt and models/extra/teacher.pt")
    parser.add_argument("--config", nargs="+", default=["configs/alc_la.json", "configs/cpu_la.json"])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--cases", type=int, default=4, help="number of LQ training cases")
    parser.add_argument("--num-samples", type=int, default=8)
    args = parser.parse_args(argv)

    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference

    from custom.evaluation.metrics import foreground_dice_per_sample
    from custom.refinement import teacher_fusion as tf

    def dice(a: torch.Tensor, b: torch.Tensor) -> float:  # binary foreground masks (*S)
        return float(foreground_dice_per_sample(a[None, None].long(), b[None, None].long(), 2)[0])

    config = ConfigParser()
    config.read_config(args.config)
    config["dataset_dir"] = args.dataset_dir
    items = [i for i in config.get_parsed_content("data::training") if i.get("quality") == "lq"][: args.cases]
    if not items:
        print(f"error: no LQ training cases in {args.dataset_dir}", file=sys.stderr)
        return 2
    load = config.get_parsed_content("transforms::eval")
    student, teacher = config.get_parsed_content("network"), config.get_parsed_content("teacher")
    student.load_state_dict(torch.load(f"{args.run}/models/model.pt", map_location="cpu", weights_only=True))
    teacher_file = Path(args.run) / "models" / "extra" / "teacher.pt"
    if not teacher_file.is_file():
        teacher_file = Path(args.run) / "models" / "teacher.pt"  # a run written before the models/extra/ layout
    teacher.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True))
    student.eval()
    roi = config["patch_size"]

    def segment(predictor) -> torch.Tensor:
        return sliding_window_inference(image, roi, 4, predictor).argmax(1)[0]

    def plain(mode: str):
        def predict(x: torch.Tensor) -> torch.Tensor:
            with tf.teacher_sampling_mode(teacher, batch_norm=mode, dropout=False):
                return teacher(x)
        return predict

    def fused(mode: str):
        def predict(x: torch.Tensor) -> torch.Tensor:
            probs = tf.perturbed_teacher_predictions(teacher, x, num_samples=args.num_samples, batch_norm=mode)
            return tf.fuse_predictions(probs, tf.fusion_weights(tf.kl_to_mean(probs)))
        return predict

    columns = ["noisy", "student", "teacher_running", "teacher_batch", "fused_running", "fused_batch"]
    print("case," + ",".join(columns))
    torch.manual_seed(0)
    totals = dict.fromkeys(columns, 0.0)
    for item in items:
        data = load(item)
        image = data["image"][None]
        clean = data["clean_label"][0] > 0
        with torch.no_grad():
            row = {
                "noisy": dice(data["label"][0] > 0, clean),
                "student": dice(segment(student), clean),
                "teacher_running": dice(segment(plain("running")), clean),
                "teacher_batch": dice(segment(plain("batch")), clean),
                "fused_running": dice(segment(fused("running")), clean),
                "fused_batch": dice(segment(fused("batch")), clean),
            }
        for key in columns:
            totals[key] += row[key] / len(items)
        print(item.get("case_id", item["image"]) + "," + ",".join(f"{row[k]:.3f}" for k in columns), flush=True)
    print("mean," + ",".join(f"{totals[k]:.3f}" for k in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
