"""configs/multi_gpu.json under torchrun: 2 CPU processes, gloo backend.

* Fast: one supervised iteration with validation on 3 cases. Validation is sharded (2 + 1 cases, no duplicates),
  the all-gathered ``val_mean_dice`` equals the one a single process computes with the saved weights, and only
  rank 0 logs and writes files (each rank gets its own ``output_dir``, rank 1's must stay absent).
* Slow: each rank saves every trainable tensor at the end; after training they must be identical across ranks (the
  weights start from rank 0 and every gradient is averaged), for one-network, teacher, peer and T-matrix trainers.

The rank scripts initialise the process group before parsing the configs, as ``monai.bundle run`` under torchrun
does before the trainer is built, so that rank-dependent ids (``_disabled_``, the validation shard) see the rank.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import custom.distributed as cdist

REPO_ROOT = Path(__file__).resolve().parents[2]
RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from monai.bundle import ConfigWorkflow
configs, dataset_dir, datalist, out = sys.argv[1].split(','), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group('gloo')
wf = ConfigWorkflow(config_file=configs, workflow_type='train', dataset_dir=dataset_dir, datalist=datalist,
                    output_dir=out, device='cpu', max_epochs=1, epoch_length=3, val_interval=100)
wf.initialize()
# the trainer is read after the run, not built before it: the run claims its output folder before anything
# (TensorBoard's logs/) is written there
wf.run()
trainer = wf.parser.get_parsed_content('train::trainer')
rank = dist.get_rank() if dist.is_initialized() else int(__import__('os').environ['RANK'])
state = {}
for i, opt in enumerate([trainer.optimizer, *trainer.extra_optimizers()]):
    for j, group in enumerate(opt.param_groups):
        for k, p in enumerate(group['params']):
            state[f'{i}.{j}.{k}'] = p.detach().clone()
torch.save(state, f'{out}/rank{rank}.pt')
"""

VALIDATION_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from monai.bundle import ConfigWorkflow
configs, dataset_dir, datalist, out, results = sys.argv[1].split(','), *sys.argv[2:6]
dist.init_process_group('gloo')
rank = dist.get_rank()

# SP-guided's loss gap: rank 0 sees 1.0, rank 1 3.0; every rank must get their mean, only rank 0 its csv
from ignite.engine import Engine
from custom.handlers import LossGapHandler
def step(engine, batch):
    return {'loss_selected': torch.tensor(1.0), 'loss_unselected': torch.tensor(2.0 + 2 * rank),
            'selected_fraction': torch.tensor(0.5)}
gap_engine = Engine(step)
LossGapHandler(patience=1, output_dir=f'{results}/loss_gap/rank{rank}').attach(gap_engine)
gap_engine.run([0, 1], max_epochs=1)

wf = ConfigWorkflow(config_file=configs, workflow_type='train', dataset_dir=dataset_dir, datalist=datalist,
                    output_dir=f'{out}/rank{rank}', device='cpu', max_epochs=1, epoch_length=1, val_interval=1)
wf.initialize()
wf.run()
evaluator = wf.parser.get_parsed_content('validate::evaluator')
result = {'val_mean_dice': evaluator.state.metrics['val_mean_dice'], 'iterations': evaluator.state.iteration,
          'cases': [item['image'] for item in evaluator.data_loader.dataset.data],
          'loss_gap': gap_engine.state.metrics['loss_gap']}
with open(f'{results}/rank{rank}.json', 'w') as f:
    json.dump(result, f)
