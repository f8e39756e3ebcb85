import torch
import torch.nn.functional as F

from cramlm.config import resolve_config
from cramlm.models import build_model
from cramlm.models.moe import MoE, capacity


def moe_cfg(**kw):
    kv = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": 97, "max_seq_len": 16,
          "moe.n_experts": 4, "moe.top_k": 2, **kw}
    return resolve_config(model="bert-crammed-moe", overrides=[f"model.{k}={v}" for k, v in kv.items()]).model


def naive(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert, honouring capacity in the order the module promises."""
    cfg = moe.cfg
    weights, experts, _, _ = moe.route(x)
    C = capacity(x.shape[0], cfg)
    used = [0] * cfg.moe.n_experts
    slots = {}
    for e in range(cfg.moe.n_experts):  # assignments are served per expert in token order
        for t in range(x.shape[0]):
            for j in range(cfg.moe.top_k):
                if int(experts[t, j]) == e:
                    slots[t, j] = used[e] < C
                    used[e] += 1
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(cfg.moe.top_k):
            if slots[t, j]:
                e = int(experts[t, j])
                h = x[t] @ moe.w_in[e]
                v, gate = h.chunk(2)
                y[t] = y[t] + weights[t, j] * (F.gelu(v) * gate) @ moe.w_out[e]
    return y


def grads(moe, fn, x, probe):
    moe.zero_grad()
    out = fn(moe, x)
    (out * probe).sum().backward()
    return out.detach(), [p.grad.clone() for p in (moe.router.weight, moe.w_in, moe.w_out)]


def test_dispatch_matches_a_naive_loop_forward_and_backward():
    for cf in (4.0, 0.5):  # no token dropped; about half of the assignments dropped
        cfg = moe_cfg(**{"moe.capacity_factor": cf})
        torch.manual_seed(0)
        moe = build_model(cfg).blocks[1].ffn
        assert isinstance(moe, MoE)
        x = torch.randn(24, 32)
        probe = torch.randn(24, 32)
        fast, g_fast = grads(moe, lambda m, x: m(x)[0], x, probe)
        slow, g_slow = grads(moe, naive, x, probe)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
        for a, b in zip(g_fast, g_slow):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        if cf < 1:
            assert (fast.abs().sum(-1) == 0).any()  # some tokens overflowed and kept only their residual


def test_encoder_with_experts_reports_load_and_adds_aux_loss():
    cfg = moe_cfg()
    model = build_model(cfg)
    ids = torch.randint(5, 97, (2, 16))
    pos = torch.arange(4).expand(2, 4)
    out = model(ids, labels=ids, mask_positions=pos)
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.metrics["mlm_loss"] + out.aux_loss)
    load = out.metrics["moe_load"]
    assert load.shape == (4,) and abs(float(load.sum()) - 1.0) < 1e-6
    out.loss.backward()
    assert model.blocks[1].ffn.router.weight.grad.abs().sum() > 0


def test_training_on_random_data_balances_the_experts():
    cfg = moe_cfg(**{"moe.n_experts": 8, "moe.aux_loss_weight": 1.0, "moe.z_loss_weight": 0.0})
    torch.manual_seed(0)
    moe = build_model(cfg).blocks[1].ffn
    shift = torch.randn(32)
    with torch.no_grad():  # a router that sends nearly everything to expert 0
        moe.router.weight[0] = 0.15 * shift
    data = torch.randn(512, 32) + shift
    target = torch.randn(512, 32)
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)

    def balance():
        with torch.no_grad():
            return float(moe.route(data)[2])  # aux weight 1, z weight 0: the balancing loss itself

    before = balance()
    for step in range(60):
        x, y = data[step % 8 * 64:][:64], target[step % 8 * 64:][:64]
        out, aux, _ = moe(x)
        (F.mse_loss(out, y) + aux).backward()
        opt.step()
        opt.zero_grad()
    after = balance()
    assert before > 3.0  # top-2 of 8 with one expert in every top-2: up to 4; balanced: 1
    assert after < 1.5 and after < before / 2


def test_moe_model_compiles_without_graph_breaks():
    import torch._dynamo

    model = build_model(moe_cfg())
    ids = torch.randint(5, 97, (2, 16))
    pos = torch.arange(4).expand(2, 4)
    report = torch._dynamo.explain(model)(ids, labels=ids, mask_positions=pos)
    assert report.graph_count == 1 and report.graph_break_count == 0
