"""`train.strategy=deepspeed` on two gloo processes: ZeRO-1, 2 and 3 train like one process, checkpoint through the
trainer's atomic commit, resume, and consolidate `final/`. One torchrun launch runs all three stages (DeepSpeed
compiles a CPU communication op on its first run, about 45 s, cached in TORCH_EXTENSIONS_DIR); this file is also
the worker script that launch runs. Skipped without the optional `deepspeed` extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import max_diff, prepare_data, tiny_run_config

from cramlm.errors import CramlmError
from cramlm.train import checkpoint as ckpt

# a causal model: its batches do not depend on the rank (MLM masks do), so two ranks see exactly one process's data;
# sinusoidal positions bring a 0-dim parameter (the position scale), which DeepSpeed cannot broadcast as is
DS_RUN = ["model.arch=decoder", "model.positions=sinusoidal", "train.batch_ramp=none", "budget.limit=4steps"]
STAGES = (1, 2, 3)


def worker(out: Path) -> None:
    from cramlm.train.distributed import DistributedStrategy
    from cramlm.train.trainer import train as run

    def go(run_dir: Path, *overrides: str, resume: bool = False) -> dict:
        cfg = tiny_run_config(*DS_RUN, "train.strategy=deepspeed", *overrides)
        return run(cfg, out / "data", run_dir, resume=resume, progress=False,
                   strategy=DistributedStrategy.from_env(cfg.train))

    rank = int(os.environ["RANK"])
    results = {stage: go(out / f"run-{stage}", f"train.deepspeed.stage={stage}") for stage in STAGES}
    if rank == 0:
        shutil.copytree(out / "run-3" / "final", out / "final-3-step-4")
    results["resumed"] = go(out / "run-3", "train.deepspeed.stage=3", "budget.limit=6steps", resume=True)
    (out / f"deepspeed-{rank}.json").write_text(json.dumps(results, default=str))


@pytest.mark.dist
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (optional extra: pip install 'cramlm[deepspeed]')")
def test_deepspeed_zero_stages_train_like_one_process_and_resume(tmp_path):
    from cramlm.config import TrainConfig
    from cramlm.train.deepspeed_strategy import DeepSpeedStrategy
    from cramlm.train.distributed import Distributed
    from cramlm.train.trainer import train as run

    data = prepare_data(tmp_path)
    one = tmp_path / "run-one"
    run(tiny_run_config(*DS_RUN), data, one, progress=False)
    reference = ckpt.load_weights(one / "final" / ckpt.WEIGHTS)
    run(tiny_run_config(*DS_RUN, "budget.limit=6steps"), data, one, resume=True, progress=False)
    reference_resumed = ckpt.load_weights(one / "final" / ckpt.WEIGHTS)
    assert max_diff(reference, reference_resumed) > 1e-3  # training moves the weights: the matches are not trivial

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache" / "cramlm" / "torch_extensions"))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"deepspeed-{r}.json").read_text()) for r in (0, 1)]
    for name in ranks[0]:  # both ranks report the same run
        assert ranks[0][name]["steps"] == ranks[1][name]["steps"], name
    for stage in STAGES:
        assert ranks[0][str(stage)]["steps"] == 4, stage
        final = tmp_path / ("final-3-step-4" if stage == 3 else f"run-{stage}/final")
        got = ckpt.load_weights(final / ckpt.WEIGHTS)
        assert max_diff(got, reference) < 5e-5, f"ZeRO-{stage}"
    # a committed checkpoint holds DeepSpeed's files (one optimizer partition per rank) under our checksums
    latest = ckpt.latest_checkpoint(tmp_path / "run-3")
    assert latest.name == "step-6" and ranks[0]["resumed"]["steps"] == 6
    listed = json.loads((latest / ckpt.STATE).read_text())["files"]
    assert sum("optim_states" in name for name in listed) == 2
    got = ckpt.load_weights(tmp_path / "run-3" / "final" / ckpt.WEIGHTS)
    assert max_diff(got, reference_resumed) < 5e-5, "ZeRO-3, resumed"
    # DeepSpeed's partitions resume under DeepSpeed only, on as many processes as wrote them
    with pytest.raises(CramlmError, match="no .metadata"):
        run(tiny_run_config(*DS_RUN, "budget.limit=8steps"), data, tmp_path / "run-3", resume=True, progress=False)
    one_rank = DeepSpeedStrategy(Distributed(world_size=1, strategy="deepspeed"), TrainConfig(strategy="deepspeed"))
    with pytest.raises(CramlmError, match="partitioned over 2 processes"):
        one_rank.read_state(latest, None, None)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
