"""Time and peak memory of one JCAS training step, with and without DAR, against a plain V-Net CE step.

Example::

    python scripts/benchmark_jcas.py                       # LA CPU patch, token grids 8^3 and 16^3
    python scripts/benchmark_jcas.py --settings paper      # 112x112x80, base_filters 16, batch 2, 16^3 tokens

Variants (each measured in its own fresh process, so that peak memory is per variant):

* ``vnet_ce``: the plain :class:`PaperVNet` + cross-entropy step (what the supervised baseline pays);
* ``jcas_no_dar``: :class:`JcasVNet` with ``use_dar=False`` + the stage-2 :class:`JcasLoss` (both levels, the
  affinity losses, ``T_C``/``T_A``, volume and consistency terms) + both optimiser steps;
* ``jcas``: the same with DAR.

One step = zero grad, forward, loss, backward, the network's SGD step and the transitions' SGD step. Times are
medians over ``--repeats`` steps after ``--warmup`` untimed steps, both wall-clock and process CPU time
(``time.process_time``). On a CPU shared with other jobs the wall clock mostly measures the others' load, so the
ratios use the CPU time, with ``--threads 1`` by default (one intra-op thread: CPU time = work done). Memory: on CUDA
``torch.cuda.max_memory_allocated`` (tensor memory only); on CPU the growth of the process's peak resident set size
(``resource.getrusage(...).ru_maxrss``) from just before the first step to the end, i.e. activations, gradients,
optimiser state and allocator overhead of the step, without the interpreter and libraries.

Each worker keeps freed host memory in the process as training does (``custom.host_memory``, config key
``retain_host_memory``), so the CPU peak is the step's high-water mark; ``--default-malloc`` leaves glibc's defaults.

The printed ratios are measured in one run: ``jcas / jcas_no_dar`` is the cost of DAR (target <= 1.30),
``jcas / vnet_ce`` the cost of JCAS as a whole. The load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

VARIANTS = ("vnet_ce", "jcas_no_dar", "jcas")
SETTINGS: dict[str, dict[str, Any]] = {
    # the CPU LA patch, with the token grid of configs/jcas_la.json and with the 16^3 of methods.md
    "la_cpu_grid8": {"patch": [64, 64, 32], "base_filters": 8, "batch": 2, "token_grid": [8, 8, 8]},
    "la_cpu_grid16": {"patch": [64, 64, 32], "base_filters": 8, "batch": 2, "token_grid": [16, 16, 16]},
    # the papers' LA patch and V-Net width
    "paper": {"patch": [112, 112, 80], "base_filters": 16, "batch": 2, "token_grid": [16, 16, 16]},
}
NUM_CLASSES = 2  # LA is binary; the step cost hardly depends on C
FEATURE_DIM = 16


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1.0 / 1024**2 if sys.platform == "darwin" else 1.0 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(
    variant: str, setting: dict[str, Any], warmup: int, repeats: int, device: str, threads: int | None = None,
    seed: int = 0,
) -> dict:
    """Run ``warmup + repeats`` training steps of ``variant`` in this process; return times (s) and peak memory."""
    import torch
    import torch.nn.functional as F

    if threads is not None:
        torch.set_num_threads(threads)

    from custom.losses.jcas_loss import JcasLoss, JcasTransitions
    from custom.networks.deep_supervision import JcasVNet
    from custom.networks.vnet import PaperVNet

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    torch.manual_seed(seed)
    dev = torch.device(device)
    batch, patch = int(setting["batch"]), [int(p) for p in setting["patch"]]
    image = torch.randn(batch, 1, *patch, device=dev)
    label = (torch.rand(batch, 1, *patch, device=dev) < 0.2).long()  # a 20% foreground, like LA patches
    common = dict(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES, base_filters=int(setting["base_filters"]),
                  dropout=0.5, normalization="batch")
    transitions = None
    if variant == "vnet_ce":
        network = PaperVNet(**common).to(dev).train()

        def loss_of() -> torch.Tensor:
            return F.cross_entropy(network(image), label[:, 0])

    else:
        network = JcasVNet(**common, feature_dim=FEATURE_DIM, token_grid=setting["token_grid"],
                           use_dar=variant == "jcas").to(dev).train()
        transitions = JcasTransitions(NUM_CLASSES, [0.8, 0.2]).to(dev)
        jcas_loss = JcasLoss(NUM_CLASSES, stage="correction")

        def loss_of() -> torch.Tensor:
            return jcas_loss(network(image), label, transitions)[0]

    optimisers = [torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)]
    if transitions is not None:
        optimisers.append(torch.optim.SGD(transitions.parameters(), lr=1e-3, momentum=0.9))

    def step() -> tuple[float, float]:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start, start_cpu = time.perf_counter(), time.process_time()
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        for optimiser in optimisers:
            optimiser.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start, time.process_time() - start_cpu

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _peak_rss_mb()
    for _ in range(warmup):
        step()
    measured = [step() for _ in range(repeats)]
    times, cpu_times = [m[0] for m in measured], [m[1] for m in measured]
    if dev.type == "cuda":
        memory_mb, memory_kind = torch.cuda.max_memory_allocated(dev) / 1024**2, "cuda max_memory_allocated"
    else:
        memory_mb, memory_kind = _peak_rss_mb() - rss_before, "peak RSS growth (ru_maxrss)"
    return {"variant": variant, "times": times, "median_s": statistics.median(times), "cpu_times": cpu_times,
            "median_cpu_s": statistics.median(cpu_times), "memory_mb": memory_mb, "memory_kind": memory_kind,
            "threads": torch.get_num_threads(), "device": str(dev)}


def _run_worker(variant: str, setting_name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--settings", setting_name,
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--device", args.device,
               "--threads", str(args.threads)] + (["--default-malloc"] if args.default_malloc else [])
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} / {setting_name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(setting_name: str, setting: dict[str, Any], results: dict[str, dict]) -> str:
    head = (f"{setting_name}: patch {setting['patch']}, base_filters {setting['base_filters']}, batch "
            f"{setting['batch']}, token grid {setting['token_grid']} ({results['jcas']['device']}, "
            f"{results['jcas']['threads']} threads)")
    lines = [head, f"  {'variant':<12} {'CPU s/step':>11} {'wall s/step':>12} {'CPU s, all steps':>30} "
                   f"{'peak mem (MB)':>14}"]
    for variant in VARIANTS:
        r = results[variant]
        steps = ", ".join(f"{t:.2f}" for t in r["cpu_times"])
        lines.append(f"  {variant:<12} {r['median_cpu_s']:>11.2f} {r['median_s']:>12.2f} {steps:>30} "
                     f"{r['memory_mb']:>14.0f}")
    key = "median_s" if results["jcas"]["device"].startswith("cuda") else "median_cpu_s"
    dar_time = results["jcas"][key] / results["jcas_no_dar"][key]
    jcas_time = results["jcas"][key] / results["vnet_ce"][key]
    dar_mem = results["jcas"]["memory_mb"] / max(results["jcas_no_dar"]["memory_mb"], 1e-9)
    lines.append(f"  time   ratio ({'wall' if key == 'median_s' else 'CPU'}) jcas / jcas_no_dar = {dar_time:.2f} "
                 "(DAR; target <= 1.30), "
                 f"jcas / vnet_ce = {jcas_time:.2f}")
    lines.append(f"  memory ratio jcas / jcas_no_dar = {dar_mem:.2f}; memory = {results['jcas']['memory_kind']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from custom.benchmark.step_timing import add_default_malloc_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["la_cpu_grid8", "la_cpu_grid16"], choices=sorted(SETTINGS),
                        help="which patch / width / token-grid settings to run (default: the LA CPU ones)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    add_default_malloc_argument(parser)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        print("--warmup must be >= 0, --repeats and --threads >= 1", file=sys.stderr)
        return 2
    from custom.host_memory import host_allocator_setting

    if args.worker:
        host_allocator_setting(retain=not args.default_malloc)  # before anything is allocated, as training does
        result = measure(args.worker, SETTINGS[args.settings[0]], args.warmup, args.repeats, args.device, args.threads)
        print(json.dumps(result))
        return 0
    print(f"load average before: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")
    print(f"workers' {host_allocator_setting(retain=not args.default_malloc)}")
    for setting_name in args.settings:
        results = {variant: _run_worker(variant, setting_name, args) for variant in VARIANTS}
        print(_table(setting_name, SETTINGS[setting_name], results), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
