"""Elastic determinism through the real CLI: `cramlm train --nproc 2` on two gloo processes ends on the weights of
the same run in one process (ddp, zero1; fsdp after a 1 -> 2 resume), and a 2-process run resumed in one process
does too. The masks of a sequence depend on (seed, epoch, sequence) only, so the only difference left is the order
of float reductions.

Three torchrun launches in all (each costs seconds of imports); the epoch (an odd number of sequences) ends inside
the run, so the ranks' shares of the last global batch of the epoch differ in size.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cramlm.train import checkpoint as ckpt

STEPS = 8
RUN = ["--model", "tiny", "--recipe", "demo", "--budget", f"{STEPS}steps", "model.n_layers=2", "model.d_model=32",
       "model.n_heads=2", "model.d_ff=64", "train.batch_size=16", "train.micro_batch_size=4", "train.batch_ramp=none",
       "budget.hardware=cpu", "train.device=cpu", "train.log_every=1", "train.val_batches=2",
       "train.checkpoint_every=4steps", "train.keep_checkpoints=2", "train.optimizer=adamw"]
TOLERANCE = 1e-5  # float reduction order (the measured differences are in docs/distributed.md)
# AdamW: Muon (train.optimizer=muon) orthogonalises in bf16, which turns reduction-order noise into
# differences of ~1e-4 after 8 steps even between two micro-batch sizes in one process.


def small_data(root: Path) -> Path:
    """About a hundred sequences of 32 tokens: 8 steps of 16 cross an epoch."""
    from cramlm.config import DataConfig
    from cramlm.data.prepare import prepare

    words = "the cat sat on a mat while dogs ran in parks and birds sang songs of rivers trees stones".split()
    rng = random.Random(1)
    docs = (" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) for _ in range(71))
    (root / "corpus.txt").write_text("\n\n".join(docs))
    cfg = DataConfig(seq_len=32, vocab_size=128, val_fraction=0.1, min_chars=0, max_tokens_per_char_z=None)
    prepare([str(root / "corpus.txt")], root / "data", cfg, progress=False)
    return root / "data"


def torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-m", "cramlm", "train", *map(str, args), "--nproc", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def weights(run: Path) -> dict[str, torch.Tensor]:
    model, _ = ckpt.load_model(run)
    return model.state_dict()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def cut_back(run: Path, copy: Path) -> Path:
    """A copy of `run` as if it had stopped at its first checkpoint (step 4 of 8)."""
    shutil.copytree(run, copy)
    for path in (copy / "final", copy / "results", copy / "checkpoints" / f"step-{STEPS}"):
        shutil.rmtree(path)
    assert [p.name for p in ckpt.checkpoint_dirs(copy)] == [f"step-{STEPS // 2}"]
    return copy


@pytest.mark.dist
def test_one_two_processes_and_resumes_across_counts_end_on_the_same_weights(cli, tmp_path):
    from cramlm.data.store import Dataset

    data = small_data(tmp_path)
    sequences = len(Dataset(data).sequences("train"))
    assert sequences % 2 == 1 and sequences < STEPS * 16, sequences  # the premise: an odd epoch ends mid-run

    code, _, err = cli("train", data, *RUN, "--out", tmp_path / "one")
    assert code == 0, err
    reference = weights(tmp_path / "one")
    torch.manual_seed(0)  # the trainer's initialisation, to show that training moved the weights
    from cramlm.models.registry import build_model

    init = build_model(ckpt.load_model(tmp_path / "one")[1].model).state_dict()
    assert max_diff(init, reference) > 1e-2  # the equalities below are not trivial

    for strategy in ("ddp", "zero1"):
        torchrun(data, *RUN, "--out", tmp_path / strategy, f"train.strategy={strategy}")
        assert max_diff(weights(tmp_path / strategy), reference) < TOLERANCE, strategy
    # 1 -> 2: the one-process run, stopped at step 4, ends under FSDP on two processes
    resumed = cut_back(tmp_path / "one", tmp_path / "one-to-fsdp")
    torchrun("--resume", resumed, "train.strategy=fsdp")
    assert max_diff(weights(resumed), reference) < TOLERANCE, "1 -> 2 processes (fsdp)"
    # 2 -> 1: the two-process ZeRO-1 run, stopped at step 4, ends in one process
    resumed = cut_back(tmp_path / "zero1", tmp_path / "zero1-to-one")
    code, _, err = cli("train", "--resume", resumed)
    assert code == 0, err
    assert max_diff(weights(resumed), reference) < TOLERANCE, "2 -> 1 process"
