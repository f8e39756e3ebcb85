"""The trainer end to end on a tiny model and dataset: budgets, exact resume after SIGKILL, guards, the CLI."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cramlm.config import load_run_config, resolve_config
from cramlm.train import checkpoint as ckpt
from cramlm.train import trainer as trainer_mod
from cramlm.train.logging import read_metrics
from cramlm.train.trainer import train

TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.batch_size=16",
        "train.micro_batch_size=4", "budget.hardware=cpu", "train.log_every=1", "train.val_batches=2"]


@pytest.fixture(scope="module")
def data_dir(tiny_dataset):
    return tiny_dataset


def tiny_cfg(*overrides):
    return resolve_config(model="tiny", recipe="demo", overrides=TINY + list(overrides))


def final_weights(run):
    return ckpt.load_weights(Path(run) / "final" / "model.safetensors")


def test_step_budget_run_writes_the_run_dir(data_dir, tmp_path, monkeypatch):
    from cramlm.train import muon_cost

    monkeypatch.setattr(muon_cost, "native_bf16", lambda device: True)  # a step budget: auto asks for native bf16
    res = train(tiny_cfg("budget.limit=12steps", "train.checkpoint_every=5steps", "train.optimizer=auto"), data_dir,
                tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert res["status"] == "completed" and res["steps"] == 12
    assert res["tokens"] == sum(r["batch_size"] for r in read_metrics(run) if "loss" in r) * 32
    from cramlm.budget.flops import optimizer_flops_per_step

    assert res["autopilot"]["optimizer"] == "muon"  # auto on one device: its Newton-Schulz matmuls count
    fps = optimizer_flops_per_step(load_run_config(run / "config.yaml").model, "muon")
    assert fps > 0 and res["flops"] == pytest.approx(res["tokens"] * res["flops_per_token"] + res["steps"] * fps)
    for key in ("train_loss", "val_loss", "tokens_per_second", "mfu", "seconds"):
        assert res[key] > 0
    assert json.loads((run / "results" / "train.json").read_text())["steps"] == 12
    assert json.loads((run / "results" / "cost.json").read_text())["usd"] > 0
    assert [p.name for p in ckpt.checkpoint_dirs(run)] == ["step-10", "step-12"]
    cfg = load_run_config(run / "final" / "config.yaml")
    assert cfg.model.vocab_size == res_vocab(data_dir) and cfg.model.max_seq_len == 32
    assert (run / "tokenizer.json").is_file()
    model, _ = ckpt.load_model(run)
    saved = final_weights(run)
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(t, saved[k]) for k, t in model.state_dict().items())
    records = [r for r in read_metrics(run) if "loss" in r]
    sizes = [r["batch_size"] for r in records]
    assert sizes == sorted(sizes) and sizes[0] == 4 and sizes[-1] == 16  # the ramp, by accumulation
    lrs = [r["lr"] for r in records]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # one-cycle


def res_vocab(data_dir):
    return json.loads((Path(data_dir) / "manifest.json").read_text())["vocab_size"]


def test_wall_clock_budget_stops_in_time_even_mid_step(data_dir, tmp_path):
    """One optimizer step of 4096 sequences takes far longer than the 2 s budget: the micro-step check cuts it."""
    cfg = tiny_cfg("budget.limit=2s", "train.batch_size=4096", "train.batch_ramp=none")
    started = time.monotonic()
    res = train(cfg, data_dir, tmp_path / "run", progress=False)
    assert 1.8 <= res["seconds"] <= 3.0  # the promise is 2% or 10 s; a tiny model does far better
    assert time.monotonic() - started < 15
    assert res["steps"] == 1 and res["tokens"] < 4096 * 32


CHILD = """
import sys, torch
torch.set_num_threads(1)
from cramlm.config import resolve_config
from cramlm.train.trainer import train
train(resolve_config(model="tiny", recipe="demo", overrides=sys.argv[3:]), sys.argv[1], sys.argv[2], progress=False)
"""


def test_sigkill_then_resume_is_bit_identical(data_dir, tmp_path):
    overrides = ["budget.limit=30steps", "train.checkpoint_every=3steps", "model.d_model=64", "model.d_ff=128"]
    cfg = tiny_cfg(*overrides)
    train(cfg, data_dir, tmp_path / "ref", progress=False)

    kill_at = random.Random().randint(4, 24)
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(run), *TINY, *overrides], env=env)
    try:
        while child.poll() is None:
            steps = [r.get("step", 0) for r in read_metrics(run)]
            if steps and max(steps) >= kill_at:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}"
    assert not (run / "final").exists()

    res = train(load_run_config(run / "config.yaml"), data_dir, run, resume=True, progress=False)
    assert res["steps"] == 30
    ref, got = final_weights(tmp_path / "ref"), final_weights(run)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    assert any(r.get("event") == "resume" for r in read_metrics(run))


class Poisoned(torch.nn.Module):
    """Wraps a model: the loss of chosen forward calls is replaced (NaN, or a spike)."""

    def __init__(self, model, bad_calls, value):
        super().__init__()
        self.model, self.bad_calls, self.value, self.calls = model, set(bad_calls), value, 0

    def forward(self, **batch):
        out = self.model(**batch)
        self.calls += 1
        if self.calls in self.bad_calls:
            out.loss = out.loss * 0 + self.value if self.value != self.value else out.loss * self.value
        return out


def _poison(monkeypatch, bad_calls, value):
    build = trainer_mod.build_model
    monkeypatch.setattr(trainer_mod, "build_model", lambda cfg: Poisoned(build(cfg), bad_calls, value))


def test_non_finite_steps_are_skipped(data_dir, tmp_path, monkeypatch):
    _poison(monkeypatch, {3}, float("nan"))  # a forward of step 3 (batch ramp: 1 micro-batch per step early on)
    res = train(tiny_cfg("budget.limit=8steps"), data_dir, tmp_path / "run", progress=False)
    assert res["skipped_steps"] == 1 and res["steps"] == 8
    records = [r for r in read_metrics(tmp_path / "run") if "skipped" in r]
    assert [r["skipped"] for r in records[:4]] == [0, 0, 1, 0] and records[2]["loss"] is None
    assert all(torch.isfinite(t).all() for t in final_weights(tmp_path / "run").values())
    assert res["val_loss"] == res["val_loss"] and res["train_loss"] is not None


def test_repeated_spikes_roll_back_and_lower_the_lr(data_dir, tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(20, 200)), 50.0)  # from some point on, every loss is 50x
    cfg = tiny_cfg("budget.limit=24steps", "train.checkpoint_every=4steps", "train.batch_ramp=none",
                   "train.batch_size=4")
    res = train(cfg, data_dir, tmp_path / "run", progress=False)
    events = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "rollback"]
    assert res["rollbacks"] >= 1 and events
    assert events[0]["lr_mult"] == 0.5 and events[0]["to"].startswith("step-")


def test_sigterm_checkpoints_and_stops_cleanly(data_dir, tmp_path, monkeypatch):
    build = trainer_mod.build_model

    class Terminates(Poisoned):
        def forward(self, **batch):
            if self.calls + 1 in self.bad_calls:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().forward(**batch)

    monkeypatch.setattr(trainer_mod, "build_model", lambda cfg: Terminates(build(cfg), {5}, 1.0))
    run = tmp_path / "run"
    res = train(tiny_cfg("budget.limit=30steps", "train.batch_ramp=none", "train.batch_size=4"), data_dir, run,
                progress=False)
    assert res["status"] == "interrupted" and res["signal"] == "SIGTERM" and res["step"] == 5
    assert [p.name for p in ckpt.checkpoint_dirs(run)] == ["step-5"] and not (run / "final").exists()
    assert signal.getsignal(signal.SIGTERM) is not None and signal.getsignal(signal.SIGTERM) != signal.SIG_IGN
    monkeypatch.setattr(trainer_mod, "build_model", lambda cfg: Poisoned(build(cfg), set(), 1.0))
    res = train(load_run_config(run / "config.yaml"), data_dir, run, resume=True, progress=False)
    assert res["status"] == "completed" and res["steps"] == 30


def test_auto_ramp_follows_the_noise_scale(data_dir, tmp_path):
    res = train(tiny_cfg("budget.limit=12steps", "train.batch_ramp=auto", "train.batch_size=32"), data_dir,
                tmp_path / "run", progress=False)
    records = [r for r in read_metrics(tmp_path / "run") if "noise_scale" in r]
    assert len(records) == 12 and res["steps"] == 12
    sizes = [r["batch_size"] for r in records]
    assert sizes[0] == 8 and sizes == sorted(sizes) and sizes[-1] <= 32
    assert any(r["noise_scale"] is not None and r["noise_scale"] > 0 for r in records)


def test_cli_trains_and_resume_extends_the_budget(cli, data_dir, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", data_dir, "--model", "tiny", "--recipe", "demo", "--budget", "20steps",
                         "--out", run, *TINY)
    assert code == 0, err
    assert "20 steps" in out and (run / "final" / "model.safetensors").is_file()
    code, _, err = cli("train", data_dir, "--model", "tiny", "--budget", "20steps", "--out", run, *TINY)
    assert code == 2 and "already holds a run" in err
    code, out, err = cli("train", "--resume", run, "--budget", "24steps")
    assert code == 0, err
    assert "24 steps" in out
    assert load_run_config(run / "config.yaml").budget.limit == "24steps"


def test_heldout_losses_are_on_fixed_positions(data_dir):
    import math

    import numpy as np

    from cramlm.data.loader import BatchLoader
    from cramlm.data.store import Dataset
    from cramlm.eval.heldout import heldout_loss, unigram_loss
    from cramlm.models.registry import build_model

    ds = Dataset(data_dir)
    cfg = trainer_mod.with_dataset_shape(tiny_cfg(), ds)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    a = heldout_loss(model, ds, "mlm", 0.15, n_batches=3, batch_size=4, seed=7)
    assert a == heldout_loss(model, ds, "mlm", 0.15, n_batches=3, batch_size=4, seed=7)
    assert a != heldout_loss(model, ds, "mlm", 0.15, n_batches=3, batch_size=4, seed=8)
    assert abs(a - math.log(ds.vocab_size)) < 0.5  # an untrained model is close to uniform

    counts = np.bincount(np.asarray(ds.sequences("train")).ravel(), minlength=ds.vocab_size)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + ds.vocab_size)
    loader = BatchLoader(ds, "val", "mlm", 0.15, seed=7)
    labels = torch.cat([loader.next_batch(4)["labels"] for _ in range(3)])
    expected = -log_p[labels[labels != -100].numpy()].mean()
    assert unigram_loss(ds, 0.15, n_batches=3, batch_size=4, seed=7) == pytest.approx(expected)
    assert expected < math.log(ds.vocab_size)
