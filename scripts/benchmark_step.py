"""Seconds per training iteration of the mean-teacher methods at equal batch and patch, measured in one run.

Example::

    python scripts/benchmark_step.py                        # CPU profile: 64x64x32, base_filters 8, batch 1 HQ + 3 LQ
    python scripts/benchmark_step.py --profile paper        # 112x112x80, base_filters 16, batch 2 HQ + 2 LQ
    python scripts/benchmark_step.py --repeats 7 --threads 2
    python scripts/benchmark_step.py --profile cpu_la --steps mean_teacher mtcl mt_plus_clean_pass \
        --repeats 31 --threads 1                            # configs/cpu_la.json (2 HQ + 2 LQ), MTCL overhead only

Steps timed (each the real trainer's ``_iteration`` on one fixed in-memory batch; the trainers are built directly in
Python, not through configs, so that only the step is measured):

* ``supervised``: MONAI ``SupervisedTrainer`` with ``0.5 * (CE + Dice)`` on the whole batch (HQ + LQ);
* ``mean_teacher``: :class:`MeanTeacherTrainer` with ``refine_labels=False, select_samples=False``
  (student step + one perturbed no-grad teacher pass on the LQ part + EMA);
* ``alc``: :class:`MeanTeacherTrainer` with refinement and selection (``T`` perturbed teacher passes);
* ``mtcl``: :class:`MTCLTrainer` (hard correction: one perturbed and one clean teacher pass + confident learning);
* ``mtcl_consistency_source``: :class:`MTCLTrainer` with ``label_issue_source="consistency"`` (confident learning on
  the perturbed consistency pass: no clean pass);
* ``alc_floor``: ALC's floor, one ``supervised`` step followed by ``T + 1`` bare no-grad teacher forward passes on
  the LQ part (dropout active, same chunking as ALC), i.e. what any implementation of ALC must pay at least;
* ``mt_plus_clean_pass``: one ``mean_teacher`` step followed by one bare no-grad teacher pass on the clean LQ part
  in the layer modes of MTCL's clean pass (dropout active, BatchNorm as ``teacher_batch_norm``), the floor of MTCL
  (it isolates the confident-learning cost from the extra forward pass MTCL needs);
* ``mtcl_correction``: MTCL's correction alone, ``find_label_issues`` + ``correct_labels`` (hard) on the teacher's
  clean probabilities of the LQ part (computed once before timing) and the LQ labels.

The steps are interleaved (round robin, after ``--warmup`` untimed rounds) so that load changes on a shared machine
hit all of them alike; each figure is the median of ``--repeats`` rounds, for wall time and for the CPU time of the
process (``time.process_time``, less sensitive to other jobs on the machine than the wall time). ``--steps`` times a
subset. Printed ratios (those whose steps were timed): ``alc / alc_floor`` (target <= 1.1) and MTCL's whole-step
overhead ``(mtcl - mean_teacher) / mean_teacher``, split into the clean teacher pass
``(mt_plus_clean_pass - mean_teacher) / mean_teacher`` and the correction ``(mtcl - mt_plus_clean_pass) /
mean_teacher`` (confident learning and the flips; target <= 10%), which ``mtcl_correction`` also times alone. The
load average is printed before and after.

Like training (config key ``retain_host_memory``), the script keeps freed host memory in the process before it builds
anything (``custom.host_memory``); ``--default-malloc`` leaves glibc's defaults. The header prints the setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"patch": [64, 64, 32], "base_filters": 8, "batch_hq": 1, "batch_lq": 3},
    "paper": {"patch": [112, 112, 80], "base_filters": 16, "batch_hq": 2, "batch_lq": 2},
    # configs/cpu_la.json: the LA CPU profile's patch, width and 2 HQ + 2 LQ batch (MTCL's own batch composition)
    "cpu_la": {"patch": [48, 48, 32], "base_filters": 8, "batch_hq": 2, "batch_lq": 2},
}
STEPS = ("supervised", "mean_teacher", "alc", "mtcl", "mtcl_consistency_source", "alc_floor", "mt_plus_clean_pass",
         "mtcl_correction")
#: the methods whose step ``--compare-layouts`` times in both memory layouts
LAYOUT_METHODS = ("supervised", "alc", "mtcl", "coteaching", "spguided", "jcas")
DEFAULT_LAYOUT = "channels_last_3d"
JCAS_TOKEN_GRID = [8, 8, 8]  # configs/jcas_la.json


def fixed_batch(patch: list[int], batch_hq: int, batch_lq: int, num_classes: int, device, seed: int = 0) -> dict:
    """One two-stream batch ``[HQ..., LQ...]``: a bright ball (nested shells for ``C > 2``) in noise.

    HQ labels are the true shells; LQ labels are the shells grown by 3 voxels (the dilation noise of MTCL/ALC).
    Returns ``{"image": (B, 1, *patch) float, "label": (B, 1, *patch) long}`` on ``device``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch = batch_hq + batch_lq
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in patch]
    grid = torch.meshgrid(*axes, indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grid))  # (*patch)
    outer = 0.35 * min(patch)
    shells = torch.linspace(outer, 0.5 * outer, num_classes - 1)  # class c inside radius shells[c - 1]

    def labels_for(grow: float) -> torch.Tensor:
        return sum((radius < r + grow).long() for r in shells)

    clean, noisy = labels_for(0.0), labels_for(3.0)
    label = torch.stack([clean] * batch_hq + [noisy] * batch_lq)[:, None]
    noise = torch.randn(batch, 1, *patch, generator=generator)
    image = clean[None, None].float().expand(batch, 1, *patch) + 0.5 * noise
    return {"image": image.contiguous().to(device), "label": label.to(device)}


