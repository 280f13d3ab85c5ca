"""Shared-encoder multi-task U-Net: output contract, padding, MC dropout, and a tiny overfit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from radmtl.config import ModelConfig, config_from_dict
from radmtl.nn.losses import MultiTaskLoss, masked_mean, parameter_groups
from radmtl.nn.model import MultiTaskUNet, build_model

ODD = (37, 45, 29)
TINY = ModelConfig(channels=(4, 8, 8), strides=(2, 2), num_classes=3, dropout=0.5)


def tiny(**changes) -> MultiTaskUNet:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(TINY, **changes))


@pytest.mark.parametrize(
    ("weighting", "tasks"),
    [(w, ("sct", "seg")) for w in ("fixed", "homoscedastic", "hetero_homo", "hetero")]
    + [("fixed", ("sct",)), ("hetero_homo", ("sct",)), ("fixed", ("seg",)), ("hetero", ("seg",))],
)
def test_output_shapes_on_odd_volume(weighting, tasks):
    cfg = config_from_dict(
        {"model": {"channels": [4, 8, 8, 8], "strides": [2, 2, 2], "num_classes": 5},
         "loss": {"weighting": weighting, "tasks": list(tasks)}}
    )
    model = build_model(cfg.model)
    outputs = model(torch.randn(2, 1, *ODD))
    expected = {}
    if "sct" in tasks:
        expected["sct"] = (2, 1, *ODD)
        if weighting in ("hetero_homo", "hetero"):
            expected["sct_log_var"] = (2, 1, *ODD)
    if "seg" in tasks:
        expected["seg_logits"] = (2, 5, *ODD)
        if weighting == "hetero":
            expected["seg_log_var"] = (2, 1, *ODD)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected


def test_padding_is_cropped_back_exactly():
    model = tiny().eval()
    mr = torch.randn(1, 1, 13, 16, 10)
    padded, crop = model._pad(mr)
    assert tuple(padded.shape[2:]) == (16, 16, 12)
    assert torch.equal(padded[crop], mr)  # the crop returns the original voxels, not shifted ones
    assert tuple(model(mr)["seg_logits"].shape) == (1, 3, 13, 16, 10)


def test_eval_is_deterministic_and_train_uses_dropout():
    model = tiny()
    mr = torch.randn(1, 1, 16, 16, 8)
    model.eval()
    assert torch.equal(model(mr)["sct"], model(mr)["sct"])
    model.train()
    assert not torch.allclose(model(mr)["sct"], model(mr)["sct"])


def test_mc_forward_shapes_and_dropout_active_in_eval():
    model = tiny(seg_log_var=True).eval()
    samples = model.mc_forward(torch.randn(2, 1, *ODD), samples=4)
    assert {k: tuple(v.shape) for k, v in samples.items()} == {
        "sct": (4, 2, 1, *ODD),
        "sct_log_var": (4, 2, 1, *ODD),
        "seg_logits": (4, 2, 3, *ODD),
        "seg_log_var": (4, 2, 1, *ODD),
    }
    assert not torch.allclose(samples["sct"][0], samples["sct"][1])
    with pytest.raises(ValueError, match="samples"):
        model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=0)
    with pytest.raises(ValueError, match="decoder_batch"):
        model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=2, decoder_batch=0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batched_mc_matches_naive_loop_under_same_seed(mode):
    model = tiny(seg_log_var=True)
    getattr(model, mode)()
    mr = torch.randn(2, 1, 12, 20, 9)
    torch.manual_seed(123)
    batched = model.mc_forward(mr, samples=3)
    torch.manual_seed(123)
    naive = model.mc_forward(mr, samples=3, batched=False)
    torch.manual_seed(123)
    chunked = model.mc_forward(mr, samples=3, decoder_batch=4)  # chunks of 2 + 1 samples
    for key in batched:
        torch.testing.assert_close(batched[key], naive[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked[key], naive[key], rtol=1e-5, atol=1e-6)
    torch.manual_seed(124)
    other = model.mc_forward(mr, samples=3)
    assert not torch.allclose(other["sct"], batched["sct"])


def test_encoder_runs_once_per_mc_call():
    model = tiny().eval()
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=5)
    model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=5, batched=False)
    assert len(calls) == 2


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_no_dropout_gives_identical_samples_equal_to_eval_forward(norm):
    model = tiny(dropout=0.0, norm=norm)
    mr = torch.randn(2, 1, 16, 12, 8)
    model.train()
    model(mr)  # give batch norm non-trivial running statistics
    model.eval()
    reference = model(mr)
    samples = model.mc_forward(mr, samples=3)
    for key, value in samples.items():
        for t in range(3):
            # batch norm in train mode over T·B items would not reproduce the eval forward
            torch.testing.assert_close(value[t], reference[key], rtol=1e-5, atol=1e-6)


def test_no_residual_units_and_group_norm_build():
    model = tiny(num_res_units=0, norm="group", channels=(6, 8, 8))
    assert tuple(model(torch.randn(1, 1, 9, 9, 9))["sct"].shape) == (1, 1, 9, 9, 9)


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        ({"strides": (2,)}, "strides"),
        ({"channels": (4,), "strides": ()}, "channels"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm": "layer"}, "norm"),
        ({"tasks": ("sct", "dose")}, "tasks"),
        ({"tasks": ("seg",), "sct_log_var": True}, "sct_log_var"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_constructor_arguments_are_validated(changes, argument):
    with pytest.raises(ValueError, match=argument):
        build_model(dataclasses.replace(TINY, **changes))


def test_input_rank_is_checked():
    with pytest.raises(ValueError, match="mr"):
        tiny()(torch.randn(1, 16, 16, 16))


# --- tiny overfit -------------------------------------------------------------------------------

# label: (MR intensity, CT in HU / 1000)
TISSUES = {0: (0.2, -0.10), 1: (2.0, 0.01), 2: (-1.0, -0.60), 3: (1.0, 0.05), 4: (-0.5, 0.70)}


def pelvis_patch(shape=(24, 24, 16)):
    """A body ellipse (fat) with bladder, rectum (gas-filled), prostate and a bone blob."""
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (y / 0.9) ** 2 + (x / 0.8) ** 2 < 1.0
    labels = torch.zeros(shape, dtype=torch.long)
    labels[((z - 0.1) ** 2 + (y + 0.3) ** 2 + x**2) < 0.15] = 1
    labels[((z + 0.2) ** 2 + (y - 0.4) ** 2 + x**2) < 0.05] = 2
    labels[(z**2 + (y - 0.05) ** 2 + x**2) < 0.04] = 3
    labels[(z**2 + y**2 + (x - 0.55) ** 2) < 0.05] = 4
    labels[~body] = 0
    torch.manual_seed(0)
    mr = torch.full(shape, -2.0)
    ct = torch.full(shape, -1.0)
    for label, (mr_value, ct_value) in TISSUES.items():
        inside = (labels == label) & body
        mr[inside] = mr_value
        ct[inside] = ct_value
    mr = mr + 0.05 * torch.randn(shape)
    as_volume = lambda t: t.reshape(1, 1, *shape)  # noqa: E731
    return {
        "mr": as_volume(mr), "ct": as_volume(ct), "labels": as_volume(labels), "mask": as_volume(body.float())
    }


@pytest.mark.slow
def test_tiny_overfit_hetero_homo():
    cfg = config_from_dict(
        {"model": {"channels": [8, 8, 8], "strides": [2, 2], "num_classes": 5, "dropout": 0.1},
         # CE alone, as this test was calibrated on: Dice on a 5-class toy patch converges more slowly
         "loss": {"weighting": "hetero_homo", "seg_dice_weight": 0.0}}
    )
    torch.manual_seed(0)
    model, loss_fn = build_model(cfg.model), MultiTaskLoss(cfg.loss)
    optimizer = torch.optim.AdamW(parameter_groups(model, loss_fn, 1e-4), lr=1e-2)
    batch = pelvis_patch()
    assert set(batch["labels"].unique().tolist()) == set(TISSUES)

    def measure() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            outputs = model(batch["mr"])
            mae = masked_mean((outputs["sct"] - batch["ct"]).abs(), batch["mask"]).item()
            _, logged = loss_fn(outputs, batch)
        model.train()
        return mae, logged["loss_seg"]

    mae_start, seg_start = measure()
    for _ in range(60):
        optimizer.zero_grad()
        total, _ = loss_fn(model(batch["mr"]), batch)
        total.backward()
        optimizer.step()
    mae_end, seg_end = measure()
    # observed ratios are about 0.05; 0.2 leaves room for platform noise
    assert mae_end < 0.2 * mae_start, (mae_start, mae_end)
    assert seg_end < 0.2 * seg_start, (seg_start, seg_end)


def test_sct_log_var_head_starts_at_configured_scale():
    from radmtl.config import load_config
    from radmtl.nn.model import build_model

    cfg = load_config(None, ["model.channels=[4, 8]", "model.strides=[2]", "model.sct_log_var_init=-4.0"])
    model = build_model(cfg.model).eval()
    torch.manual_seed(0)
    log_var = model(torch.zeros(1, 1, 8, 8, 8))["sct_log_var"]
    # Zero input → the head's output is its bias plus a small weight term; its mean sits at -4.
    assert abs(float(log_var.mean()) + 4.0) < 0.5
    assert float(model.heads["sct_log_var"].conv.bias) == -4.0
