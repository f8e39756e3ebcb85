"""Whether Muon pays on this device: its Newton-Schulz iterations run in bf16, which is cheap on a GPU with bf16
tensor cores and on CPUs with AVX512-BF16/AMX, but emulated (measured ~6x slower than fp32 per FLOP) elsewhere.

On such a CPU one Muon step of a 4x256 encoder took 7.7 s against 5 ms for AdamW: the orthogonalisation would eat
the budget that Muon's better steps are meant to save. So `train.optimizer: auto` keeps Muon only where its
Newton-Schulz time over the run stays under `MAX_SHARE` of the budget: timed here for a time or dollar budget, and
for budgets that count work (whose decisions must not depend on a timing) decided by whether the device has native
bf16 matmuls.
"""

from __future__ import annotations

import time

import torch

from cramlm.budget.flops import muon_matrix_shapes, newton_schulz_flops
from cramlm.config import ModelConfig

MAX_SHARE = 0.10  # of the budget that Muon's Newton-Schulz matmuls may take before AdamW is chosen instead


def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls in hardware: CUDA capability 8.0 or newer, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        cpu = torch._C._cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def newton_schulz_seconds(model_cfg: ModelConfig, device: torch.device) -> float:
    """Seconds one Muon step's Newton-Schulz iterations take here: one step of PyTorch's Muon timed on the model's
    largest hidden matrix, scaled by the FLOPs of all of them."""
    shapes = muon_matrix_shapes(model_cfg)
    if not shapes:
        return 0.0
    largest = max(shapes, key=lambda s: s[0] * s[1])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for shape in ((8, 8), largest):  # a tiny step first: kernels and dispatch warmed up
        weight = torch.nn.Parameter(torch.zeros(shape, device=device))
        weight.grad = torch.randn(shape, device=device)
        optimizer = torch.optim.Muon([weight], lr=1e-3)
        sync()
        started = time.perf_counter()
        optimizer.step()
        sync()
        seconds = time.perf_counter() - started
    return seconds * sum(map(newton_schulz_flops, shapes)) / newton_schulz_flops(largest)