def build_steps(args: argparse.Namespace, device) -> tuple[dict[str, Callable[[], Any]], dict]:
    """Trainers and the zero-argument callables that run one iteration of each timed step."""
    import torch
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    from custom.engines import MeanTeacherTrainer, MTCLTrainer
    from custom.engines.memory_format import apply_memory_format
    from custom.losses.segmentation_losses import CEDiceLoss
    from custom.networks import PaperVNet
    from custom.refinement.confident_learning import correct_labels, find_label_issues
    from custom.refinement.teacher_fusion import teacher_sampling_mode

    batch = fixed_batch(args.patch, args.batch_hq, args.batch_lq, args.num_classes, device, args.seed)
    x_lq = batch["image"][args.batch_hq:]

    def network() -> torch.nn.Module:
        torch.manual_seed(args.seed)  # every trainer starts from the same weights
        net = PaperVNet(3, 1, args.num_classes, base_filters=args.base_filters, dropout=0.5).to(device)
        apply_memory_format([net], args.memory_format)  # as training does before its first iteration
        return net

    def common(net: torch.nn.Module) -> dict:
        return dict(
            device=device, max_epochs=1, epoch_length=1, train_data_loader=[batch], network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4),
            inferer=SimpleInferer(), amp=args.amp, decollate=False,
        )

    def teacher_kwargs() -> dict:
        return dict(teacher=network(), num_classes=args.num_classes, batch_hq=args.batch_hq, rampup_iterations=100,
                    mc_chunk=args.mc_chunk, loss_function=None)

    supervised = SupervisedTrainer(loss_function=CEDiceLoss(), **common(network()))
    mean_teacher = MeanTeacherTrainer(refine_labels=False, select_samples=False, **teacher_kwargs(),
                                      **common(network()))
    alc = MeanTeacherTrainer(num_samples=args.num_samples, **teacher_kwargs(), **common(network()))
    mtcl = MTCLTrainer(**teacher_kwargs(), **common(network()))
    mtcl_consistency = MTCLTrainer(label_issue_source="consistency", **teacher_kwargs(), **common(network()))
    floor_teacher = network()
    trainers = {"supervised": supervised, "mean_teacher": mean_teacher, "alc": alc, "mtcl": mtcl,
                "mtcl_consistency_source": mtcl_consistency}
    for trainer in trainers.values():
        trainer.state.iteration = 50  # inside the ramp; the EMA is past its warm-up copy

    def step(trainer) -> Callable[[], Any]:
        def run() -> None:
            trainer.state.iteration += 1
            trainer._iteration(trainer, batch)
        return run

    def bare_teacher_passes(num_passes: int, chunk: int | None, batch_norm: str, dropout: bool = True) -> None:
        rows = x_lq.shape[0]
        per_forward = num_passes if chunk is None else min(chunk, num_passes)
        with torch.no_grad(), teacher_sampling_mode(floor_teacher, batch_norm=batch_norm, dropout=dropout):
            repeated = x_lq.repeat(num_passes, 1, 1, 1, 1)
            for start in range(0, num_passes, per_forward):
                floor_teacher(repeated[start * rows:min(start + per_forward, num_passes) * rows])

    run_supervised, run_mt = step(supervised), step(mean_teacher)

    def alc_floor() -> None:
        run_supervised()
        bare_teacher_passes(args.num_samples + 1, args.mc_chunk, batch_norm=alc.teacher_batch_norm)

    clean_probs, noisy = mtcl.clean_teacher_probs(x_lq), batch["label"][args.batch_hq:]

    def mtcl_correction() -> None:
        issues = find_label_issues(clean_probs, noisy, filter_by=mtcl.cl_filter)
        correct_labels(noisy, clean_probs, issues, mode=mtcl.correction_mode)

    def mt_plus_clean_pass() -> None:
        run_mt()
        # in the layer modes of MTCLTrainer.clean_teacher_probs
        bare_teacher_passes(1, None, batch_norm=mtcl.teacher_batch_norm, dropout=mtcl.clean_pass_dropout)

    steps = {"supervised": run_supervised, "mean_teacher": run_mt, "alc": step(alc), "mtcl": step(mtcl),
             "mtcl_consistency_source": step(mtcl_consistency),
             "alc_floor": alc_floor, "mt_plus_clean_pass": mt_plus_clean_pass, "mtcl_correction": mtcl_correction}
    return steps, trainers


