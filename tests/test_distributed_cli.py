"""`cramlm train --nproc 2` re-runs itself under torchrun (tensor parallel here); one process then resumes it and
is billed for one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import TINY_RUN, prepare_data

from cramlm.config import load_run_config
from cramlm.train.distributed import torchrun_command


def test_torchrun_command_runs_the_train_module():
    line = torchrun_command(4, ["data", "--budget", "1h"])
    assert line[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in line and line[-5:] == ["-m", "cramlm.train", "data", "--budget", "1h"]


@pytest.mark.dist
def test_nproc_trains_tensor_parallel_and_one_process_resumes(cli, tmp_path):
    data = prepare_data(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "cramlm", "train", str(data), "--nproc", "2", "--model", "tiny", "--recipe", "demo",
           "--budget", "4steps", "--out", str(run), *TINY_RUN, "train.strategy=tp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("4 steps") == 1  # one report, from rank 0
    assert json.loads((run / "results" / "train.json").read_text())["steps"] == 4
    assert json.loads((run / "results" / "cost.json").read_text())["count"] == 2  # both processes are paid for
    assert load_run_config(run / "config.yaml").budget.count == 1  # ... but that is not written into the config

    code, out, err = cli("train", "--resume", run, "--budget", "6steps")
    assert code == 0, err
    assert json.loads((run / "results" / "train.json").read_text())["steps"] == 6
    assert json.loads((run / "results" / "cost.json").read_text())["count"] == 1
