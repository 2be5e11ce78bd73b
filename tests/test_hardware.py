from __future__ import annotations

from dataclasses import replace

import pytest

from pytest_lowprec.hardware import (
    CPU_KEY,
    DeviceInfo,
    base_key,
    cpu_device,
    device_state,
    gpu_count,
    gpu_count_mismatch,
    gpu_for_worker,
    gpu_key_from_name,
    select_device,
    spec_for,
    validate_key,
    visible_gpu_ids,
)

H100 = DeviceInfo(key="h100", name="NVIDIA H100 80GB HBM3", index=0, capability=(9, 0))


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA GB200", "gb200"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("Some Future GPU X9", "some-future-gpu-x9"),
])
def test_gpu_key_comes_from_the_device_name(name, key):
    assert gpu_key_from_name(name) == key


def test_registry_holds_dense_peaks_for_rooflines():
    h100 = spec_for("h100")
    assert h100.bf16_tflops == 989.0 and h100.fp8_tflops == 1979.0 and h100.fp4_tflops is None
    assert spec_for("b200").fp4_tflops == 9000.0
    assert spec_for("2x_h200") is spec_for("h200")


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown GPU key 'h999'; valid keys: auto, .*h100.*cpu"):
        validate_key("h999")


def test_auto_takes_the_detected_device_or_the_cpu():
    assert select_device("auto", H100) is H100
    assert select_device("auto", None).key == CPU_KEY


def test_cpu_key_runs_on_the_cpu_even_with_a_gpu_present():
    assert not select_device("cpu", H100).is_cuda


def test_key_that_does_not_match_the_device_says_which_key_would():
    with pytest.raises(ValueError, match="does not match .*H100.*use --gpu h100"):
        select_device("b200", H100)


def test_gpu_key_without_any_gpu_is_an_error():
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        select_device("h100", None)


def test_multi_gpu_key_must_name_the_detected_part():
    two = replace(H100, visible=2)
    assert select_device("2x_h100", two).key == "2x_h100"
    with pytest.raises(ValueError):
        select_device("2x_h200", two)


def test_multi_gpu_key_needs_that_many_visible_gpus():
    with pytest.raises(ValueError, match="asks for 2 GPUs but this process sees 1.*--gpu h100"):
        select_device("2x_h100", H100)


def test_gpu_count_and_base_key_read_a_multi_gpu_key():
    assert (gpu_count("2x_h200"), base_key("2x_h200")) == (2, "h200")
    assert (gpu_count("h200"), base_key("h200")) == (1, "h200")


def test_visible_count_is_not_stored_with_baselines():
    assert "visible" not in replace(H100, visible=2).to_dict()


def test_device_state_parses_clock_temperature_and_throttling():
    state = device_state("0", run=lambda cmd: "1980, 45, 0x0000000000000000")
    assert state == {"sm_clock_mhz": 1980, "temperature_c": 45, "throttle_reasons": "0x0", "throttled": False}
    hot = device_state("0", run=lambda cmd: "1410, 88, 0x0000000000000040")
    assert hot["throttled"] is True


def test_device_state_asks_nvidia_smi_for_the_gpu_by_uuid_when_nvml_is_absent():
    asked = []
    device_state("GPU-1234", run=lambda cmd: asked.append(cmd) or "1980, 45, 0x0", nvml=lambda uuid: None)
    assert "--id=GPU-1234" in asked[0]


def test_device_state_is_none_without_nvidia_smi():
    assert device_state("0", run=lambda cmd: None) is None
    assert device_state(None) is None


def test_workers_get_distinct_gpus_from_the_outer_visible_list():
    visible = visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "3,5"}, count=8)
    assert visible == ["3", "5"]
    assert [gpu_for_worker(visible, w) for w in ("gw0", "gw1")] == ["3", "5"]
    with pytest.raises(ValueError, match="no GPU of its own"):
        gpu_for_worker(visible, "gw2")


def test_without_an_outer_setting_every_gpu_is_visible():
    assert visible_gpu_ids({}, count=2) == ["0", "1"]


def test_a_test_for_all_gpus_runs_on_any_multi_gpu_key_and_the_cpu_only():
    assert gpu_count_mismatch("all", replace(H100, key="2x_h100", visible=2)) is None
    assert gpu_count_mismatch("all", replace(H100, key="8x_h100", visible=8)) is None
    assert gpu_count_mismatch("all", cpu_device()) is None
    assert "--gpu Nx_h100 (N >= 2)" in gpu_count_mismatch("all", H100)
