"""Mixed-precision choice: bf16 on a CPU only when asked for, only for training, only where native."""

from __future__ import annotations

import logging

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
