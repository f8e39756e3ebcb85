"""`cramlm sweep` (grid, resume, recipe) and muP / Muon runs through the trainer (exact resume, FLOPs)."""

import json
import shutil

import pytest
import torch

from cramlm.config import load_run_config, resolve_config
from cramlm.train import checkpoint as ckpt
from cramlm.train import muon_cost
from cramlm.train import sweep as sw
from cramlm.train.trainer import train

SWEEP = ["--budget", "12steps", "--widths", "32,64", "--lr", "1e-3..1e-2", "--trials", "2", "--depth", "1",
         "train.val_batches=2", "budget.hardware=cpu"]


@pytest.fixture(scope="module")
def data_dir(tiny_dataset):
    return tiny_dataset


def test_lr_grid_and_width_parsing():
    assert sw.lr_grid("1e-4..1e-2", 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert sw.lr_grid("3e-3,1e-3", 5) == [1e-3, 3e-3]
    assert sw.parse_widths("128,64,64") == [64, 128]
    for bad in ("1e-2..1e-4", "x..1", "-1,2"):
        with pytest.raises(Exception, match="--lr"):
            sw.lr_grid(bad, 3)
    with pytest.raises(Exception, match="multiples of 16"):
        sw.parse_widths("60")


def test_sweep_runs_resumes_and_writes_a_recipe(data_dir, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(muon_cost, "native_bf16", lambda device: True)  # step budgets: auto asks for native bf16
    out, recipe = tmp_path / "sweep", tmp_path / "r.yaml"
    code, text, err = cli("sweep", data_dir, *SWEEP, "--out", out, "--write-config", recipe, "--target-width", "128")
    assert code == 0, err
    state = json.loads((out / "sweep.json").read_text())
    assert [t["status"] for t in state["trials"]] == ["completed"] * 4
    assert {(t["width"], round(t["lr"], 6)) for t in state["trials"]} == {(w, lr) for w in (32, 64)
                                                                          for lr in (1e-3, 1e-2)}
    assert state["batch_size"] == 32  # fixed by the first trial's autopilot, then pinned for the rest
    assert all(load_run_config(out / t["run"] / "config.yaml").train.batch_size == 32 for t in state["trials"][1:])
    assert state["optimizer"] == "muon"  # what auto chose on one device, pinned like the batch
    assert all(load_run_config(out / t["run"] / "config.yaml").train.optimizer == "muon" for t in state["trials"][1:])
    best = min((t for t in state["trials"] if t["width"] == 64), key=lambda t: t["loss"])
    assert "held-out loss" in text and "mup: best LR" in text and "sweep cost" in text
    cfg = resolve_config(config_file=recipe)
    assert (cfg.model.d_model, cfg.model.parametrization, cfg.model.base_width) == (128, "mup", 32)
    assert cfg.train.lr == pytest.approx(best["lr"], rel=1e-3) and cfg.train.batch_size == 32
    assert cfg.train.optimizer == "muon"  # the LR is Muon's: the recipe keeps it under any strategy

    # a killed sweep: one trial lost (no dir, pending) -> the same command runs only that trial
    state["trials"][1].update(status="pending", loss=None)
    (out / "sweep.json").write_text(json.dumps(state))
    shutil.rmtree(out / state["trials"][1]["run"])
    untouched = (out / state["trials"][0]["run"] / "final" / "model.safetensors").stat().st_mtime_ns
    code, text, err = cli("sweep", data_dir, *SWEEP, "--out", out)
    assert code == 0, err
    assert "1 of 4 trials left" in text and text.count("trial ") == 1
    assert json.loads((out / "sweep.json").read_text())["trials"][1]["status"] == "completed"
    assert (out / state["trials"][0]["run"] / "final" / "model.safetensors").stat().st_mtime_ns == untouched

    # the recipe trains; another grid in the same dir is refused before anything runs
    code, _, err = cli("train", data_dir, "--config", recipe, "--budget", "2steps", "--out", tmp_path / "big",
                       "train.val_batches=2")
    assert code == 0, err
    assert load_run_config(tmp_path / "big" / "config.yaml").model.parametrization == "mup"
    code, _, err = cli("sweep", data_dir, *SWEEP[:-4], "--trials", "3", "--out", out)
    assert code == 2 and "another sweep" in err


def test_a_sweep_file_from_before_the_optimizer_was_recorded_continues_with_adamw(tmp_path):
    sweep = sw.plan(tmp_path, "1m", "encoder", 2, [32], [1e-3, 1e-2], ["mup"])
    fresh, started = sweep.to_dict(), {**sweep.to_dict(), "batch_size": 32}
    del fresh["optimizer"], started["optimizer"]
    assert sw.Sweep.from_dict(fresh).optimizer is None  # no trial done yet: the first one decides
    old = sw.Sweep.from_dict(started)  # its first trial trained AdamW, the default then
    assert old.optimizer == "adamw" and sw.trial_config(old, old.trials[1], []).train.optimizer == "adamw"
    named = sw.trial_config(old, old.trials[1], ["train.optimizer=muon"])
    assert named.train.optimizer == "muon"  # an optimizer the user names wins


def test_sweep_refuses_bad_input_before_writing(data_dir, tmp_path, cli):
    out = tmp_path / "s"
    for args, message in [((data_dir, "--widths", "32", "--out", out), "--budget"),
                          ((data_dir, "--budget", "5steps", "--lr", "1e-2..1e-3", "--out", out), "--lr"),
                          ((data_dir, "--budget", "5steps", "nosuch.key=1", "--out", out), "unknown config key"),
                          ((tmp_path, "--budget", "5steps", "--out", out), "manifest"),
                          ((data_dir, "--budget", "5steps", "--parametrization", "x", "--out", out), "mup, standard")]:
        code, _, err = cli("sweep", *args)
        assert code == 2 and message in err, err
        assert not out.exists()


def test_coord_check_cli_writes_the_plot(tmp_path, cli):
    code, text, err = cli("sweep", "--coord-check", "--widths", "32,64", "--out", tmp_path)
    assert code == 0, err
    assert "logits" in text and (tmp_path / "coord_check.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "coord_check.json").read_text())
    assert {r["parametrization"] for r in rows} == {"standard", "mup"} and {r["width"] for r in rows} == {32, 64}
    code, text, err = cli("report", tmp_path, "--out", tmp_path / "report.html")
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert '<img alt="Coordinate check' in page and "Logits at width 64 / width 32: standard" in page


@pytest.mark.parametrize("extra", [["train.optimizer=auto"], ["train.optimizer=adamw", "model.parametrization=mup", "model.base_width=16"],
                                   ["train.optimizer=muon", "model.parametrization=mup", "model.base_width=16"]])
def test_mup_and_muon_runs_resume_bit_exact(data_dir, tmp_path, extra, monkeypatch):
    monkeypatch.setattr(muon_cost, "native_bf16", lambda device: True)  # step budgets: auto asks for native bf16
    cfg = resolve_config(model="tiny", recipe="demo", overrides=[
        "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.batch_size=8",
        "train.micro_batch_size=4", "budget.hardware=cpu", "train.val_batches=2", "budget.limit=8steps",
        "train.checkpoint_every=4steps", *extra])
    run = tmp_path / "run"
    res = train(cfg, data_dir, run, progress=False)
    from cramlm.budget.flops import optimizer_flops_per_step

    optimizer = res["autopilot"]["optimizer"]
    assert optimizer == ("adamw" if "train.optimizer=adamw" in extra else "muon")  # auto: Muon on one device
    fps = optimizer_flops_per_step(load_run_config(run / "config.yaml").model, optimizer)
    assert (fps > 0) == (optimizer == "muon")
    assert res["flops"] == pytest.approx(res["tokens"] * res["flops_per_token"] + res["steps"] * fps)
    half = tmp_path / "half"
    shutil.copytree(run, half)
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "checkpoints" / "step-8")
    train(load_run_config(half / "config.yaml"), data_dir, half, resume=True, progress=False)
    ref, got = (ckpt.load_weights(r / "final" / "model.safetensors") for r in (run, half))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