def jcas_step(args: argparse.Namespace, device) -> Callable[[], Any]:
    """One JCAS correction-stage step (deep-supervised VNet with DAR, JCAS loss with the transition matrices, SGD on
    both), at the batch, patch and width of ``args``, in the layout ``args.memory_format``."""
    import torch

    from custom.engines.memory_format import apply_memory_format
    from custom.engines.precision import amp_runs_on, training_autocast
    from custom.losses.jcas_loss import JcasLoss, JcasTransitions
    from custom.networks.deep_supervision import JcasVNet

    batch = fixed_batch(args.patch, args.batch_hq, args.batch_lq, args.num_classes, device, args.seed)
    torch.manual_seed(args.seed)
    network = JcasVNet(spatial_dims=3, in_channels=1, out_channels=args.num_classes, base_filters=args.base_filters,
                       dropout=0.5, normalization="batch", feature_dim=16, token_grid=JCAS_TOKEN_GRID).to(device)
    apply_memory_format([network], args.memory_format)
    transitions = JcasTransitions(args.num_classes, [0.8] + [0.2] * (args.num_classes - 1)).to(device)
    loss_function = JcasLoss(args.num_classes, stage="correction")
    optimisers = [torch.optim.SGD(network.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4),
                  torch.optim.SGD(transitions.parameters(), lr=1e-4, momentum=0.9)]
    amp = args.amp and amp_runs_on(device)

    def run() -> None:
        network.train()
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        with training_autocast(amp, device, [network]):
            outputs = network(batch["image"])
        loss_function(outputs, batch["label"], transitions)[0].backward()
        for optimiser in optimisers:
            optimiser.step()
    return run


