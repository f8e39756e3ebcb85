"""The budget decides: model size, micro-batch, batch target and peak LR as functions of the budget, and their use
by the trainer (decision line, checkpoints, resume) and the planner (the same choice, Cramming's GPU-day)."""

import json

import pytest
import torch

from cramlm.budget import hardware
from cramlm.config import load_run_config, resolve_config
from cramlm.errors import CramlmError
from cramlm.models.family import FAMILY, family, parse
from cramlm.train import autopilot
from cramlm.train import trainer as trainer_mod
from cramlm.train.logging import read_metrics
from cramlm.train.trainer import train

CPU = torch.device("cpu")
CPU_PEAK = 1e11  # FLOP/s: what a 2-core box reaches in fp32 matmuls


def crammed(*overrides):
    return resolve_config(model="bert-crammed", recipe="crammed", overrides=["data.vocab_size=8192", *overrides])


def decide_cpu(budget, *overrides, **kw):
    """A CPU decision whose 'measurement' is the FLOPs model at MFU 50%."""
    def measure(model_cfg, micro):
        from cramlm.budget.flops import flops_per_token

        return 0.5 * CPU_PEAK / flops_per_token(model_cfg, 128, 0.25)
    return autopilot.decide(crammed(f"budget.limit={budget}", *overrides), choose_model=True, device=CPU,
                            dtype=None, peak_flops=CPU_PEAK, measure=measure, **kw)


def test_family_members_are_valid_exportable_models():
    from cramlm.config import ModelConfig
    from cramlm.models.registry import build_model

    assert parse("encoder-16x768").model_section()["d_ff"] == 3072  # bert-crammed is a member
    assert parse("decoder-12x768").model_section()["d_ff"] == 4096  # gpt-small's SwiGLU width
    assert parse("encoder-5x100") is None and parse("bert-crammed") is None
    for shape in FAMILY[:3] + family("decoder")[:3]:
        cfg = ModelConfig(**shape.model_section())
        assert cfg.positions == "rotary" and cfg.d_model // cfg.n_heads == 64 and cfg.arch == shape.arch
        with torch.device("meta"):
            build_model(cfg)
    assert resolve_config(model="encoder-4x256").model.d_model == 256  # --model accepts member names


