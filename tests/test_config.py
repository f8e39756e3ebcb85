import pytest
import yaml

from cramlm.config import RunConfig, list_presets, load_run_config, resolve_config
from cramlm.errors import CramlmError
from cramlm.units import parse_interval, parse_quantity


def test_defaults_are_the_crammed_recipe():
    cfg = resolve_config(model="bert-crammed", recipe="crammed")
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.d_ff) == (16, 768, 3072)
    assert cfg.model.bias is False and cfg.model.norm_position == "pre"
    assert cfg.train.betas == (0.9, 0.98) and cfg.train.eps == 1e-12 and cfg.train.grad_clip == 0.5
    assert cfg.train.batch_size == "auto" and cfg.train.max_batch_size == 8192 and cfg.train.ramp_end == 0.6


def test_resolution_order_file_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"model": {"n_layers": 6}, "train": {"lr": 5e-4}}))
    cfg = resolve_config(model="tiny", recipe="demo", config_file=f, overrides=["train.lr=1e-3", "model.d_ff=512"])
    assert cfg.model.n_layers == 6  # file beats preset
    assert cfg.train.lr == 1e-3  # override beats file
    assert cfg.model.d_ff == 512 and cfg.model.d_model == 256  # preset kept where nothing overrides


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config(model="gpt-small", overrides=["train.betas=[0.9, 0.95]", "model.moe.n_experts=4"])
    cfg.save(tmp_path / "config.yaml")
    back = load_run_config(tmp_path / "config.yaml")
    assert back == cfg and back.train.betas == (0.9, 0.95) and back.model.moe.n_experts == 4


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.n_layers=abc", "model.n_layers"),
        ("nosuch.key=1", "nosuch.key"),
        ("train.nokey=3", "train.nokey"),
        ("train.lr=-1", "train.lr"),
        ("model.moe.top_k=0", "model.moe.top_k"),
        ("budget.limit=5parsecs", "budget.limit"),
        ("train.checkpoint_every=3tokens", "train.checkpoint_every"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(CramlmError) as e:
        resolve_config(overrides=[override])
    assert named in str(e.value) and "\n" not in str(e.value)


def test_heads_must_divide_width():
    with pytest.raises(CramlmError, match="n_heads"):
        resolve_config(overrides=["model.d_model=100", "model.n_heads=3"])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(CramlmError, match="bert-crammed"):
        resolve_config(model="bert-huge")
    assert {"bert-crammed", "bert-original", "gpt-small", "tiny"} <= set(list_presets("model"))
    assert resolve_config(model="bert-base").model.norm_position == "post"


def test_units():
    assert parse_quantity("10m") == ("seconds", 600.0)
    assert parse_quantity("24h").amount == 86400
    assert parse_quantity("3e18flops") == ("flops", 3e18)
    assert parse_quantity("2e9tokens") == ("tokens", 2e9)
    assert parse_quantity("500steps") == ("steps", 500)
    assert parse_quantity("50usd") == ("usd", 50)
    assert parse_interval("200steps").kind == "steps"
    for bad in ["", "ten minutes", "-5m", "0s"]:
        with pytest.raises(CramlmError):
            parse_quantity(bad)
    with pytest.raises(CramlmError):
        parse_interval("5usd")


def test_run_config_defaults_validate():
    assert RunConfig().model.arch == "encoder"