def build_layout_steps(args: argparse.Namespace, device) -> dict[str, Callable[[], Any]]:
    """``"<method> <layout>"``: one step of every method of :data:`LAYOUT_METHODS` in each layout of
    :data:`custom.engines.memory_format.MEMORY_FORMATS` (the co-teaching family's steps come from
    ``scripts/benchmark_spguided.py``, with real SLIC supervoxels; batch ``batch_hq + batch_lq``)."""
    import importlib.util

    from custom.engines.memory_format import MEMORY_FORMATS

    # the sibling script's SP-guided and co-teaching steps (loaded by path: this script may be imported as a file)
    sibling = Path(__file__).with_name("benchmark_spguided.py")
    spec = importlib.util.spec_from_file_location("benchmark_spguided", sibling)
    benchmark_spguided = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark_spguided)
    steps: dict[str, Callable[[], Any]] = {}
    for layout in MEMORY_FORMATS:
        layout_args = argparse.Namespace(**{**vars(args), "memory_format": layout})
        mean_teacher_family, _ = build_steps(layout_args, device)
        peer_args = argparse.Namespace(patch=args.patch, batch=args.batch_hq + args.batch_lq, seed=args.seed,
                                       base_filters=args.base_filters, amp=args.amp, memory_format=layout,
                                       steps=["coteaching", "spguided"])
        peers = benchmark_spguided.build_steps(peer_args, device)
        for method in LAYOUT_METHODS:
            if method in mean_teacher_family:
                steps[f"{method} {layout}"] = mean_teacher_family[method]
            elif method in peers:
                steps[f"{method} {layout}"] = peers[method]
        steps[f"jcas {layout}"] = jcas_step(layout_args, device)
    return steps


