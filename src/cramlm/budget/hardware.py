"""The hardware catalogue: peak FLOP/s per dtype, memory, bandwidth, power and price of common accelerators.

Peaks are dense (no 2:4 sparsity) tensor-core figures from the vendors' datasheets and whitepapers; for GeForce
cards the half-precision peak is the one with FP32 accumulation, which is what mixed-precision training uses.
Prices are editable defaults (typical on-demand cloud prices per device-hour in 2024, USD), not quotes.
Users add or override entries with a YAML file (see `load_yaml`, or set `CRAMLM_HARDWARE=path.yaml`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cramlm.errors import CramlmError

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
T = 1e12


@dataclass(frozen=True)
class Hardware:
    """One device: peak FLOP/s by dtype (dense), memory in GB, bandwidth in GB/s, TDP in watts, USD per hour."""

    name: str
    peak_flops: dict[str, float]
    memory_gb: float
    bandwidth_gbs: float | None
    tdp_watts: float
    usd_per_hour: float
    description: str = ""
    measured: bool = field(default=False, compare=False)

    def peak(self, dtype: str = "bf16") -> float:
        """Peak FLOP/s for training in `dtype`; a half dtype the device lacks falls back to the other one, then fp32.

        (A V100 has no bf16, so bf16 means its fp16 tensor cores; a TPU has no fp32 tensor peak, so fp32 means bf16.)
        """
        dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "auto": "bf16"}.get(dtype, dtype)
        if dtype not in DTYPES:
            raise CramlmError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
        order = {"bf16": ("bf16", "fp16", "fp32"), "fp16": ("fp16", "bf16", "fp32"), "fp8": ("fp8", "bf16", "fp16"),
                 "tf32": ("tf32", "fp32"), "fp32": ("fp32", "bf16")}[dtype]
        for d in order:
            if self.peak_flops.get(d):
                return self.peak_flops[d]
        raise CramlmError(f"hardware {self.name!r} has no peak FLOP/s for {dtype}")

    @property
    def best_dtype(self) -> str:
        """The fastest training dtype short of fp8 (which needs special kernels)."""
        return max(("bf16", "fp16", "tf32", "fp32"), key=lambda d: self.peak_flops.get(d) or 0.0)


def _hw(name: str, fp32: float, tf32: float | None, bf16: float | None, fp16: float | None, fp8: float | None,
        memory_gb: float, bandwidth_gbs: float, tdp_watts: float, usd_per_hour: float, description: str) -> Hardware:
    peaks = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16, "fp8": fp8}
    return Hardware(name, {k: v * T for k, v in peaks.items() if v}, memory_gb, bandwidth_gbs, tdp_watts,
                    usd_per_hour, description)


# name, TFLOP/s fp32, tf32, bf16, fp16, fp8; memory GB, bandwidth GB/s, TDP W, USD/hour
_CATALOGUE = [
    # NVIDIA Tesla V100 SXM2 datasheet (2018): 15.7 FP32, 125 tensor (fp16); 32 GB HBM2, 900 GB/s, 300 W.
    # Price: AWS p3 on-demand is ~3.06 USD/GPU-hour, marketplaces ~0.5; 1.0 as the default.
    _hw("v100", 15.7, None, None, 125, None, 32, 900, 300, 1.00, "NVIDIA V100 SXM2 32GB (Volta)"),
    # NVIDIA T4 datasheet: 8.1 FP32, 65 FP16 tensor; 16 GB GDDR6, 320 GB/s, 70 W. GCP on-demand ~0.35 USD/h.
    _hw("t4", 8.1, None, None, 65, None, 16, 320, 70, 0.35, "NVIDIA T4 (Turing)"),
    # NVIDIA Turing whitepaper, RTX 2080 Ti reference board: 13.4 FP32, 53.8 FP16 tensor with FP32 accumulate
    # (107.6 with FP16 accumulate); 11 GB GDDR6, 616 GB/s, 250 W. Marketplace ~0.20 USD/h. Cramming's card.
    _hw("rtx2080ti", 13.4, None, None, 53.8, None, 11, 616, 250, 0.20, "NVIDIA GeForce RTX 2080 Ti (Turing)"),
    # NVIDIA Ampere GA102 whitepaper, RTX 3090: 35.6 FP32, 35.6 TF32, 71 FP16/BF16 tensor with FP32 accumulate;
    # 24 GB GDDR6X, 936 GB/s, 350 W. Marketplace ~0.30 USD/h.
    _hw("rtx3090", 35.6, 35.6, 71, 71, None, 24, 936, 350, 0.30, "NVIDIA GeForce RTX 3090 (Ampere)"),
    # NVIDIA GeForce RTX 3090 Ti (full GA102, 10752 CUDA cores at 1.86 GHz boost): 40 FP32, 40 TF32, 80 FP16/BF16
    # tensor with FP32 accumulate (the 3090's per-clock rates); 24 GB GDDR6X at 21 Gbps, 1008 GB/s, 450 W. ~0.35 USD/h.
    _hw("rtx3090ti", 40, 40, 80, 80, None, 24, 1008, 450, 0.35, "NVIDIA GeForce RTX 3090 Ti (Ampere)"),
    # NVIDIA Ada Lovelace whitepaper, RTX 4090: 82.6 FP32, 82.6 TF32, 165.2 FP16/BF16 and 330.3 FP8 tensor with
    # FP32 accumulate; 24 GB GDDR6X, 1008 GB/s, 450 W. Marketplace ~0.40 USD/h.
    _hw("rtx4090", 82.6, 82.6, 165.2, 165.2, 330.3, 24, 1008, 450, 0.40, "NVIDIA GeForce RTX 4090 (Ada)"),
    # NVIDIA RTX A4000 datasheet: 19.2 FP32, 153.4 tensor with sparsity -> 76.7 dense FP16/BF16, 38.4 TF32;
    # 16 GB GDDR6, 448 GB/s, 140 W. Cloud ~0.17 USD/h.
    _hw("a4000", 19.2, 38.4, 76.7, 76.7, None, 16, 448, 140, 0.17, "NVIDIA RTX A4000 (Ampere)"),
    # NVIDIA RTX A6000 datasheet: 38.7 FP32, 309.7 tensor with sparsity -> 154.8 dense FP16/BF16, 77.4 TF32;
    # 48 GB GDDR6, 768 GB/s, 300 W. Lambda on-demand 0.80 USD/h. Cramming's 24-hour A6000 run.
    _hw("a6000", 38.7, 77.4, 154.8, 154.8, None, 48, 768, 300, 0.80, "NVIDIA RTX A6000 (Ampere)"),
    # NVIDIA A100 datasheet (SXM): 19.5 FP32, 156 TF32, 312 FP16/BF16 dense; 40 GB HBM2 1555 GB/s, 400 W.
    _hw("a100-40gb", 19.5, 156, 312, 312, None, 40, 1555, 400, 1.29, "NVIDIA A100 SXM4 40GB (Ampere)"),
    # Same datasheet, 80 GB HBM2e at 2039 GB/s, 400 W. Lambda on-demand ~1.79 USD/h.
    _hw("a100-80gb", 19.5, 156, 312, 312, None, 80, 2039, 400, 1.79, "NVIDIA A100 SXM4 80GB (Ampere)"),
    # NVIDIA L4 datasheet: 30.3 FP32, 120 TF32 / 242 FP16,BF16 / 485 FP8 with sparsity -> 60 / 121 / 242.5 dense;
    # 24 GB GDDR6, 300 GB/s, 72 W. GCP g2 ~0.70 USD/h.
    _hw("l4", 30.3, 60, 121, 121, 242.5, 24, 300, 72, 0.70, "NVIDIA L4 (Ada)"),
    # NVIDIA L40S datasheet: 91.6 FP32, 366 TF32 / 733 FP16,BF16 / 1466 FP8 with sparsity -> halves dense;
    # 48 GB GDDR6, 864 GB/s, 350 W. Cloud ~1.00 USD/h.
    _hw("l40s", 91.6, 183, 366, 366, 733, 48, 864, 350, 1.00, "NVIDIA L40S (Ada)"),
    # NVIDIA H100 datasheet, PCIe: 51 FP32, 756 TF32 / 1513 BF16,FP16 / 3026 FP8 with sparsity -> halves dense;
    # 80 GB HBM2e, 2000 GB/s, 350 W. Cloud ~2.00 USD/h.
    _hw("h100-pcie", 51, 378, 756, 756, 1513, 80, 2000, 350, 2.00, "NVIDIA H100 PCIe 80GB (Hopper)"),
    # NVIDIA H100 datasheet, SXM: 67 FP32, 989 TF32 / 1979 BF16,FP16 / 3958 FP8 with sparsity -> halves dense;
    # 80 GB HBM3, 3350 GB/s, 700 W. Cloud ~2.50 USD/h.
    _hw("h100-sxm", 67, 494.5, 989.5, 989.5, 1979, 80, 3350, 700, 2.50, "NVIDIA H100 SXM5 80GB (Hopper)"),
    # NVIDIA H100 datasheet, NVL (per GPU): 60 FP32, 835 TF32 / 1671 BF16,FP16 / 3341 FP8 with sparsity -> halves
    # dense; 94 GB HBM3, 3900 GB/s, 400 W. Cloud ~2.30 USD/h.
    _hw("h100-nvl", 60, 417.5, 835.5, 835.5, 1670.5, 94, 3900, 400, 2.30, "NVIDIA H100 NVL 94GB (Hopper)"),
    # NVIDIA H200 datasheet (SXM): compute as H100 SXM; 141 GB HBM3e, 4800 GB/s, 700 W. Cloud ~3.50 USD/h.
    _hw("h200", 67, 494.5, 989.5, 989.5, 1979, 141, 4800, 700, 3.50, "NVIDIA H200 SXM 141GB (Hopper)"),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: the GPU computes as an H100 SXM; 96 GB HBM3 at 4000 GB/s (the
    # 144 GB HBM3e version: 4900 GB/s); 450-1000 W for the whole module (CPU, GPU, memory), 900 W taken here.
    # Lambda on-demand 1.49 USD/h.
    _hw("gh200", 67, 494.5, 989.5, 989.5, 1979, 96, 4000, 900, 1.49, "NVIDIA GH200 96GB (Grace Hopper)"),
    _hw("gh200-144gb", 67, 494.5, 989.5, 989.5, 1979, 144, 4900, 1000, 1.49, "NVIDIA GH200 144GB HBM3e (Grace Hopper)"),
    # NVIDIA HGX B200 specifications, per GPU (8-GPU totals / 8): 75 FP32, 2.2 PF TF32 / 4.5 PF FP16,BF16 / 9 PF FP8
    # with sparsity -> halves dense; 180 GB HBM3e, ~7700 GB/s, 1000 W. Cloud ~5.00 USD/h.
    _hw("b200", 75, 1125, 2250, 2250, 4500, 180, 7700, 1000, 5.00, "NVIDIA B200 (Blackwell)"),
    # Google TPU v2, per chip (2 TensorCores): 45 TFLOP/s BF16, 16 GiB HBM, 700 GB/s (Jouppi et al., CACM 2020);
    # 280 W TDP (Jouppi et al., ISCA 2021). Cloud TPU price list: 4.50 USD/h per v2-8 (4 chips) -> 1.125 per chip.
    _hw("tpu-v2", 0, None, 45, None, None, 16, 700, 280, 1.125, "Google TPU v2, per chip"),
    # TPU v3, per chip: 123 TFLOP/s BF16, 32 GiB HBM, 900 GB/s, 450 W TDP (Jouppi et al., ISCA 2021 / 2023).
    # Cloud TPU price list: 8.00 USD/h per v3-8 -> 2.00 per chip.
    _hw("tpu-v3", 0, None, 123, None, None, 32, 900, 450, 2.00, "Google TPU v3, per chip"),
    # TPU v4, per chip: 275 TFLOP/s BF16, 32 GiB HBM2, 1200 GB/s, 192 W TDP (Jouppi et al., ISCA 2023).
    # Cloud TPU price list: 3.22 USD per chip-hour on demand.
    _hw("tpu-v4", 0, None, 275, None, None, 32, 1200, 192, 3.22, "Google TPU v4, per chip"),
]

ALIASES = {"h100": "h100-sxm", "2080ti": "rtx2080ti", "3090": "rtx3090", "3090ti": "rtx3090ti", "4090": "rtx4090",
           "rtxa6000": "a6000", "rtxa4000": "a4000", "teslav100": "v100", "teslat4": "t4"}

# The host CPU: its fp32 peak is measured (`measure_peak`; the best seen is kept by `best_cpu_peak`); TDP and price
# are editable defaults for a small cloud VM (about 0.10 USD/h for 2-4 vCPUs, 65 W).
CPU_TDP_WATTS = 65.0
CPU_USD_PER_HOUR = 0.10

_catalogue: dict[str, Hardware] = {hw.name: hw for hw in _CATALOGUE}
_loaded_env: str | None = None
_cpu_peak: float | None = None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("nvidia").removeprefix("geforce")


def _key(name: str) -> str:
    """Canonical catalogue name: case and separators do not matter (`H100`, `RTX 2080 Ti`, `a100_80gb`)."""
    k = _norm(name)
    index = {_norm(n): n for n in _catalogue} | ALIASES
    return index.get(k, name.strip().lower())


def load_yaml(path: str | Path) -> list[str]:
    """Add or override catalogue entries from YAML; returns the names touched.

    ```yaml
    my-gpu:                       # a new device
      peak_tflops: {fp32: 20, bf16: 80}
      memory_gb: 24
      bandwidth_gbs: 900
      tdp_watts: 300
      usd_per_hour: 0.5
    h100-sxm: {usd_per_hour: 1.9} # a cheaper H100: other fields stay
    cpu: {tdp_watts: 35}          # the host CPU entry of `detect()`
    ```
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CramlmError(f"hardware file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CramlmError(f"hardware file {path} must map device names to their fields")
    names = []
    for name, fields in data.items():
        key = _key(str(name))
        if not isinstance(fields, dict):
            raise CramlmError(f"hardware file {path}: {name!r} must map field names to values")
        _catalogue[key] = _from_fields(key, fields, _catalogue.get(key), path)
        names.append(key)
    return names


_FIELDS = {"peak_tflops", "memory_gb", "bandwidth_gbs", "tdp_watts", "usd_per_hour", "description"}


def _from_fields(name: str, fields: dict[str, Any], base: Hardware | None, path: str | Path) -> Hardware:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise CramlmError(f"hardware file {path}: {name}: unknown field {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_FIELDS))})")
    if base is None:
        if name == "cpu":
            base = Hardware("cpu", {}, _host_memory_gb(), None, CPU_TDP_WATTS, CPU_USD_PER_HOUR, "host CPU")
        else:
            missing = {"peak_tflops", "memory_gb", "tdp_watts", "usd_per_hour"} - set(fields)
            if missing:
                raise CramlmError(f"hardware file {path}: new device {name!r} needs {', '.join(sorted(missing))}")
            base = Hardware(name, {}, 0.0, None, 0.0, 0.0)
    try:
        peaks = dict(base.peak_flops)
        for dtype, tflops in (fields.get("peak_tflops") or {}).items():
            if dtype not in DTYPES:
                raise CramlmError(f"hardware file {path}: {name}: unknown dtype {dtype!r} ({', '.join(DTYPES)})")
            peaks[dtype] = float(tflops) * T
        bw = fields.get("bandwidth_gbs", base.bandwidth_gbs)
        return dataclasses.replace(
            base, name=name, peak_flops=peaks,
            memory_gb=float(fields.get("memory_gb", base.memory_gb)),
            bandwidth_gbs=None if bw is None else float(bw),
            tdp_watts=float(fields.get("tdp_watts", base.tdp_watts)),
            usd_per_hour=float(fields.get("usd_per_hour", base.usd_per_hour)),
            description=str(fields.get("description", base.description or name)),
        )
    except (TypeError, ValueError) as e:
        raise CramlmError(f"hardware file {path}: {name}: {e}") from None


def _load_env() -> None:
    """Apply `CRAMLM_HARDWARE` once per value, so a user's prices hold in every command."""
    global _loaded_env
    path = os.environ.get("CRAMLM_HARDWARE")
    if path and path != _loaded_env:
        load_yaml(path)
        _loaded_env = path


def catalogue() -> dict[str, Hardware]:
    """All catalogue entries (built-in plus YAML), by name."""
    _load_env()
    return dict(_catalogue)


def get(name: str) -> Hardware:
    """A device by catalogue name (see `_key`); `cpu` is this host with a measured peak."""
    _load_env()
    key = _key(name)
    if key == "cpu":
        return _cpu()
    if key not in _catalogue:
        variants = sorted(n for n in _catalogue if n.startswith(key + "-"))
        if len(variants) > 1:  # `a100` names two cards with different memory and prices
            raise CramlmError(f"hardware {name!r} is ambiguous: {' or '.join(variants)}")
        aliases = ", ".join(f"{a} (= {n})" for a, n in ALIASES.items())
        raise CramlmError(f"unknown hardware {name!r} (known: {', '.join(sorted(_catalogue))}, cpu; "
                          f"aliases: {aliases}; case and separators do not matter)")
    return _catalogue[key]


def resolve(name: str = "auto", usd_per_hour: float | None = None) -> Hardware:
    """The device a run's budget section names (`auto` = `detect()`), with an optional price override."""
    hw = detect() if name == "auto" else get(name)
    return hw if usd_per_hour is None else dataclasses.replace(hw, usd_per_hour=float(usd_per_hour))


# Matched against torch.cuda.get_device_name(); the more specific patterns first.
_CUDA_NAMES = [
    (r"gh200.*144", "gh200-144gb"), (r"gh200", "gh200"), (r"h200", "h200"), (r"h100.*pcie", "h100-pcie"),
    (r"h100.*nvl", "h100-nvl"), (r"h100", "h100-sxm"), (r"b200", "b200"),
    (r"a100.*80", "a100-80gb"), (r"a100", "a100-40gb"), (r"l40s", "l40s"), (r"\bl4\b", "l4"),
    (r"a6000", "a6000"), (r"a4000", "a4000"), (r"4090", "rtx4090"), (r"3090 ?ti", "rtx3090ti"), (r"3090", "rtx3090"),
    (r"2080 ?ti", "rtx2080ti"), (r"v100", "v100"), (r"\bt4\b", "t4"),
]


def match_cuda_name(device_name: str) -> str | None:
    """Catalogue name for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None."""
    lowered = device_name.lower()
    return next((name for pattern, name in _CUDA_NAMES if re.search(pattern, lowered)), None)


def detect() -> Hardware:
    """This machine's device: CUDA device 0 by name, else the host CPU with a measured fp32 peak.

    A CUDA device the catalogue lacks gets measured peaks (fp32 and bf16 matmuls) and no price.
    """
    import torch

    _load_env()
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        key = match_cuda_name(name)
        if key is not None:
            return get(key)
        props = torch.cuda.get_device_properties(0)
        peaks = {"fp32": measure_peak("cuda", torch.float32), "bf16": measure_peak("cuda", torch.bfloat16)}
        return Hardware(name, peaks, props.total_memory / 1e9, None, 300.0, 0.0, f"{name} (measured)", True)
    return _cpu()


def _cpu() -> Hardware:
    """The host CPU: a YAML `cpu` entry's fields win; its fp32 peak is measured once per process unless given."""
    global _cpu_peak
    base = _catalogue.get("cpu") or Hardware("cpu", {}, _host_memory_gb(), None, CPU_TDP_WATTS, CPU_USD_PER_HOUR,
                                             "host CPU")
    if "fp32" in base.peak_flops:
        return base
    if _cpu_peak is None:
        _cpu_peak = best_cpu_peak(measure_peak("cpu"))
    return dataclasses.replace(base, peak_flops={"fp32": _cpu_peak, **base.peak_flops}, measured=True)


def best_cpu_peak(measured: float) -> float:
    """The best fp32 matmul rate measured on this host with this many threads, this run's included. A peak measured
    while other jobs load the machine is too low and would put MFU above 100%; the best one seen is kept in
    `$CRAMLM_CACHE_DIR/cpu_peak.json` (default ~/.cache/cramlm) so later runs read MFU against it."""
    import platform

    import torch

    key = f"{platform.machine()}-{platform.processor()}-{os.cpu_count()}cpu-{torch.get_num_threads()}threads"
    path = Path(os.environ.get("CRAMLM_CACHE_DIR", Path.home() / ".cache" / "cramlm")) / "cpu_peak.json"
    try:
        cache = json.loads(path.read_text())
        known = float(cache.get(key, 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        cache, known = {}, 0.0
    if measured <= known:
        return known
    try:  # best effort: a read-only home only loses the memory of past measurements
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**cache, key: measured}, indent=1))
        tmp.replace(path)
    except OSError:
        pass
    return measured


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def measure_peak(device: str = "cpu", dtype: Any = None, n: int = 1024, seconds: float = 0.3) -> float:
    """Achievable matmul FLOP/s: the best of repeated n x n matmuls over about `seconds` (uses torch's threads).

    On a CPU there is no honest datasheet peak, so MFU is measured against what a large matmul reaches here.
    """
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up: allocation and kernel selection
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    for i in range(100):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return 2.0 * n**3 / best
