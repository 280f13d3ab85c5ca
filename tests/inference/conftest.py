"""Fixtures of the inference tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

TINY_MODEL = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
              "data.spacing=[6.0,6.0,6.0]", "infer.mc_samples=1"]


@pytest.fixture(scope="session")
def tiny_payload() -> Callable[..., dict]:
    """``make(overrides=(), seed=0)``: the checkpoint payload of an untrained tiny network with the
    phantom's labels (``TINY_MODEL`` plus ``overrides``), its weights drawn from ``seed``."""
    import torch

    from radmtl.config import load_config
    from radmtl.data.phantom import PHANTOM_LABELS
    from radmtl.nn.checkpoint import make_payload
    from radmtl.nn.model import build_model

    def make(overrides: Sequence[str] = (), seed: int = 0) -> dict:
        cfg = load_config(None, TINY_MODEL + list(overrides))
        torch.manual_seed(seed)
        return make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS), model=build_model(cfg.model),
                            with_rng=False)

    return make