def test_batch_target_grows_with_the_budget_and_stays_bounded():
    targets = [autopilot.choose_batch(s, 32, 8192, "linear", 0.6) for s in (1e3, 1e4, 1e5, 1e6, 1e7, 1e9)]
    assert targets == sorted(targets) and targets[0] == 32 and targets[-1] == 8192
    assert all(t % 32 == 0 and (t // 32) & (t // 32 - 1) == 0 for t in targets)  # power-of-two multiples
    for s, t in zip((1e4, 1e5, 1e6), targets[1:4]):
        assert autopilot.ramp_steps(s, 32, t, "linear", 0.6) >= autopilot.MIN_STEPS or t == 32
    assert autopilot.choose_batch(1e9, 32, 512, "linear", 0.6) == 512  # the recipe's maximum


def test_lr_follows_batch_width_and_optimizer():
    def lr(batch, width, optimizer="adamw"):
        return autopilot.choose_lr(batch, width, optimizer)
    assert lr(8192, 768) == pytest.approx(1e-3, rel=0.01)  # Cramming's published peak (AdamW)
    assert lr(32, 256) < lr(128, 256) < lr(8192, 256)
    assert lr(128, 1024) < lr(128, 512) < lr(128, 128)
    assert lr(1 << 20, 768) <= autopilot.LR_CEILING  # sqrt scaling saturates
    assert lr(128, 512) / lr(32, 512) < 2  # at most sqrt(4)
    assert lr(128, 512, "muon") == autopilot.MUON_LR_FACTOR * lr(128, 512) == 2 * lr(128, 512)


@pytest.mark.parametrize("strategy,expected", [("single", "muon"), ("ddp", "muon"), ("zero1", "adamw"),
                                               ("fsdp", "adamw"), ("tp", "adamw"), ("fsdp+tp", "adamw"),
                                               ("deepspeed", "adamw")])
def test_auto_optimizer_is_muon_where_the_strategy_keeps_whole_matrices(strategy, expected):
    d = decide_cpu("10m", strategy=strategy)
    adamw = decide_cpu("10m", "train.optimizer=adamw", strategy=strategy)
    assert d.optimizer == expected and adamw.optimizer == "adamw"
    assert (d.model, d.batch_size) == (adamw.model, adamw.batch_size)  # the optimizer changes the LR only
    assert d.lr == pytest.approx(adamw.lr * (autopilot.MUON_LR_FACTOR if expected == "muon" else 1.0))
    assert ("Muon, peak LR" if expected == "muon" else "AdamW, peak LR") in d.line()
    cfg = autopilot.apply(crammed("budget.limit=10m"), d)
    assert cfg.train.optimizer == expected and cfg.train.lr == d.lr


def test_an_explicit_optimizer_and_lr_are_kept():
    muon = decide_cpu("10m", "train.optimizer=muon", strategy="single")
    adamw = decide_cpu("10m", "train.optimizer=adamw", strategy="single")
    assert (muon.optimizer, adamw.optimizer) == ("muon", "adamw")
    assert muon.lr == pytest.approx(autopilot.MUON_LR_FACTOR * adamw.lr)  # the rule's LR for Muon
    given = decide_cpu("10m", "train.optimizer=muon", "train.lr=5e-4")
    assert given.lr == 5e-4  # a given LR is never scaled
    cfg = autopilot.apply(crammed("budget.limit=10m", "train.optimizer=adamw"), muon)
    assert cfg.train.optimizer == "adamw"  # apply fills `auto` only


def test_a_decision_recorded_before_the_optimizer_field_loads_as_adamw():
    data = decide_cpu("10m").to_dict()
    del data["optimizer"]
    old = autopilot.from_dict(data)
    assert old.optimizer == "adamw" and "AdamW, peak LR" in old.line()
    assert autopilot.apply(crammed("budget.limit=10m"), old).train.optimizer == "adamw"


def test_cpu_decisions_are_monotone_in_the_budget():
    decisions = [decide_cpu(b) for b in ("1m", "3m", "10m", "1h", "6h")]
    sizes = [d.params for d in decisions]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert [d.tokens for d in decisions] == sorted(d.tokens for d in decisions)
    assert all(d.micro_batch_size <= autopilot.MICRO_MAX["cpu"] for d in decisions)
    one = decisions[0]
    # a micro-batch takes at most 1% of the budget, and the batch starts there
    assert one.micro_batch_size * 128 / (one.tokens_per_s) <= 0.01 * 60 + 1e-9
    assert one.batch_size >= one.micro_batch_size and one.steps >= 50
    line = one.line()
    assert line.startswith("budget 1m00s ~ ") and "tok/s" in line and one.model in line and "optimizer steps" in line


def test_cramming_gpu_day_stays_the_published_recipe():
    """One GPU-day on Cramming's card: a ~110-120M encoder, the batch ramped to 8192, peak LR ~1e-3 with AdamW
    (Cramming's optimizer), twice that with Muon (the one-device default where bf16 is native)."""
    hw = hardware.get("rtx2080ti")
    # Turing has no bf16 for Muon's Newton-Schulz, so auto is AdamW there; the same day on a bf16 card is Muon
    for optimizer, bf16, lr in (("adamw", True, 1e-3), ("auto", False, 1e-3), ("auto", True, 2e-3)):
        cfg = resolve_config(model="bert-crammed", recipe="crammed",
                             overrides=["budget.limit=24h", f"train.optimizer={optimizer}"])
        d = autopilot.decide(cfg, choose_model=True, device=torch.device("cuda"), dtype=torch.float16,
                             peak_flops=hw.peak("fp16"), usd_per_device_hour=hw.usd_per_hour, native_bf16=bf16)
        assert d.model == "encoder-16x768" and 100e6 <= d.params <= 125e6
        assert d.batch_size == 8192 and d.micro_batch_size == 128
        assert d.lr == pytest.approx(lr, rel=0.05)


def test_explicit_values_win_and_work_budgets_need_no_timing():
    d = decide_cpu("10m", "train.batch_size=96", "train.lr=5e-4")
    assert d.batch_size == 96 and d.lr == 5e-4 and 96 % d.micro_batch_size == 0
    d = decide_cpu("10m", "train.micro_batch_size=8")
    assert d.micro_batch_size == 8 and d.batch_size % 8 == 0

    def no_timing(*_):
        raise AssertionError("a token budget must not depend on a timing")
    cfg = crammed("budget.limit=2e6tokens")
    a = autopilot.decide(cfg, choose_model=True, device=CPU, dtype=None, peak_flops=CPU_PEAK, measure=no_timing)
    b = autopilot.decide(cfg, choose_model=True, device=CPU, dtype=None, peak_flops=7 * CPU_PEAK,
                         measure=no_timing)
    assert a.tokens == 2e6 and not a.measured
    assert (a.model, a.batch_size, a.lr) == (b.model, b.batch_size, b.lr)


def test_causal_budgets_choose_a_decoder():
    cfg = crammed("budget.limit=1h", "model.arch=decoder")
    d = autopilot.decide(cfg, choose_model=True, device=CPU, dtype=None, peak_flops=CPU_PEAK)
    assert d.model.startswith("decoder-") and d.model_config["arch"] == "decoder"


def test_a_budget_too_small_to_train_is_refused():
    slow = 20.0  # tokens/s: a micro-batch of 8 x 128 takes ~50 s
    with pytest.raises(CramlmError, match="too small to train.*give at least"):
        autopilot.decide(crammed("budget.limit=1s"), choose_model=False, device=CPU, dtype=None,
                         peak_flops=CPU_PEAK, measure=lambda m, micro: slow)


@pytest.fixture(scope="module")
def data_dir(tiny_dataset):
    return tiny_dataset


def test_auto_run_records_its_decision_and_resumes_with_it(data_dir, tmp_path):
    cfg = resolve_config(model="bert-crammed", recipe="crammed",
                         overrides=["budget.limit=16steps", "budget.hardware=cpu", "train.checkpoint_every=8steps",
                                    "train.val_batches=2"])
    run = tmp_path / "run"
    res = train(cfg, data_dir, run, progress=False, choose_model=True)
    d = res["autopilot"]
    assert d["model"] == FAMILY[0].name and res["steps"] == 16  # 16 x 32 x 32 tokens: the smallest member
    saved = load_run_config(run / "config.yaml")
    assert saved.train.batch_size == "auto" and saved.train.lr == "auto"  # config.yaml keeps what the user asked
    assert saved.model.n_layers == parse(d["model"]).n_layers  # ... and the model actually built
    assert next(r for r in read_metrics(run) if r.get("event") == "start")["autopilot"]["line"] == d["line"]

    # resume from the middle: the same decision, the same weights as the uninterrupted run
    import shutil

    from cramlm.train import checkpoint as ckpt
    half = tmp_path / "half"
    shutil.copytree(run, half)
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "checkpoints" / "step-16")
    again = train(load_run_config(half / "config.yaml"), data_dir, half, resume=True, progress=False)
    assert again["autopilot"] == d
    ref, got = ckpt.load_weights(run / "final" / "model.safetensors"), ckpt.load_weights(half / "final" /
                                                                                         "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_progress_at_the_first_step_and_on_a_clock(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "LOG_SECONDS", 0.0)
    cfg = resolve_config(model="tiny", recipe="crammed",
                         overrides=["budget.limit=5steps", "budget.hardware=cpu", "train.log_every=1000",
                                    "train.val_batches=2", "model.n_layers=1", "model.d_model=32",
                                    "model.n_heads=2", "model.d_ff=64"])
    train(cfg, data_dir, tmp_path / "run", progress=False)
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert steps[:2] == [1, 2]  # log_every alone would log nothing before step 1000


def test_cli_defaults_to_auto_and_prints_the_decision(cli, data_dir, tmp_path):
    code, out, err = cli("train", data_dir, "--budget", "6steps", "--out", tmp_path / "run", "budget.hardware=cpu",
                         "train.val_batches=2")
    assert code == 0, err
    assert "-> encoder-2x128" in out and "optimizer steps" in out
    results = json.loads((tmp_path / "run" / "results" / "train.json").read_text())
    assert results["autopilot"]["model"] == "encoder-2x128"
    code, out, err = cli("train", data_dir, "--budget", "6steps", "--out", tmp_path / "dec", "--objective",
                         "causal", "budget.hardware=cpu", "train.val_batches=2")
    assert code == 0, err
    assert "-> decoder-2x128" in out
    for run, cls in (("run", "ModernBertForMaskedLM"), ("dec", "LlamaForCausalLM")):  # auto models always export
        code, out, err = cli("export", tmp_path / run, "--to", tmp_path / f"{run}-hf")
        assert code == 0 and cls in out, err
    code, _, err = cli("train", data_dir, "--model", "gpt-small", "--objective", "mlm", "--out", tmp_path / "x")
    assert code == 2 and "--objective mlm" in err
    code, _, err = cli("train", data_dir, "--budget", "1s", "--out", tmp_path / "y", "budget.hardware=cpu",
                       "--model", "bert-crammed")
    assert code == 2 and "too small to train" in err


def test_a_model_that_cannot_fit_one_sequence_is_refused():
    cfg = resolve_config(model="encoder-32x2048", recipe="crammed", overrides=["budget.limit=1h"])
    with pytest.raises(CramlmError, match="does not fit one sequence"):
        autopilot.decide(cfg, choose_model=False, device=torch.device("cuda"), dtype=torch.bfloat16,
                         peak_flops=1e14, memory_gb=4.0)
    d = autopilot.decide(cfg, choose_model=False, device=torch.device("cuda"), dtype=torch.bfloat16,
                         peak_flops=1e14, memory_gb=40.0)
    assert 1 <= d.micro_batch_size < 128  # halved until it fits


TINY = ["budget.hardware=cpu", "train.val_batches=2", "train.log_every=1", "train.checkpoint_every=4steps",
        "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64"]


def tiny(*overrides):
    return resolve_config(model="tiny", recipe="crammed", overrides=[*TINY, *overrides])


class Named(trainer_mod.Strategy):
    """One process that reports another strategy's name: what `auto` resolves to under it."""

    def __init__(self, name):
        super().__init__(CPU)
        self.name = name


def test_muon_only_where_its_newton_schulz_pays():
    """A time budget times Muon's Newton-Schulz here: over MAX_SHARE of the budget, auto falls back to AdamW and
    says why; a budget that counts work asks whether the device has native bf16 (no timing in its decision)."""
    cheap = decide_cpu("10m", time_newton_schulz=lambda m: 0.0)
    assert cheap.optimizer == "muon" and "Muon (Muon's Newton-Schulz: 0% of the budget here)" in cheap.line()
    slow = decide_cpu("10m", time_newton_schulz=lambda m: 600.0)
    assert slow.optimizer == "adamw" and "AdamW (Muon's Newton-Schulz: " in slow.line()
    adamw = decide_cpu("10m", "train.optimizer=adamw")
    assert slow.lr == adamw.lr and (slow.model, slow.batch_size) == (adamw.model, adamw.batch_size)
    share = autopilot.muon_cost.MAX_SHARE  # just at the limit: Muon
    edge = decide_cpu("10m", time_newton_schulz=lambda m: share * 600 / cheap.steps * 0.999)
    assert edge.optimizer == "muon"
    assert decide_cpu("10m", "train.optimizer=muon", time_newton_schulz=lambda m: 600.0).optimizer == "muon"
    for bf16, expected in ((True, "muon"), (False, "adamw")):
        d = decide_cpu("2000000tokens", native_bf16=bf16, time_newton_schulz=lambda m: 600.0)
        assert d.optimizer == expected and (bf16 or "no native bf16" in d.line())


def test_newton_schulz_time_grows_with_the_model():
    from cramlm.config import ModelConfig
    from cramlm.train.muon_cost import newton_schulz_seconds

    small, big = (ModelConfig(**parse(name).model_section()) for name in ("encoder-2x128", "encoder-4x256"))
    assert 0 < newton_schulz_seconds(small, CPU) < newton_schulz_seconds(big, CPU)


def test_the_muon_lr_factor_applies_once_per_step(data_dir, tmp_path, monkeypatch):
    from cramlm.train.optim import MuonWithAdamW

    monkeypatch.setattr(autopilot.muon_cost, "native_bf16", lambda device: True)  # step budgets: no timing

    assert isinstance(trainer_mod.Trainer(tiny("budget.limit=4steps"), data_dir, tmp_path / "t", progress=False)
                      .optimizer, MuonWithAdamW)  # auto on one device
    lrs = {}
    for optimizer in ("muon", "adamw"):
        res = train(tiny("budget.limit=6steps", f"train.optimizer={optimizer}"), data_dir, tmp_path / optimizer,
                    progress=False)
        assert res["autopilot"]["optimizer"] == optimizer
        lrs[optimizer] = [r["lr"] for r in read_metrics(tmp_path / optimizer) if "loss" in r]
    assert len(lrs["muon"]) == len(lrs["adamw"]) == 6
    assert lrs["muon"] == pytest.approx([autopilot.MUON_LR_FACTOR * lr for lr in lrs["adamw"]])


def test_a_resumed_run_keeps_the_optimizer_it_recorded(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(autopilot.muon_cost, "native_bf16", lambda device: True)
    sharded = tmp_path / "zero1"  # auto under a strategy that shards matrices: AdamW, recorded
    assert train(tiny("budget.limit=4steps"), data_dir, sharded, progress=False,
                 strategy=Named("zero1"))["autopilot"]["optimizer"] == "adamw"
    resumed = trainer_mod.Trainer(tiny("budget.limit=4steps"), data_dir, sharded, progress=False, resume=True)
    assert resumed.decision.optimizer == "adamw" and type(resumed.optimizer) is torch.optim.AdamW

    one = tmp_path / "one"  # auto on one device: Muon, which FSDP cannot resume
    assert train(tiny("budget.limit=4steps"), data_dir, one, progress=False)["autopilot"]["optimizer"] == "muon"
    with pytest.raises(CramlmError, match="muon.*fsdp shards.*resume it as one process"):
        trainer_mod.Trainer(tiny("budget.limit=4steps"), data_dir, one, progress=False, resume=True,
                            strategy=Named("fsdp"))