def step_flops(step: Callable[[], Any]) -> int:
    """Floating-point operations of one run of ``step`` (forward + backward), counted by ``torch.utils.flop_counter``
    (convolutions and matmuls: what bounds the step)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_rate(dtype, device, max_size: int = 2048, min_seconds: float = 0.05, repeats: int = 5) -> float:
    """Measured FLOP/s of a square matmul in ``dtype`` (median of ``repeats``, after one warm-up): the hardware's
    dense-arithmetic rate at the current thread count, the ceiling a convolution step can approach. The side
    doubles from 256 until one product takes ``min_seconds`` (or reaches ``max_size``), so that an emulated dtype
    (bfloat16 on a CPU without it, about 100x slower) is measured in seconds, not minutes."""
    import time

    import torch

    from custom.benchmark.step_timing import synchronize

    def seconds(size: int) -> float:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        return time.perf_counter() - start

    size = 256
    while size < max_size and seconds(size) < min_seconds:
        size *= 2
    times = [seconds(size) for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times)


def report_layouts(args: argparse.Namespace, device) -> dict[str, float]:
    """Time every method's step in each layout, interleaved, and print the channels-last / contiguous ratios, the
    supervised step's achieved GFLOP/s and the measured matmul rates."""
    import torch

    from custom.benchmark.step_timing import interleaved_step_times
    from custom.engines.precision import amp_runs_on

    precision = "float32"
    if args.amp and amp_runs_on(device):
        precision = "float16 autocast" if device.type == "cuda" else "bfloat16 autocast"
    elif args.amp:
        precision = "float32 (amp requested; this CPU has no native bfloat16, so training runs float32)"
    print(f"precision: {precision}")
    steps = build_layout_steps(args, device)
    measured = interleaved_step_times(steps, args.warmup, args.repeats, device)
    wall = {name: statistics.median(t["wall"]) for name, t in measured.items()}
    cpu = {name: statistics.median(t["cpu"]) for name, t in measured.items()}
    header = f"{'method':<12} {'contiguous s/it':>16} {'channels_last_3d s/it':>22} {'ratio wall':>10} {'ratio CPU':>9}"
    print("\n" + header)
    results: dict[str, float] = {}
    for method in LAYOUT_METHODS:
        before, after = f"{method} contiguous", f"{method} channels_last_3d"
        ratio_wall, ratio_cpu = wall[after] / wall[before], cpu[after] / cpu[before]
        print(f"{method:<12} {wall[before]:>16.3f} {wall[after]:>22.3f} {ratio_wall:>10.3f} {ratio_cpu:>9.3f}")
        results.update({before: wall[before], after: wall[after], f"{method} ratio": ratio_wall,
                        f"{method} ratio_cpu": ratio_cpu})
    flops = step_flops(steps["supervised contiguous"])  # the step just timed, not a second build
    rates = {"float32": matmul_rate(torch.float32, device), "bfloat16": matmul_rate(torch.bfloat16, device)}
    if device.type == "cuda":
        rates["float16"] = matmul_rate(torch.float16, device)
    fast = wall["supervised channels_last_3d"]
    print(f"\nsupervised step: {flops / 1e9:.1f} GFLOP (forward + backward); "
          f"{flops / fast / 1e9:.1f} GFLOP/s achieved in {DEFAULT_LAYOUT} "
          f"({flops / wall['supervised contiguous'] / 1e9:.1f} in contiguous)")
    print("measured matmul rate at this thread count: " +
          ", ".join(f"{dtype} {rate / 1e9:.1f} GFLOP/s" for dtype, rate in rates.items()))
    results.update({"supervised_gflop": flops / 1e9, "supervised_gflops_achieved": flops / fast / 1e9,
                    **{f"matmul_gflops_{dtype}": rate / 1e9 for dtype, rate in rates.items()}})
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from custom.benchmark.step_timing import add_default_malloc_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="override the profile's patch size")
    parser.add_argument("--base-filters", type=int, default=None)
    parser.add_argument("--batch-hq", type=int, default=None)
    parser.add_argument("--batch-lq", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=8, help="ALC's T")
    parser.add_argument("--mc-chunk", type=int, default=None, help="teacher perturbations per forward (None = all)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--amp", action="store_true",
                        help="the config's amp: float16 autocast + grad scaling on CUDA, bfloat16 autocast on a CPU "
                             "that computes it natively (elsewhere the trainers run float32, as training does)")
    parser.add_argument("--memory-format", choices=["channels_last_3d", "contiguous"], default=DEFAULT_LAYOUT,
                        help="the networks' layout (config key memory_format)")
    parser.add_argument("--compare-layouts", action="store_true",
                        help="time every method's step (supervised, ALC, MTCL, Co-teaching, SP-guided, JCAS) in both "
                             "layouts instead of --steps, print the ratios, the supervised step's GFLOP/s and the "
                             "measured matmul rates")
    parser.add_argument("--seed", type=int, default=0)
    add_default_malloc_argument(parser)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="time only these steps")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    for key in ("patch", "base_filters", "batch_hq", "batch_lq"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    if any(p % 16 for p in args.patch):
        parser.error(f"--patch sides must be divisible by 16 (PaperVNet), got {args.patch}")
    if args.batch_hq < 1 or args.batch_lq < 1 or args.repeats < 1 or args.warmup < 0 or args.num_samples < 1:
        parser.error("batch sizes, --repeats and --num-samples must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch

    from custom.benchmark.step_timing import interleaved_step_times
    from custom.host_memory import host_allocator_setting

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_before = os.getloadavg()
    shown_argv = sys.argv[1:] if argv is None else argv
    print(f"command: python scripts/benchmark_step.py {' '.join(shown_argv)}")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(host_allocator_setting(retain=not args.default_malloc))
    print(f"patch {args.patch}, base_filters {args.base_filters}, batch {args.batch_hq} HQ + {args.batch_lq} LQ, "
          f"C {args.num_classes}, ALC T {args.num_samples}, mc_chunk {args.mc_chunk}, "
          f"warmup {args.warmup}, repeats {args.repeats}")
    if args.compare_layouts:
        result = report_layouts(args, device)
        load_after = os.getloadavg()
        print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
        return result
    steps, _ = build_steps(args, device)
    steps = {name: steps[name] for name in STEPS if name in args.steps}
    measured = interleaved_step_times(steps, args.warmup, args.repeats, device)
    times = {name: t["wall"] for name, t in measured.items()}
    cpu_times = {name: t["cpu"] for name, t in measured.items()}
    load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    print(f"\n{'step':<20} {'median s/it':>12} {'min':>8} {'max':>8} {'median CPU s/it':>16}")
    for name in steps:
        values = times[name]
        print(f"{name:<20} {medians[name]:>12.3f} {min(values):>8.3f} {max(values):>8.3f} {cpu_medians[name]:>16.3f}")

    def ratio(numerator: str, denominator: str, minus: str | None = None) -> tuple[float, float] | None:
        """(wall, CPU) ratio of medians, ``(num - minus) / den`` when ``minus``; None if a step was not timed."""
        if any(name is not None and name not in steps for name in (numerator, denominator, minus)):
            return None
        return tuple(
            (m[numerator] - (m[minus] if minus else 0.0)) / m[denominator] for m in (medians, cpu_medians)
        )

    ratios = {
        "alc/alc_floor": ratio("alc", "alc_floor"),
        "mtcl_overhead": ratio("mtcl", "mean_teacher", minus="mean_teacher"),
        "mtcl_clean_pass": ratio("mt_plus_clean_pass", "mean_teacher", minus="mean_teacher"),
        "mtcl_correction": ratio("mtcl", "mean_teacher", minus="mt_plus_clean_pass"),
        "mtcl/mt_plus_clean_pass": ratio("mtcl", "mt_plus_clean_pass"),
        "mtcl_consistency_overhead": ratio("mtcl_consistency_source", "mean_teacher", minus="mean_teacher"),
        "mtcl_correction_only": ratio("mtcl_correction", "mean_teacher"),
        "alc/supervised": ratio("alc", "supervised"),
        "mean_teacher/supervised": ratio("mean_teacher", "supervised"),
    }
    labels = {
        "alc/alc_floor": ("ALC / ALC floor", False, "  (target <= 1.1)"),
        "mtcl_overhead": ("MTCL whole-step overhead (MTCL-MT)/MT", True, ""),
        "mtcl_clean_pass": ("  of which the clean teacher pass", True, "  ((MT + clean pass - MT) / MT)"),
        "mtcl_correction": ("  of which the correction", True,
                            "  ((MTCL - MT - clean pass) / MT: confident learning + flips; target <= 10%)"),
        "mtcl/mt_plus_clean_pass": ("MTCL / (MT + one clean teacher pass)", False, ""),
        "mtcl_consistency_overhead": ("MTCL, label_issue_source=consistency", True, "  ((MTCL' - MT) / MT)"),
        "mtcl_correction_only": ("MTCL correction step alone / MT", True, "  (find_label_issues + correct_labels)"),
        "alc/supervised": ("ALC / supervised", False, ""),
        "mean_teacher/supervised": ("Mean Teacher / supervised", False, ""),
    }
    print(f"\n{'ratio of medians':<40} {'wall':>7} {'CPU':>7}")
    for key, (text, percent, note) in labels.items():
        if ratios[key] is not None:
            shown = [f"{100 * r:6.1f}%" if percent else f"{r:7.3f}" for r in ratios[key]]
            print(f"{text:<40} {shown[0]:>7} {shown[1]:>7}{note}")
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return {
        **medians, **{f"{name}_cpu": value for name, value in cpu_medians.items()},
        **{key: value[0] for key, value in ratios.items() if value is not None},
        **{f"{key}_cpu": value[1] for key, value in ratios.items() if value is not None},
    }


if __name__ == "__main__":
    main()
