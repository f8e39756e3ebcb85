"""Checkpoints: tied weights stored once, atomic keep-last-K, corrupt or truncated latest -> previous one."""

import json

import pytest
import torch
from torch import nn

from cramlm.errors import CramlmError
from cramlm.train import checkpoint as ckpt


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight


def _save(run, step, model, keep=2):
    opt = torch.optim.AdamW(model.parameters())
    return ckpt.save_checkpoint(run, step, model.state_dict(), {"optimizer": opt.state_dict()},
                                {"rng": {"torch": torch.get_rng_state()}}, {"step_meta": step}, keep=keep)


def test_tied_weights_round_trip_once(tmp_path):
    m = Tied()
    ckpt.save_weights(m.state_dict(), tmp_path / "w.safetensors")
    state = ckpt.load_weights(tmp_path / "w.safetensors")
    assert set(state) == set(m.state_dict())
    fresh = Tied()
    fresh.load_state_dict(state)
    assert fresh.out.weight is fresh.emb.weight and torch.equal(fresh.emb.weight, m.emb.weight)
    assert (tmp_path / "w.safetensors").stat().st_size < 2 * 10 * 4 * 4 + 400  # one 10x4 matrix, not two


def test_keeps_the_last_k_and_leaves_no_temporaries(tmp_path):
    m = Tied()
    for step in (5, 10, 15):
        _save(tmp_path, step, m, keep=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step-10", "step-15"]
    assert not list((tmp_path / "checkpoints").glob(".*"))
    state = json.loads((tmp_path / "checkpoints" / "step-15" / "state.json").read_text())
    assert state["step"] == 15 and state["step_meta"] == 15 and len(state["files"]["model.safetensors"]["sha256"]) == 64


@pytest.mark.parametrize("damage", ["truncate", "flip", "state"])
def test_corrupt_latest_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
    m = Tied()
    _save(tmp_path, 1, m)
    with torch.no_grad():
        m.emb.weight.add_(1.0)
    latest = _save(tmp_path, 2, m)
    weights = latest / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (latest / "state.json").write_text('{"format": 1, "st')
    assert ckpt.verify(latest) is not None
    with pytest.warns(UserWarning, match="corrupt"):
        chosen = ckpt.latest_checkpoint(tmp_path)
    assert chosen.name == "step-1"
    loaded = ckpt.load_checkpoint(chosen)
    assert not torch.equal(loaded["model"]["emb.weight"], m.emb.weight)  # the older weights
    assert loaded["state"]["step"] == 1 and "optimizer" in loaded["optimizer"]
    with pytest.raises(CramlmError, match="corrupt"):
        ckpt.load_checkpoint(latest)


def test_no_trained_model_is_a_user_error(tmp_path):
    with pytest.raises(CramlmError, match="no trained model"):
        ckpt.load_model(tmp_path)
