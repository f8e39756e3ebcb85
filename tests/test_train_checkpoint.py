"""Checkpoints: sharded state round-trips exactly, tied weights stored once in final weights, atomic keep-last-K,
a corrupt, truncated or incomplete latest -> the previous one, consolidation to one safetensors file."""

import json

import pytest
import torch
from torch import nn

from cramlm.config import resolve_config
from cramlm.errors import CramlmError
from cramlm.models.registry import build_model
from cramlm.train import checkpoint as ckpt


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight


def _trained(model: nn.Module) -> torch.optim.AdamW:
    """An optimizer with state: one AdamW step on a made-up loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    sum(p.square().sum() for p in model.parameters()).backward()
    opt.step()
    return opt


def _save(run, step, model, opt, keep=2):
    tmp = ckpt.begin(run, step)
    ckpt.write_state(tmp, model, opt)
    return ckpt.commit(tmp, step, {"rng": {"torch": torch.get_rng_state()}}, {"step_meta": step}, keep=keep)


def test_tied_weights_round_trip_once(tmp_path):
    m = Tied()
    ckpt.save_weights(m.state_dict(), tmp_path / "w.safetensors")
    state = ckpt.load_weights(tmp_path / "w.safetensors")
    assert set(state) == set(m.state_dict())
    fresh = Tied()
    fresh.load_state_dict(state)
    assert fresh.out.weight is fresh.emb.weight and torch.equal(fresh.emb.weight, m.emb.weight)
    assert (tmp_path / "w.safetensors").stat().st_size < 2 * 10 * 4 * 4 + 400  # one 10x4 matrix, not two


def test_sharded_state_round_trips_model_and_optimizer_exactly(tmp_path):
    m = Tied()
    opt = _trained(m)
    path = _save(tmp_path, 1, m, opt)
    fresh = Tied()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1, fused=True)
    ckpt.read_state(path, fresh, fresh_opt)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), fresh.state_dict().values()))
    assert fresh.out.weight is fresh.emb.weight
    for p, q in zip(m.parameters(), fresh.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], fresh_opt.state[q][key])
    assert fresh_opt.param_groups[0]["fused"] is True  # the reader's kernel


def test_keeps_the_last_k_and_leaves_no_temporaries(tmp_path):
    m = Tied()
    opt = _trained(m)
    for step in (5, 10, 15):
        _save(tmp_path, step, m, opt, keep=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step-10", "step-15"]
    assert not list((tmp_path / "checkpoints").glob(".*"))
    state = json.loads((tmp_path / "checkpoints" / "step-15" / "state.json").read_text())
    assert state["step"] == 15 and state["step_meta"] == 15 and state["format"] == ckpt.FORMAT
    assert {".metadata", "__0_0.distcp", "trainer.pt"} <= set(state["files"])
    assert all(len(f["sha256"]) == 64 for f in state["files"].values())


@pytest.mark.parametrize("damage", ["truncate", "flip", "state", "metadata", "uncommitted"])
def test_damaged_latest_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
    m = Tied()
    opt = _trained(m)
    _save(tmp_path, 1, m, opt)
    older = m.emb.weight.detach().clone()
    with torch.no_grad():
        m.emb.weight.add_(1.0)
    if damage == "uncommitted":  # a crash between the shards and the commit leaves only the staging dir
        ckpt.write_state(ckpt.begin(tmp_path, 2), m, opt)
        assert ckpt.latest_checkpoint(tmp_path).name == "step-1"
        return
    latest = _save(tmp_path, 2, m, opt)
    shard = latest / "__0_0.distcp"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "metadata":
        (latest / ".metadata").unlink()
    else:
        (latest / "state.json").write_text('{"format": 2, "st')
    assert ckpt.verify(latest) is not None
    with pytest.warns(UserWarning, match="corrupt"):
        chosen = ckpt.latest_checkpoint(tmp_path)
    assert chosen.name == "step-1"
    fresh = Tied()
    ckpt.read_state(chosen, fresh)
    assert torch.equal(fresh.emb.weight, older)
    assert ckpt.load_checkpoint(chosen)["state"]["step"] == 1


def test_consolidates_a_checkpoint_into_final_weights_that_load_model_reads(tmp_path):
    cfg = resolve_config(model="tiny", recipe="demo", overrides=["model.n_layers=1", "model.d_model=32",
                                                                 "model.n_heads=2", "model.d_ff=64"])
    model = build_model(cfg.model)
    cfg.save(tmp_path / "config.yaml")
    path = _save(tmp_path, 3, model, _trained(model))
    from_checkpoint, _ = ckpt.load_model(tmp_path)  # no final/ yet: the latest checkpoint
    with torch.device("meta"):
        empty = build_model(cfg.model)
    ckpt.consolidate(path, tmp_path, cfg, empty)
    weights = ckpt.load_weights(tmp_path / "final" / ckpt.WEIGHTS)
    final, _ = ckpt.load_model(tmp_path)
    for name, t in model.state_dict().items():
        assert torch.equal(weights[name], t) and torch.equal(final.state_dict()[name], t)
        assert torch.equal(from_checkpoint.state_dict()[name], t)


def test_no_trained_model_is_a_user_error(tmp_path):
    with pytest.raises(CramlmError, match="no trained model"):
        ckpt.load_model(tmp_path)
    with pytest.raises(CramlmError, match="no .metadata"):
        ckpt.read_state(tmp_path, Tied())
