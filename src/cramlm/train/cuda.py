"""CUDA settings decided in one place: the mixed-precision dtype by compute capability, TF32, deterministic cuBLAS,
and host-to-device batch copies.

`torch.cuda.is_bf16_supported()` is true on pre-Ampere cards too (bf16 emulated through fp32, several times
slower), so the dtype is chosen by capability instead: bf16 from 8.0 (Ampere) on, fp16 with a grad scaler below
(V100, T4, RTX 2080 Ti), as the planner assumes. TF32 is switched on before anything measures an fp32 peak, so
that peak and the training matmuls run on the same units. cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` for
deterministic results; it is read when cuBLAS starts, so it is set before the first matmul.
"""

from __future__ import annotations

import os

import torch

BF16_CAPABILITY = 8  # Ampere: native bf16 and TF32 tensor cores
CUBLAS_WORKSPACE = ":4096:8"  # the setting PyTorch's reproducibility notes give for deterministic cuBLAS


def has_native_bf16(device: torch.device) -> bool:
    """True on GPUs whose tensor cores compute bf16 (capability 8.0 and up)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= BF16_CAPABILITY


def auto_precision(device: torch.device) -> str:
    """`precision: auto`: bf16 on Ampere and later, fp16 (with a grad scaler) on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if has_native_bf16(device) else "fp16"


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for evaluation and fine-tuning on `device` (None: plain fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(auto_precision(device))


def configure(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide settings for a run on `device`, made before its first matmul: TF32 on Ampere and later,
    and cuBLAS's fixed workspace when the run must be deterministic."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if has_native_bf16(device):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch on `device`. To a GPU the host tensors are pinned first, so that the copy is asynchronous
    (a copy from pageable memory blocks the host until it is done)."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
