"""configs/multi_gpu.json under torchrun: 2 CPU processes, gloo backend, a few iterations per trainer.

Each rank saves every trainable tensor at the end; after training they must be identical across ranks (the
weights start from rank 0 and every gradient is averaged), for one-network, teacher, peer and T-matrix trainers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from monai.bundle import ConfigWorkflow
configs, dataset_dir, datalist, out = sys.argv[1].split(','), sys.argv[2], sys.argv[3], sys.argv[4]
wf = ConfigWorkflow(config_file=configs, workflow_type='train', dataset_dir=dataset_dir, datalist=datalist,
                    output_dir=out, device='cpu', max_epochs=1, epoch_length=3, val_interval=100)
wf.initialize()
trainer = wf.parser.get_parsed_content('train::trainer')
state = {}
def keep(engine):
    rank = dist.get_rank()
    for i, opt in enumerate([engine.optimizer, *engine.extra_optimizers()]):
        for j, group in enumerate(opt.param_groups):
            for k, p in enumerate(group['params']):
                state[f'{i}.{j}.{k}'] = p.detach().clone()
    torch.save(state, f'{out}/rank{rank}.pt')
from ignite.engine import Events
trainer.add_event_handler(Events.COMPLETED, keep)
wf.run()
"""

CONFIGS = ["supervised_la.json", "alc_la.json", "spguided_la.json", "jcas_la.json"]


@pytest.mark.slow
@pytest.mark.parametrize("config_name", CONFIGS)
def test_torchrun_two_processes_stay_in_step(config_name, demo_dataset, demo_dataset_3class, tmp_path):
    if not (REPO_ROOT / "configs" / config_name).is_file():
        pytest.skip(f"{config_name} not present")
    datalist = demo_dataset_3class if config_name.startswith("jcas") else demo_dataset
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    configs = ",".join([f"configs/{config_name}", "configs/quick.json", "configs/multi_gpu.json"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port on 127.0.0.1 for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", port,
           str(script), configs, str(datalist.parent), str(datalist), str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    assert rank0.keys() == rank1.keys() and rank0
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], msg=f"parameter {key} differs across ranks")
    assert (out / "models" / "model.pt").is_file()
