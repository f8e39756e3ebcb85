import json

import pytest

from cramlm.budget import planner
from cramlm.budget.flops import flops_per_token, param_counts
from cramlm.config import resolve_config
from cramlm.train import autopilot

KEYS = ["flops", "params", "tokens", "chinchilla", "hours", "cost_usd", "energy_kwh", "co2_kg", "hp_search",
        "memory_gb_per_device"]


def plan_json(cli, *args):
    code, out, err = cli("plan", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_one_gpu_day_on_a_2080ti_by_hand(cli):
    p = plan_json(cli, "--hardware", "rtx2080ti", "--hours", "24")
    assert set(KEYS) <= set(p)
    # 53.8 TFLOP/s fp16 x 0.4 MFU x 86400 s
    assert p["flops"] == pytest.approx(53.8e12 * 0.4 * 86400)
    assert p["hours"] == 24 and p["cost_usd"] == pytest.approx(4.8)
    assert p["energy_kwh"] == pytest.approx(6.6) and p["co2_kg"] == pytest.approx(3.168)
    assert p["hp_search"] == pytest.approx({"runs": 10, "cost_usd": 48.0, "gpu_hours": 240.0, "energy_kwh": 66.0,
                                            "co2_kg": 31.68})
    ch = p["chinchilla"]
    assert ch["params"] == pytest.approx((p["flops"] / 120) ** 0.5) and ch["tokens"] == pytest.approx(20 * ch["params"])
    assert ch["loss"] > 1.69 and ch["fitted"]["loss"] <= ch["loss"]
    assert set(p["memory_gb_per_device"]) == {"ddp", "zero1", "zero2", "zero3", "zero3_offload"}
    assert p["memory"]["fits"]["strategy"] == "ddp"
    # no --model: the autopilot's choice, which at Cramming's budget is Cramming's model and recipe
    assert p["model"] == p["recommended_model"] == "encoder-16x768" and p["model_source"] == "auto"
    cfg = planner.run_config("bert-crammed")
    assert cfg.model == planner.run_config("encoder-16x768").model
    assert p["tokens"] == pytest.approx(p["flops"] / flops_per_token(cfg.model, 128, 0.25))
    # Turing has no bf16 for Muon's Newton-Schulz: AdamW at Cramming's own 1e-3
    assert p["autopilot"]["optimizer"] == "adamw" and "no native bf16" in p["autopilot"]["schedule"]
    assert p["autopilot"]["batch_size"] == 8192 and p["autopilot"]["lr"] == pytest.approx(1e-3, rel=0.05)


def test_muon_where_bf16_is_native(cli):
    """On an Ampere card the same day trains Muon (DDP fits), at MUON_LR_FACTOR times AdamW's LR."""
    a = plan_json(cli, "--hardware", "a6000", "--hours", "24", "--model", "bert-crammed")["autopilot"]
    assert a["optimizer"] == "muon" and "Muon, peak LR" in a["schedule"]
    assert a["lr"] == pytest.approx(autopilot.MUON_LR_FACTOR * autopilot.choose_lr(a["batch_size"], 768, "adamw"))


def test_dollar_and_flop_budgets(cli):
    p = plan_json(cli, "--hardware", "h100", "--usd", "25", "--mfu", "0.5", "--region", "fr")
    assert p["hours"] == pytest.approx(10.0)  # 25 $ / 2.50 $/h
    assert p["flops"] == pytest.approx(989.5e12 * 0.5 * 36000)
    assert p["co2_kg"] == pytest.approx(10 * 0.7 * 1.1 * 0.056)
    p = plan_json(cli, "--hardware", "a100-80gb", "--count", "4", "--flops", "1e21", "--mfu", "0.5")
    assert p["hours"] == pytest.approx(1e21 / (4 * 312e12 * 0.5) / 3600)
    assert p["gpu_hours"] == pytest.approx(4 * p["hours"])


def test_costing_a_literature_run(cli):
    p = plan_json(cli, "--model", "bert-base", "--tokens", "3.3e10", "--hardware", "v100", "--count", "8")
    cfg = resolve_config(model="bert-base", recipe="crammed")
    per_token = flops_per_token(cfg.model, cfg.data.seq_len, cfg.train.mask_rate)
    assert p["params"] == param_counts(cfg.model)["total"]
    assert p["tokens"] == pytest.approx(3.3e10)
    assert p["flops"] == pytest.approx(3.3e10 * per_token)
    assert p["hours"] == pytest.approx(p["flops"] / (8 * 125e12 * 0.4) / 3600)
    # --params costs 6 N D
    p = plan_json(cli, "--params", "1.5B", "--tokens", "30B", "--hardware", "h100", "--count", "8")
    assert p["flops"] == pytest.approx(6 * 1.5e9 * 30e9)
    # shaped as the family member of that size: its activations count, and the text names it
    assert p["model"] == "encoder-32x2048" and p["memory"]["activations"] is True
    code, out, _ = cli("plan", "--params", "1.5B", "--tokens", "30B", "--hardware", "h100")
    assert "None" not in out and "--params, shaped as encoder-32x2048" in out


def test_causal_objective_recommends_a_decoder(cli):
    p = plan_json(cli, "--hardware", "t4", "--hours", "1", "--objective", "causal")
    assert p["objective"] == "causal" and p["model"].startswith("decoder-")


def test_the_model_grows_with_the_budget_and_a_given_model_is_compared(cli):
    sizes = [plan_json(cli, "--hardware", "a100-80gb", "--hours", str(h))["params"] for h in (0.01, 1, 24, 240)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    code, out, _ = cli("plan", "--hardware", "rtx2080ti", "--hours", "0.1", "--model", "bert-crammed")
    assert code == 0 and "--model auto would train encoder-" in out
    code, out, _ = cli("plan", "--hardware", "rtx2080ti", "--hours", "24")
    assert "(auto, mlm)" in out and "recommended" not in out  # no line that repeats the model


@pytest.mark.parametrize("args, message", [
    (["--hours", "1", "--usd", "2"], "one budget"),
    (["--tokens", "1e9"], "needs --model or --params"),
    (["--hardware", "gtx480"], "unknown hardware"),
    (["--params", "lots", "--tokens", "1e9"], "--params 'lots' is not a number"),
    (["--mfu", "1.5"], "--mfu"),
    (["--model", "gpt-small", "--objective", "mlm"], "does not train the mlm objective"),
    (["--hardware", "t4", "--region", "mars"], "unknown region"),
    (["--hardware", "a100"], "ambiguous: a100-40gb or a100-80gb"),
    (["--hardware", "h100", "--calibrate"], "--calibrate measures this machine"),
])
def test_bad_plans_are_one_line_errors(cli, args, message):
    code, out, err = cli("plan", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_text_output_and_hardware_list(cli):
    code, out, _ = cli("plan", "--hardware", "h100", "--hours", "24", "--model", "bert-crammed")
    assert code == 0
    for label in ("chinchilla", "fitted optimum", "autopilot", "recommended", "cost", "hp search",
                  "memory GB/device", "fits"):
        assert label in out
    assert "$60.00" in out  # 24 h x 2.50 $/h
    assert "4.4x fewer parameters than the optimum" in out  # 534M optimal vs the 120M preset
    code, out, _ = cli("plan", "--list-hardware")
    assert code == 0 and all(n in out for n in ("v100", "rtx2080ti", "h100-sxm", "b200", "tpu-v4"))
    code, out, _ = cli("plan", "--list-hardware", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["h100-sxm"]["bf16_tflops"] == pytest.approx(989.5) and rows["v100"]["bf16_tflops"] is None


def test_write_config_is_accepted_by_train(cli, tmp_path):
    path = tmp_path / "recipe.yaml"
    code, out, err = cli("plan", "--hardware", "v100", "--count", "2", "--usd", "40", "--model", "tiny",
                         "--write-config", path)
    assert code == 0, err
    cfg = resolve_config(config_file=path)
    assert cfg.budget.limit == "40usd" and cfg.budget.hardware == "v100" and cfg.budget.count == 2
    assert cfg.model == resolve_config(model="tiny").model and cfg.data.vocab_size == cfg.model.vocab_size
    assert cfg.train.precision == "fp16"  # Volta has no bf16
    p = plan_json(cli, "--hardware", "v100", "--count", "2", "--usd", "40", "--model", "tiny")
    a = p["autopilot"]  # the autopilot's numbers, written out
    assert (cfg.train.batch_size, cfg.train.micro_batch_size) == (a["batch_size"], a["micro_batch_size"])
    assert cfg.train.lr == pytest.approx(a["lr"], rel=0.01)
    assert cfg.train.optimizer == a["optimizer"] == "adamw" and cfg.train.strategy == "auto"  # Volta: no bf16
    code, _, err = cli("train", "--config", path)  # the config validates; only the data dir is missing
    assert code == 2 and "DATA_DIR" in err


def test_a_sharded_fit_plans_and_writes_adamw(cli, tmp_path):
    """Where only ZeRO/FSDP fits, PyTorch's Muon cannot run: the plan's optimizer and LR are AdamW's."""
    path = tmp_path / "recipe.yaml"
    args = ("--hardware", "rtx2080ti", "--hours", "24", "--model", "encoder-24x1536")
    code, _, err = cli("plan", *args, "--write-config", path)
    assert code == 0, err
    p = plan_json(cli, *args)
    assert p["memory"]["fits"]["strategy"].startswith("zero")
    a = p["autopilot"]
    assert a["optimizer"] == "adamw" and "AdamW, peak LR" in a["schedule"]
    assert a["lr"] == pytest.approx(autopilot.choose_lr(a["batch_size"], 1536, "adamw"))
    cfg = resolve_config(config_file=path)
    assert cfg.train.optimizer == "adamw" and cfg.train.strategy == "fsdp"


def test_memory_plan_shrinks_the_micro_batch_or_shards():
    from cramlm.budget.hardware import Hardware, get

    cfg = planner.run_config("bert-crammed")
    mem = planner.memory_plan(cfg, 120e6, get("t4"), 1, mixed=True)  # ~9.8 GB fit in 90% of 16 GB
    assert mem["fits"] == {"strategy": "ddp", "micro_batch_size": 128}
    small = Hardware("small", {"fp16": 1e12}, 4.0, None, 50, 0.1)
    mem = planner.memory_plan(cfg, 120e6, small, 1, mixed=True)
    assert mem["fits"]["strategy"] == "ddp" and mem["fits"]["micro_batch_size"] < 128
    assert mem["gb"]["ddp"] > 4.0


def test_calibration_runs_real_steps():
    cfg = resolve_config(model="tiny", overrides=["model.n_layers=1", "model.d_model=32", "model.n_heads=2",
                                                  "model.d_ff=64", "model.vocab_size=256", "data.seq_len=32"])
    c = planner.calibrate(cfg, steps=2, step_seconds=0.05)
    assert c["device"] == "cpu" and c["micro_batch_size"] >= 1
    assert 0 < c["mfu"] < 2 and c["tokens_per_s"] > 0
    assert c["flops_per_s"] == pytest.approx(c["tokens_per_s"] * flops_per_token(cfg.model, 32, 0.25))


def test_calibrated_mfu_drives_the_plan(cli, monkeypatch):
    monkeypatch.setattr(planner, "calibrate", lambda cfg, steps: {"mfu": 0.25, "device": "cpu", "dtype": "fp32",
                                                                   "tokens_per_s": 1e3})
    p = plan_json(cli, "--hardware", "cpu", "--hours", "2", "--model", "tiny", "--calibrate")
    assert p["mfu"] == 0.25 and p["mfu_source"] == "calibrated"
    assert p["flops"] == pytest.approx(p["hardware"]["peak_flops_per_s"] * 0.25 * 7200)


def test_offload_is_the_last_resort():
    from cramlm.budget.hardware import Hardware

    cfg = planner.run_config("bert-crammed")
    # 2e9 parameters: 32 GB of states on one 24 GB device; only offload (8 GB) fits
    mem = planner.memory_plan(cfg, 2e9, Hardware("g", {"bf16": 1e14}, 24.0, None, 300, 1.0), 1, mixed=True)
    assert mem["fits"]["strategy"] == "zero3_offload" and mem["fits"]["micro_batch_size"] >= 1
    # on 4 such devices ZeRO-3 shards the states (8 GB each): no offload needed
    mem = planner.memory_plan(cfg, 2e9, Hardware("g", {"bf16": 1e14}, 24.0, None, 300, 1.0), 4, mixed=True)
    assert mem["fits"]["strategy"] in ("zero2", "zero3")


def test_dollars_need_a_device_to_rent(cli, monkeypatch):
    from cramlm.budget.hardware import Hardware

    monkeypatch.setattr(planner, "detect", lambda: Hardware("cpu", {"fp32": 1e11}, 24, None, 65, 0.1, "host CPU"))
    code, _, err = cli("plan", "--usd", "100")
    assert code == 2 and "--usd prices the device you rent" in err