torch.save({k: v for k, v in evaluator.network.named_buffers()}, f'{results}/rank{rank}_buffers.pt')
"""

CONFIGS = ["supervised_la.json", "alc_la.json", "spguided_la.json", "jcas_la.json"]
# MONAI's ConfigWorkflow logs this before any config id runs: the one INFO line rank 1 cannot silence from a config
MONAI_STARTUP_LINE = "Setting logging properties based on config"


def _torchrun(script: Path, args: list[str], log_dir: Path | None = None, timeout: int = 300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port on 127.0.0.1 for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", port]
    if log_dir is not None:  # each rank's stdout/stderr in its own file: <log_dir>/<run>/attempt_0/<rank>/
        cmd += ["--log-dir", str(log_dir), "--redirects", "3"]
    proc = subprocess.run(cmd + [str(script), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def _rank_output(log_dir: Path, rank: int) -> str:
    files = sorted(log_dir.glob(f"*/attempt_0/{rank}/std*.log"))
    assert len(files) == 2, f"torchrun wrote {files} for rank {rank}"
    return "\n".join(f.read_text() for f in files)


def _dataset(tmp_path_factory, num_cases: int, shape: tuple[int, int, int], num_classes: int = 2) -> Path:
    """A synthetic set with 3 validation cases (3 does not split evenly over 2 ranks) and no test cases."""
    from custom.data import make_synthetic_dataset

    out = tmp_path_factory.mktemp(f"mgpu{num_classes}") / "data"
    return Path(make_synthetic_dataset(out, num_cases=num_cases, shape=shape, num_classes=num_classes, val_count=3,
                                       test_count=0, seed=0))


@pytest.fixture(scope="module")
def three_validation_cases(tmp_path_factory) -> Path:
    """2 training and 3 validation cases of 32^3 voxels."""
    return _dataset(tmp_path_factory, num_cases=5, shape=(32, 32, 32))


def test_torchrun_shards_validation_and_only_rank0_logs_and_writes(three_validation_cases, tmp_path, monkeypatch):
    datalist = three_validation_cases
    out, results, logs = tmp_path / "out", tmp_path / "results", tmp_path / "logs"
    results.mkdir()
    script = tmp_path / "validate.py"
    script.write_text(VALIDATION_SCRIPT)
    configs = "configs/supervised_la.json,configs/quick.json,configs/multi_gpu.json"
    proc = _torchrun(script, [configs, str(datalist.parent), str(datalist), str(out), str(results)], log_dir=logs)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + _rank_output(logs, 0)[-4000:]
    rank0, rank1 = (json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1))

    # sharded: 2 + 1 cases, disjoint, all of the validation set, each validated once
    validation = [str(datalist.parent / item["image"]) for item in json.loads(datalist.read_text())["validation"]]
    assert len(validation) == 3
    assert (len(rank0["cases"]), len(rank1["cases"])) == (2, 1)
    assert sorted(rank0["cases"] + rank1["cases"]) == sorted(validation)
    assert (rank0["iterations"], rank1["iterations"]) == (2, 1)
    # the metric is gathered over both shards: the same on both ranks
    assert rank0["val_mean_dice"] == pytest.approx(rank1["val_mean_dice"], abs=1e-7)

    # every rank validated with rank 0's batch-norm statistics (each rank updated its own from its own batches)
    exported = torch.load(out / "rank0" / "models" / "model.pt", map_location="cpu", weights_only=True)
    buffers0, buffers1 = (torch.load(results / f"rank{r}_buffers.pt", weights_only=True) for r in (0, 1))
    assert buffers1.keys() == buffers0.keys() and any(k.endswith("running_mean") for k in buffers1)
    for key in buffers1:
        torch.testing.assert_close(buffers1[key], buffers0[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(buffers1[key], exported[key], rtol=0, atol=0, msg=key)

    # and it equals the one of a single process validating every case with the weights rank 0 exported
    monkeypatch.chdir(REPO_ROOT)
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=["configs/supervised_la.json", "configs/quick.json"], workflow_type="train",
                        dataset_dir=str(datalist.parent), datalist=str(datalist), output_dir=str(tmp_path / "single"),
                        device="cpu")
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    network.load_state_dict(exported)
    evaluator = wf.parser.get_parsed_content("validate::evaluator")
    evaluator.run()
    assert evaluator.state.iteration == 3
    assert rank0["val_mean_dice"] == pytest.approx(evaluator.state.metrics["val_mean_dice"], abs=1e-6)

    # SP-guided's loss gap is averaged over ranks (the same refinement decisions everywhere), written by rank 0
    assert (rank0["loss_gap"], rank1["loss_gap"]) == (2.0, 2.0)
    assert (results / "loss_gap" / "rank0" / "loss_gap.csv").is_file()
    assert not (results / "loss_gap" / "rank1").exists()

    # rank 0 alone writes: checkpoints, TensorBoard events, the bundle; rank 1's output_dir is never created
    assert not (out / "rank1").exists(), sorted(str(p) for p in (out / "rank1").rglob("*"))
    for path in ("models/model.pt", "checkpoints/checkpoint_final.pt", "checkpoints/model_best_val.pt",
                 "run_stats.json"):
        assert (out / "rank0" / path).is_file(), path
    assert list((out / "rank0" / "logs").glob("events.out.tfevents.*"))

    # rank 0 alone logs: its output has the loss and the metric, rank 1's no INFO line after MONAI's start-up line
    text0, text1 = _rank_output(logs, 0), _rank_output(logs, 1)
    assert "train_loss" in text0 and "val_mean_dice" in text0
    assert [line for line in text1.splitlines() if "INFO" in line and MONAI_STARTUP_LINE not in line] == []


def test_shard_partitions_without_duplicates(monkeypatch):
    items = ["a", "b", "c", "d", "e"]
    assert cdist.shard(items) == items  # one process: everything
    monkeypatch.setattr(cdist, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(cdist, "get_rank", lambda rank=rank: rank)
        shards.append(cdist.shard(items))
    assert shards == [["a", "c", "e"], ["b", "d"]]
    assert cdist.shard([]) == []
    with pytest.raises(ValueError, match="cannot be sharded over 2 ranks"):
        cdist.shard(["a"])


def test_single_process_helpers_are_identities():
    assert not cdist.is_distributed() and cdist.is_main_process()
    assert (cdist.get_rank(), cdist.get_world_size()) == (0, 1)
    t = torch.tensor([1.0, 2.0])
    assert cdist.mean_over_ranks(t) is t
    cdist.barrier()
    cdist.quiet_non_main_process()
    assert logging.root.manager.disable < logging.INFO  # rank 0 keeps its INFO lines
    with pytest.raises(ValueError, match="torch.nn.Module"):
        cdist.broadcast_buffers("not a module")
    with pytest.raises(ValueError, match="network"):
        cdist.sync_buffers_at_start(object())


@pytest.mark.slow
@pytest.mark.parametrize("config_name", CONFIGS)
def test_torchrun_two_processes_stay_in_step(config_name, tmp_path_factory, tmp_path):
    if not (REPO_ROOT / "configs" / config_name).is_file():
        pytest.skip(f"{config_name} not present")
    # 5 training cases (HQ and LQ for the two-stream methods); validation sharded over the 2 ranks
    datalist = _dataset(tmp_path_factory, num_cases=8, shape=(40, 40, 32),
                        num_classes=3 if config_name.startswith("jcas") else 2)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    configs = ",".join([f"configs/{config_name}", "configs/quick.json", "configs/multi_gpu.json"])
    proc = _torchrun(script, [configs, str(datalist.parent), str(datalist), str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    assert rank0.keys() == rank1.keys() and rank0
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], msg=f"parameter {key} differs across ranks")
    assert (out / "models" / "model.pt").is_file()
