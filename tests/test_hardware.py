import json

import pytest

from cramlm.budget import hardware
from cramlm.budget.hardware import get, match_cuda_name
from cramlm.errors import CramlmError


@pytest.fixture(autouse=True)
def private_catalogue(monkeypatch):
    """YAML loads mutate the catalogue: give each test its own copy."""
    monkeypatch.setattr(hardware, "_catalogue", dict(hardware._catalogue))
    monkeypatch.delenv("CRAMLM_HARDWARE", raising=False)


def test_issue_devices_are_all_there_with_sane_numbers():
    names = ["v100", "t4", "rtx2080ti", "rtx3090", "rtx4090", "a4000", "a6000", "a100-40gb", "a100-80gb", "l4",
             "l40s", "h100-pcie", "h100-sxm", "h200", "b200", "tpu-v2", "tpu-v3", "tpu-v4"]
    for name in names:
        hw = get(name)
        assert hw.name == name
        assert 1e13 < hw.peak("bf16") < 1e16
        assert hw.memory_gb >= 11 and hw.tdp_watts > 0 and hw.usd_per_hour > 0
        # dense half precision is never slower than fp32 on these devices
        assert hw.peak("bf16") >= hw.peak("fp32")


def test_datasheet_figures():
    assert get("h100-sxm").peak("bf16") == pytest.approx(989.5e12)
    assert get("a100-80gb").peak("tf32") == pytest.approx(156e12)
    assert get("rtx2080ti").peak("fp16") == pytest.approx(53.8e12)
    assert get("h200").memory_gb == 141 and get("h200").bandwidth_gbs == 4800


def test_peak_falls_back_to_what_the_device_has():
    assert get("v100").peak("bf16") == get("v100").peak("fp16") == pytest.approx(125e12)  # no bf16 on Volta
    assert get("tpu-v4").peak("fp32") == pytest.approx(275e12)  # TPUs run fp32 matmuls on the bf16 MXU
    assert get("v100").peak("tf32") == pytest.approx(15.7e12)  # no TF32 before Ampere
    assert get("v100").best_dtype == "fp16" and get("a100-40gb").best_dtype == "bf16"
    with pytest.raises(CramlmError, match="unknown dtype"):
        get("t4").peak("int4")


def test_names_ignore_case_and_separators():
    assert get("H100").name == "h100-sxm"
    assert get("RTX 2080 Ti").name == "rtx2080ti"
    assert get("a100_80GB").name == "a100-80gb"
    assert get("TPU v4").name == "tpu-v4"
    with pytest.raises(CramlmError, match="unknown hardware 'gtx480'"):
        get("gtx480")


@pytest.mark.parametrize("cuda_name, expected", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA GeForce RTX 2080 Ti", "rtx2080ti"), ("Tesla V100-SXM2-32GB", "v100"), ("Tesla T4", "t4"),
    ("NVIDIA L4", "l4"), ("NVIDIA L40S", "l40s"), ("NVIDIA RTX A6000", "a6000"), ("NVIDIA GeForce GTX 1080", None),
])
def test_cuda_device_names(cuda_name, expected):
    assert match_cuda_name(cuda_name) == expected


def test_yaml_adds_and_overrides_entries(tmp_path, monkeypatch):
    path = tmp_path / "hw.yaml"
    path.write_text("my-gpu:\n  peak_tflops: {fp32: 20, bf16: 80}\n  memory_gb: 24\n  tdp_watts: 300\n"
                    "  usd_per_hour: 0.5\nH100: {usd_per_hour: 1.9}\n")
    monkeypatch.setenv("CRAMLM_HARDWARE", str(path))
    mine = get("my-gpu")
    assert mine.peak("bf16") == pytest.approx(80e12) and mine.peak("fp16") == pytest.approx(80e12)
    assert mine.bandwidth_gbs is None and mine.usd_per_hour == 0.5
    h100 = get("h100-sxm")
    assert h100.usd_per_hour == 1.9 and h100.peak("bf16") == pytest.approx(989.5e12)
    assert hardware.resolve("h100", usd_per_hour=3.0).usd_per_hour == 3.0


@pytest.mark.parametrize("text, message", [
    ("new-gpu: {memory_gb: 8}", "needs peak_tflops"),
    ("t4: {watts: 70}", "unknown field 'watts'"),
    ("t4: {peak_tflops: {int4: 9}}", "unknown dtype 'int4'"),
    ("t4: [1, 2]", "must map field names"),
    ("t4: {memory_gb: lots}", "t4"),
])
def test_bad_yaml_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "hw.yaml"
    path.write_text(text)
    with pytest.raises(CramlmError, match=message):
        hardware.load_yaml(path)


def test_detect_without_cuda_measures_the_cpu_once(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "_cpu_peak", None)
    calls = []
    real = hardware.measure_peak
    monkeypatch.setattr(hardware, "measure_peak", lambda *a, **k: calls.append(1) or real(n=256, seconds=0.05))
    first, second = hardware.detect(), hardware.detect()
    assert first.name == "cpu" and first.measured and len(calls) == 1
    assert first.peak("fp32") == second.peak("fp32") > 1e8  # any CPU matmul beats 0.1 GFLOP/s
    assert first.peak("bf16") == first.peak("fp32")
    assert first.usd_per_hour == hardware.CPU_USD_PER_HOUR and first.memory_gb > 0


def test_cpu_entry_is_editable(tmp_path, monkeypatch):
    path = tmp_path / "hw.yaml"
    path.write_text("cpu: {peak_tflops: {fp32: 0.5}, tdp_watts: 35, usd_per_hour: 0.02}\n")
    hardware.load_yaml(path)
    cpu = get("cpu")
    assert cpu.peak("fp32") == pytest.approx(0.5e12) and not cpu.measured
    assert cpu.tdp_watts == 35 and cpu.usd_per_hour == 0.02


def test_the_best_cpu_peak_seen_is_kept_across_runs(tmp_path, monkeypatch):
    """A peak measured under load must not lower the reference MFU is read against."""
    monkeypatch.setenv("CRAMLM_CACHE_DIR", str(tmp_path / "cache"))
    assert hardware.best_cpu_peak(5e9) == 5e9
    assert hardware.best_cpu_peak(3e9) == 5e9  # a loaded machine measures less: the idle figure stays
    assert hardware.best_cpu_peak(7e9) == 7e9
    (tmp_path / "cache" / "cpu_peak.json").write_text("{not json")
    assert hardware.best_cpu_peak(2e9) == 2e9  # a corrupt cache is rewritten, never an error
    assert list(json.loads((tmp_path / "cache" / "cpu_peak.json").read_text()).values()) == [2e9]
