"""Seconds per training iteration of SP-guided and its baselines against two plain supervised steps, in one run.

Example::

    python scripts/benchmark_spguided.py                       # CPU profile: 64x64x32, base_filters 8, batch 4
    python scripts/benchmark_spguided.py --profile paper       # 112x112x80, base_filters 16, batch 2
    python scripts/benchmark_spguided.py --steps supervised_x2 spguided --repeats 3

Steps timed (each the real trainer's ``_iteration`` on one fixed in-memory batch, trainers built in Python so that
only the step is measured; every network starts from the same weights):

* ``supervised_x2``: two MONAI ``SupervisedTrainer`` steps (cross-entropy, one per network): what two networks
  cost without any selection - the reference of every ratio;
* ``supervised_pair``: both networks forward, the sum of their plain cross-entropies, one backward and one
  optimiser step (no selection): the floor of any method that couples two networks in one step. It holds both
  networks' activations at once, which on a CPU costs page faults (system time) that two separate steps do not pay;
* ``spguided``: :class:`SPGuidedTrainer` (two forwards, no-grad superpixel pooling + Eq. 2 scores + per-class
  small-loss selection over (supervoxel, class) pieces, Eq. 4 joint loss, one backward, one optimiser step);
* ``spguided_voxel``: :class:`SPGuidedVoxelTrainer` (the same with voxels as pieces: sorts ``B * V`` scores);
* ``jocor``, ``coteaching``: the voxel-level baselines (:class:`JoCoRTrainer`, :class:`CoTeachingTrainer`).

The batch is a bright ball with 3-voxel dilation noise in Gaussian noise; its supervoxels are real SLIC maps
(``compute_supervoxels``, 216 voxels per supervoxel as the configs), relabelled per sample as
``RelabelContiguousd`` does, with the counts passed on the CPU. The keep ratio is ``R = (0.9, 0.7)`` (after the
warm-up, so selection runs).

Timing: the steps are interleaved (round robin, after ``--warmup`` untimed rounds); each figure is the median of
``--repeats`` rounds, of the wall clock, the process's CPU time (``time.process_time``) and its user / system split
(``getrusage``; ``custom.benchmark.step_timing``). On a CPU shared with other jobs the wall clock mostly measures the
others' load, so on CPU the ratios use the process CPU time (user + system) and ``--threads`` defaults to 1 (CPU
time = work done); on CUDA they use the wall clock (synchronised). Printed: every step's ratio to ``supervised_x2``
(target for ``spguided``: <= 1.1), the same on user time only (the arithmetic, without the allocator's page faults),
and the load average before and after.

On CPU with glibc's default malloc, large freed blocks go back to the OS and are faulted in again at the next step;
holding two networks' activations at once makes that cost visible as system time. Training keeps freed host memory
in the process (``custom.host_memory.retain_freed_host_memory``, config key ``retain_host_memory``, default true), and
so does this script before it builds anything, so that the steps are timed as training runs them;
``--default-malloc`` leaves glibc's defaults (then the ``MALLOC_*`` environment variables, if set, apply). The header
prints the allocator setting in effect.
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
    "cpu": {"patch": [64, 64, 32], "base_filters": 8, "batch": 4},
    "paper": {"patch": [112, 112, 80], "base_filters": 16, "batch": 2},
}
STEPS = ("supervised_x2", "supervised_pair", "spguided", "spguided_voxel", "jocor", "coteaching")
KEEP_RATIO = (0.9, 0.7)


def fixed_batch(patch: list[int], batch: int, seed: int = 0) -> dict:
    """Image, noisy label (ball dilated by 3 voxels) and per-sample SLIC supervoxels with their counts (CPU)."""
    import numpy as np
    import torch

    from custom.data.supervoxels import compute_supervoxels
    from custom.transforms.supervoxel import relabel_contiguous

    generator = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in patch]
    radius = torch.sqrt(sum(g**2 for g in torch.meshgrid(*axes, indexing="ij")))
    clean = (radius < 0.35 * min(patch)).long()
    noisy = (radius < 0.35 * min(patch) + 3.0).long()
    image = clean[None, None].float().expand(batch, 1, *patch) + 0.5 * torch.randn(batch, 1, *patch,
                                                                                   generator=generator)
    supervoxels, counts = [], []
    for b in range(batch):
        ids = compute_supervoxels(image[b, 0].numpy(), spacing=None, num_threads=1)
        relabelled, count = relabel_contiguous(torch.as_tensor(ids.astype(np.int64)))
        supervoxels.append(relabelled)
        counts.append(count)
    return {
        "image": image.contiguous(), "label": noisy[None, None].expand(batch, 1, *patch).float().contiguous(),
        "superpixel": torch.stack(supervoxels)[:, None].float(), "superpixel_count": torch.tensor(counts),
    }


def build_steps(args: argparse.Namespace, device) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables that run one iteration of each step in ``args.steps``."""
    import torch
    import torch.nn.functional as F
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    from custom.engines import CoTeachingTrainer, JoCoRTrainer, SPGuidedTrainer, SPGuidedVoxelTrainer
    from custom.engines.base import batch_to_device
    from custom.engines.memory_format import DEFAULT_MEMORY_FORMAT, apply_memory_format
    from custom.networks import PaperVNet

    cpu_batch = fixed_batch(args.patch, args.batch, args.seed)
    batch = batch_to_device(cpu_batch, device, ("image", "label", "superpixel"))
    supervised_batch = {"image": batch["image"], "label": batch["label"].long()}

    def network(offset: int) -> torch.nn.Module:
        torch.manual_seed(args.seed + offset)  # f1 and f2: same weights in every trainer, different from each other
        net = PaperVNet(3, 1, 2, base_filters=args.base_filters, dropout=0.0).to(device)
        # the training's layout (config key memory_format); scripts/benchmark_step.py --compare-layouts sets it
        apply_memory_format([net], getattr(args, "memory_format", DEFAULT_MEMORY_FORMAT))
        return net

    def common(nets: list[torch.nn.Module], data: dict) -> dict:
        params = [p for n in nets for p in n.parameters()]
        return dict(device=device, max_epochs=1, epoch_length=1, train_data_loader=[data], network=nets[0],
                    optimizer=torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4),
                    inferer=SimpleInferer(), amp=args.amp, decollate=False)

    def ce_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label[:, 0].long())

    def pair(cls) -> Any:
        nets = [network(0), network(1)]
        return cls(peers=nets[1], num_classes=2, keep_ratio=list(KEEP_RATIO), loss_function=None,
                   **common(nets, batch))

    def step(trainer, data: dict) -> Callable[[], None]:
        def run() -> None:
            trainer.state.iteration += 1
            trainer._iteration(trainer, data)
        return run

    makers: dict[str, Callable[[], Callable[[], None]]] = {}

    def supervised_x2() -> Callable[[], None]:
        first = SupervisedTrainer(loss_function=ce_loss, **common([network(0)], supervised_batch))
        second = SupervisedTrainer(loss_function=ce_loss, **common([network(1)], supervised_batch))
        run_first, run_second = step(first, supervised_batch), step(second, supervised_batch)

        def run() -> None:
            run_first()
            run_second()
        return run

    def supervised_pair() -> Callable[[], None]:
        nets = [network(0), network(1)]
        optimizer = common(nets, batch)["optimizer"]
        target = supervised_batch["label"][:, 0]

        def run() -> None:
            for net in nets:
                net.train()
            optimizer.zero_grad(set_to_none=True)
            loss = sum(F.cross_entropy(net(supervised_batch["image"]), target) for net in nets)
            loss.backward()
            optimizer.step()
        return run

    makers["supervised_x2"] = supervised_x2
    makers["supervised_pair"] = supervised_pair
    makers["spguided"] = lambda: step(pair(SPGuidedTrainer), batch)
    makers["spguided_voxel"] = lambda: step(pair(SPGuidedVoxelTrainer), batch)
    makers["jocor"] = lambda: step(pair(JoCoRTrainer), batch)
    makers["coteaching"] = lambda: step(pair(CoTeachingTrainer), batch)
    return {name: makers[name]() for name in args.steps}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from custom.benchmark.step_timing import add_default_malloc_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="override the profile's patch size")
    parser.add_argument("--base-filters", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: 1 on CPU)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--amp", action="store_true", help="autocast + grad scaling (CUDA only)")
    parser.add_argument("--seed", type=int, default=0)
    add_default_malloc_argument(parser)
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    for key in ("patch", "base_filters", "batch"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    if any(p % 16 for p in args.patch):
        parser.error(f"--patch sides must be divisible by 16 (PaperVNet), got {args.patch}")
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch must be >= 2 (BatchNorm), --repeats >= 1, --warmup >= 0")
    if "supervised_x2" not in args.steps:
        args.steps = ["supervised_x2", *args.steps]  # the reference of every ratio
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch

    from custom.benchmark.step_timing import interleaved_step_times
    from custom.host_memory import host_allocator_setting

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.amp and device.type != "cuda":
        raise SystemExit("--amp needs a CUDA device")
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    clock = "cpu" if device.type == "cpu" else "wall"
    load_before = os.getloadavg()
    shown_argv = sys.argv[1:] if argv is None else argv
    print(f"command: python scripts/benchmark_spguided.py {' '.join(shown_argv)}")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"patch {args.patch}, base_filters {args.base_filters}, batch {args.batch}, R {list(KEEP_RATIO)}, "
          f"warmup {args.warmup}, repeats {args.repeats}; ratios on {clock} time")
    print(host_allocator_setting(retain=not args.default_malloc))
    steps = build_steps(args, device)
    times = interleaved_step_times(steps, args.warmup, args.repeats, device)
    load_after = os.getloadavg()
    medians = {name: statistics.median(t[clock]) for name, t in times.items()}
    user = {name: statistics.median(t["user"]) for name, t in times.items()}
    print(f"\n{'step':<16} {'wall s/it':>9} {'user':>7} {'sys':>7} {'cpu':>7} {'min':>7} {'max':>7}   "
          f"ratio ({clock})  ratio (user)")
    reference = medians["supervised_x2"]
    for name in args.steps:
        t = {key: statistics.median(values) for key, values in times[name].items()}
        values = times[name][clock]
        print(f"{name:<16} {t['wall']:>9.3f} {t['user']:>7.3f} {t['sys']:>7.3f} {t['cpu']:>7.3f} {min(values):>7.3f} "
              f"{max(values):>7.3f}   {medians[name] / reference:>11.3f}  {user[name] / user['supervised_x2']:>12.3f}")
    ratios = {f"{name}/supervised_x2": medians[name] / reference for name in args.steps}
    if "spguided" in medians:
        print(f"\nSP-guided / two supervised steps: {ratios['spguided/supervised_x2']:.3f} on {clock} time, "
              f"{user['spguided'] / user['supervised_x2']:.3f} on user time  (target <= 1.1)")
        if "supervised_pair" in medians:
            print(f"SP-guided / supervised pair (both graphs alive): "
                  f"{medians['spguided'] / medians['supervised_pair']:.3f}")
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return {**medians, **ratios}


if __name__ == "__main__":
    main()
