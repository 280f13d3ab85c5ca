"""Shared-encoder multi-task U-Net: output contract, padding, MC dropout, and a tiny overfit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from radmtl.config import MC_DROPOUT_PLACES, ConfigError, ModelConfig, config_from_dict, load_config, to_dict
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


@pytest.mark.parametrize("place", MC_DROPOUT_PLACES)
def test_eval_is_deterministic_and_train_uses_dropout(place):
    model = tiny(mc_dropout_at=place)
    mr = torch.randn(1, 1, 16, 16, 8)
    model.eval()
    assert torch.equal(model(mr)["sct"], model(mr)["sct"])
    model.train()
    assert not torch.allclose(model(mr)["sct"], model(mr)["sct"])


@pytest.mark.parametrize("place", MC_DROPOUT_PLACES)
def test_mc_forward_shapes_and_dropout_active_in_eval(place):
    model = tiny(seg_log_var=True, mc_dropout_at=place).eval()
    samples = model.mc_forward(torch.randn(2, 1, *ODD), samples=4)
    assert {k: tuple(v.shape) for k, v in samples.items()} == {
        "sct": (4, 2, 1, *ODD),
        "sct_log_var": (4, 2, 1, *ODD),
        "seg_logits": (4, 2, 3, *ODD),
        "seg_log_var": (4, 2, 1, *ODD),
    }
    for key, value in samples.items():
        assert not torch.allclose(value[0], value[1]), key
    with pytest.raises(ValueError, match="samples"):
        model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=0)
    with pytest.raises(ValueError, match="decoder_batch"):
        model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=2, decoder_batch=0)


@pytest.mark.parametrize("place", MC_DROPOUT_PLACES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batched_mc_matches_naive_loop_under_same_seed(mode, place):
    model = tiny(seg_log_var=True, mc_dropout_at=place)
    getattr(model, mode)()
    mr = torch.randn(2, 1, 12, 20, 9)
    torch.manual_seed(123)
    batched = model.mc_forward(mr, samples=3, decoder_batch=6)  # one call of T·B items
    torch.manual_seed(123)
    naive = model.mc_forward(mr, samples=3, batched=False)
    torch.manual_seed(123)
    chunked = model.mc_forward(mr, samples=3, decoder_batch=4)  # chunks of 2 + 1 samples
    torch.manual_seed(123)
    by_device = model.mc_forward(mr, samples=3)  # CPU: one sample per call
    for key in batched:
        torch.testing.assert_close(batched[key], naive[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked[key], naive[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(by_device[key], naive[key], rtol=1e-5, atol=1e-6)
    torch.manual_seed(124)
    other = model.mc_forward(mr, samples=3)
    assert not torch.allclose(other["sct"], batched["sct"])


@pytest.mark.parametrize(
    ("place", "decoder_calls", "last_block_calls"), [("encoder", 5, 5), ("last_block", 1, 5), ("heads", 1, 1)]
)
def test_mc_forward_shares_everything_before_the_dropout(place, decoder_calls, last_block_calls):
    model = tiny(mc_dropout_at=place).eval()
    calls = {"encoder": 0, "decoder": 0, "last_block": 0}

    def count(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    model.encoder.register_forward_hook(count("encoder"))
    model.decoders["sct"].upsample[0].register_forward_hook(count("decoder"))  # the decoder's first layer
    model.decoders["sct"].fuse[-1].register_forward_hook(count("last_block"))
    model.mc_forward(torch.randn(1, 1, 8, 8, 8), samples=5, batched=False)
    assert calls == {"encoder": 1, "decoder": decoder_calls, "last_block": last_block_calls}


@pytest.mark.parametrize("place", MC_DROPOUT_PLACES)
def test_training_forward_draws_the_masks_of_one_mc_sample(place):
    # forward (training) and mc_forward put dropout at the same place with the same draws.
    model = tiny(seg_log_var=True, mc_dropout_at=place).train()
    mr = torch.randn(2, 1, 12, 20, 9)
    torch.manual_seed(7)
    trained = model(mr)
    torch.manual_seed(7)
    sampled = model.mc_forward(mr, samples=1)
    for key, value in trained.items():
        torch.testing.assert_close(sampled[key][0], value, rtol=1e-5, atol=1e-6)


def test_heads_samples_equal_heads_on_masked_decoder_outputs():
    # Reference written out by hand: decoders once, then each sample's heads on its dropped features.
    model = tiny(seg_log_var=True, mc_dropout_at="heads").eval()
    mr = torch.randn(2, 1, 8, 12, 8)
    keep = 1.0 - model.dropout
    with torch.no_grad():
        features = model.encoder(mr)
        decoded = {task: decoder(features) for task, decoder in model.decoders.items()}
        torch.manual_seed(5)
        draws = [[torch.rand(decoded[task].shape) < keep for task in ("sct", "seg")] for _ in range(3)]
        torch.manual_seed(5)
        samples = model.mc_forward(mr, samples=3)
    for t, masks in enumerate(draws):
        dropped = {task: decoded[task] * mask / keep for task, mask in zip(("sct", "seg"), masks)}
        for key, head in model.heads.items():
            expected = head(dropped[model._head_source[key]])
            torch.testing.assert_close(samples[key][t], expected, rtol=1e-5, atol=1e-6)


def test_saved_config_without_the_key_rebuilds_the_encoder_placement(tmp_path):
    # A checkpoint written before model.mc_dropout_at existed carries no such key; its network had
    # dropout on the encoder features and must come back so, whatever the default is today.
    from radmtl.nn.checkpoint import make_payload, model_from_checkpoint, save_checkpoint

    cfg = load_config(None, ["model.channels=[4, 8]", "model.strides=[2]", "model.mc_dropout_at=encoder"])
    old_style = to_dict(cfg)
    del old_style["model"]["mc_dropout_at"]
    assert config_from_dict(old_style).model == cfg.model
    torch.manual_seed(0)
    trained = build_model(cfg.model)
    labels = {"background": 0, **{f"organ_{k}": k for k in range(1, cfg.model.num_classes)}}
    payload = make_payload(cfg=cfg, label_names=labels, model=trained, with_rng=False)
    payload["config"] = old_style
    save_checkpoint(tmp_path / "old.pt", payload)
    loaded = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded.model.mc_dropout_at == "encoder"
    mr = torch.randn(1, 1, 8, 8, 8)
    trained.eval()
    for seed in (1, 2):  # same samples as the network it was saved from, under the same seed
        torch.manual_seed(seed)
        expected = trained.mc_forward(mr, samples=2)
        torch.manual_seed(seed)
        got = loaded.model.mc_forward(mr, samples=2)
        torch.testing.assert_close(got["sct"], expected["sct"])
    # a YAML file that leaves the key out gets today's default, not the legacy placement
    assert load_config(None).model.mc_dropout_at == ModelConfig().mc_dropout_at


def test_mc_dropout_at_is_validated():
    with pytest.raises(ConfigError, match=r"model.mc_dropout_at: must be one of \['encoder', 'last_block', 'heads'\]"):
        load_config(None, ["model.mc_dropout_at=decoder"])
    with pytest.raises(ConfigError, match="model.mc_dropout_at"):
        config_from_dict({"model": {"mc_dropout_at": "tail"}})


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
        ({"mc_dropout_at": "tail"}, "mc_dropout_at"),
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
    assert abs(float(log_var.detach().mean()) + 4.0) < 0.5
    assert model.heads["sct_log_var"].conv.bias.item() == -4.0


def test_pointwise_head_equals_a_1x1x1_convolution_forward_and_backward():
    from radmtl.nn.heads import PointwiseHead

    torch.manual_seed(0)
    head = PointwiseHead(5, 3)
    x = torch.randn(2, 5, 6, 7, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = head(x)
    y_ref = torch.nn.functional.conv3d(x_ref, head.conv.weight, head.conv.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, head.conv.weight, head.conv.bias], upstream)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, head.conv.weight, head.conv.bias], upstream)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The gradient handed to the decoder is contiguous (channels first): a channels-last one made the
    # decoder convolutions' backward convert it and cost more than the head saved.
    assert grads[0].is_contiguous()


def test_heads_keep_the_conv_state_dict_layout_of_saved_checkpoints():
    # Checkpoints written when the heads were MONAI Convolutions hold heads.<key>.conv.weight of shape
    # (out, in, 1, 1, 1) and heads.<key>.conv.bias: the matmul heads must load them unchanged.
    state = tiny().state_dict()
    assert state["heads.sct.conv.weight"].shape == (1, 4, 1, 1, 1)
    assert state["heads.sct_log_var.conv.bias"].shape == (1,)
    assert state["heads.seg_logits.conv.weight"].shape == (3, 4, 1, 1, 1)
    assert not [k for k in state if k.startswith("heads.") and ".conv." not in k]
