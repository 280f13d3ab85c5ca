"""Mixed-precision choice: bf16 on a CPU only when asked for, only for training, only where native."""

from __future__ import annotations

import logging

import os
import platform
import subprocess
import sys

import pytest
import torch

from radmtl import device as device_module
from radmtl.device import amp_dtype_for

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_only_when_asked_for_in_training_and_native(monkeypatch, caplog, native):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="radmtl.device"):
        chosen = amp_dtype_for("bf16", CPU, training=True)
    assert chosen == (torch.bfloat16 if native else None)
    assert ("no native bf16" in caplog.text) == (not native)
    # auto, fp16 and off keep a CPU in float32, and inference (training=False) never autocasts
    for setting in ("auto", "fp16", "off"):
        assert amp_dtype_for(setting, CPU, training=True) is None
    assert amp_dtype_for("bf16", CPU, training=False) is None


def test_native_check_reads_torch_cpu_helpers(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert device_module.cpu_has_native_bf16() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert device_module.cpu_has_native_bf16() is False
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert device_module.cpu_has_native_bf16() is False


_PAGE_FAULTS_PER_STEP = """
import resource, sys, torch
from radmtl.device import keep_freed_memory_for_reuse
accepted = keep_freed_memory_for_reuse() if sys.argv[1] == "tuned" else None
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.InstanceNorm3d(8),
                          torch.nn.LeakyReLU(), torch.nn.Conv3d(8, 1, 3, padding=1))
mr = torch.randn(2, 1, 32, 48, 40)
for _ in range(3):  # warm-up: the allocator's own adaptive thresholds settle
    net(mr).square().mean().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    net(mr).square().mean().backward()
print(accepted, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    # A small conv forward/backward in steady state: glibc with its default mmap threshold unmaps the
    # freed activations and gradients (a few MB each) and faults thousands of pages in again every
    # step (radmtl's real CPU step: ~23000); tuned, the memory is reused. Both processes start with
    # glibc's default threshold pinned (MALLOC_MMAP_THRESHOLD_): left alone, glibc raises it by itself
    # after some frees, how soon depending on the process's allocation history (0 to 7190 faults per
    # step seen untuned across checkouts), which would make the untuned side a coin toss.
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}

    def faults_per_step(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS_PER_STEP, mode],
                             capture_output=True, text=True, check=True, env=env).stdout.split()
        return out[0], float(out[1])

    accepted, tuned = faults_per_step("tuned")
    _, untuned = faults_per_step("plain")
    assert accepted == "True"
    assert untuned > 2000  # 16504 per step when written
    # tuned: 0 in most runs, 192 in one of twelve (a worker thread's arena): a no-op would fault as
    # much as untuned
    assert tuned < untuned / 20
