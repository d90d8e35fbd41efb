"""Replay SP-guided's label refinement from a checkpoint under several rules, and report each LQ case's outcome.

    python -m monai.bundle run training --config_file "['configs/spguided_la.json', 'configs/cpu_la.json']" \
        --dataset_dir DATA --output_dir RUN --seed 0 --terminate_when_done True   # stops after the refinement
    python scripts/replay_refinement.py --config_file configs/spguided_la.json configs/cpu_la.json \
        --dataset_dir DATA --checkpoint "RUN/checkpoints/checkpoint_epoch=12.pt" --min-confidence 0.8 0.95 \
        --output replay.csv

Every training case is scored once with the checkpoint's networks (their mean softmax, sliding window, as the
refinement stage does); each combination of ``--min-confidence``, ``--case-gate`` and ``--budget`` is then replayed
on the scores (``custom.refinement.refinement_replay``). Prints, per rule, the LQ cases refined, their mean
foreground Dice against the clean labels before -> after and the worst loss of an uncorrupted case (simulated noise
only: the datalist's ``label_clean``); ``--output`` writes one CSV row per rule and LQ case. A diagnostic: choose
defaults on the validation split. Bad input ends with one line naming the file or option and exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config_file", nargs="+", required=True, help="the run's config files, in order")
    parser.add_argument("--dataset_dir", required=True, help="the run's prepared dataset folder")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of the run's networks")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides the run used (e.g. trust_hq=False), as JSON values")
    parser.add_argument("--keep-ratio", nargs="+", type=float, default=None,
                        help="R_c per class at the round (default: the config's target_keep_ratio)")
    parser.add_argument("--min-confidence", nargs="+", type=_gate, default=[0.8],
                        help="confidence gates: a number, or one per noisy class as 'g0,g1,...'")
    parser.add_argument("--case-gate", nargs="+", default=["hq_agreement"], help="case gates: none, hq_agreement")
    parser.add_argument("--case-gate-margin", type=float, default=0.02)
    parser.add_argument("--budget", nargs="+", default=["pooled"], help="budgets: pooled, per_case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None, help="CSV of every rule's per-case rows")
    return parser.parse_args(argv)


def _gate(text: str) -> float | list[float]:
    values = [float(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def _override(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--override {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def load_networks(parser, checkpoint: Path, device: str) -> list:
    """The config's ``network`` and ``extra_networks`` (e.g. the peer) with the checkpoint's weights."""
    import torch

    from custom.io import DataError

    networks = {"network": parser.get_parsed_content("network")}
    networks.update(parser.get_parsed_content("extra_networks", default={}) or {})
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise DataError(checkpoint, f"cannot be read as a checkpoint ({exc})") from exc
    for key, net in networks.items():
        if key not in state:
            raise DataError(checkpoint, f"has no {key!r} entry (found {sorted(state)})")
        net.load_state_dict(state[key])
    return list(networks.values())


def main(argv: Sequence[str] | None = None) -> int:
    from monai.bundle import ConfigParser

    from custom.errors import PREFIX
    from custom.refinement.refinement_replay import load_replay_case, replay_refinement, summarize_replay

    args = parse_args(argv)
    try:
        for path in args.config_file:
            if not Path(path).is_file():
                raise ValueError(f"--config_file {path}: no such file")
        if not args.checkpoint.is_file():
            raise ValueError(f"--checkpoint {args.checkpoint}: no such file")
        parser = ConfigParser()
        parser.read_config(args.config_file)
        parser.update({"dataset_dir": args.dataset_dir, "device": args.device,
                       **dict(_override(o) for o in args.override)})
        networks = load_networks(parser, args.checkpoint, args.device)
        keep_ratio = args.keep_ratio or parser.get_parsed_content("target_keep_ratio")
        items = parser.get_parsed_content("data::training")
        load = parser.get_parsed_content("transforms::eval")
        inferer = parser.get_parsed_content("inferer")
        use_superpixels = bool(parser.get("label_stage", {}).get("use_superpixels", True))
        cases = []
        for i, item in enumerate(items, 1):
            cases.append(load_replay_case(networks, item, load, use_superpixels, inferer=inferer, device=args.device))
            print(f"scored {i}/{len(items)}: {cases[-1].case_id} ({cases[-1].quality})", flush=True)
        all_rows = []
        print(f"R = {[round(float(r), 4) for r in keep_ratio]}")
        for gate, case_gate, budget in itertools.product(args.min_confidence, args.case_gate, args.budget):
            rows = replay_refinement(cases, keep_ratio, gate, case_gate, args.case_gate_margin, budget)
            s = summarize_replay(rows)
            print(f"min_confidence {gate}, case gate {case_gate}, budget {budget}: {s['refined']} of "
                  f"{s['cases']} LQ cases refined; mean Dice {s['mean_dice_before']} -> {s['mean_dice_after']}; "
                  f"worst uncorrupted loss {s['worst_uncorrupted_loss']} ({s['uncorrupted']} uncorrupted)")
            all_rows += [{"min_confidence": gate, "case_gate": case_gate, "budget": budget, **r} for r in rows]
    except ValueError as exc:  # DataError is a ValueError
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        fields = list(dict.fromkeys(k for r in all_rows for k in r))
        with open(args.output, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(all_rows)
        print(f"rows: {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
