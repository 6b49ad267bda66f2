"""The memory check before a run: the GPU side (free memory from torch.cuda.mem_get_info, faked here) and the RAM
side, each refusing in one line that names the settings to lower."""

from __future__ import annotations

import pytest
import torch

import guidance.memory
from guidance.errors import ToolkitError
from guidance.memory import HEADROOM, available_bytes, check_memory, estimate_run_bytes

GIB = 2**30


@pytest.fixture
def gpu_with_free(monkeypatch):
    """Fake a CUDA device with the given free memory; records the devices asked about."""
    asked = []

    def install(free: int, total: int = 80 * GIB) -> list:
        def mem_get_info(device=None):
            asked.append(device)
            return free, total
        monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
        return asked
    return install


def test_a_cuda_run_over_the_free_gpu_memory_is_refused_in_one_line(gpu_with_free):
    asked = gpu_with_free(2 * GIB)
    device = torch.device("cuda", 1)
    with pytest.raises(ToolkitError) as error:
        check_memory(4 * GIB, device, "vqgan_clip at 512x512 with 64 cutouts", "--cutn or --size")
    assert str(error.value) == ("vqgan_clip at 512x512 with 64 cutouts would need about 4.0 GiB but only 2.0 GiB of "
                                "GPU memory is available; lower --cutn or --size")
    assert asked == [device]  # the free memory of the run's own GPU, not of the machine's RAM


def test_a_cuda_run_is_checked_against_the_gpu_not_the_ram(gpu_with_free, monkeypatch):
    gpu_with_free(40 * GIB)
    monkeypatch.setattr(guidance.memory.psutil, "virtual_memory", lambda: pytest.fail("RAM asked for a CUDA run"))
    assert available_bytes(torch.device("cuda")) == 40 * GIB
    check_memory(30 * GIB, torch.device("cuda"), "a run", "--cutn")  # fits: no error


def test_the_gpu_check_keeps_headroom(gpu_with_free):
    gpu_with_free(10 * GIB)
    check_memory(int(HEADROOM * 10 * GIB), torch.device("cuda"), "a run", "--cutn")
    with pytest.raises(ToolkitError, match="GPU memory is available; lower --cutn"):
        check_memory(int(HEADROOM * 10 * GIB) + 1, torch.device("cuda"), "a run", "--cutn")


def test_a_cpu_run_is_checked_against_the_available_ram(monkeypatch):
    class Memory:
        available = 3 * GIB
    monkeypatch.setattr(guidance.memory.psutil, "virtual_memory", lambda: Memory())
    with pytest.raises(ToolkitError, match=r"would need about 8\.0 GiB but only 3\.0 GiB of RAM is available; "
                                           r"lower --cutn or --size$"):
        check_memory(8 * GIB, torch.device("cpu"), "a run", "--cutn or --size")


def test_the_estimate_grows_with_cutouts_size_and_batch():
    base = estimate_run_bytes(256, 256, 32, 224)
    assert estimate_run_bytes(256, 256, 64, 224) > base
    assert estimate_run_bytes(512, 512, 32, 224) > base
    assert estimate_run_bytes(256, 256, 32, 224, batch=2) == 2 * base
    assert estimate_run_bytes(256, 256, 32, 224, generator="unknown") == estimate_run_bytes(256, 256, 32, 224,
                                                                                            generator="diffusion")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_halves_the_activation_estimate(precision):
    assert estimate_run_bytes(256, 256, 32, 224, precision=precision) == round(estimate_run_bytes(256, 256, 32, 224) / 2)
