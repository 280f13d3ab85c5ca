"""The optimisation step: learned task weights reach their optimum, per-task gradients and clipping."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from radmtl.config import LossConfig, TrainConfig, load_config
from radmtl.nn.losses import MultiTaskLoss, homoscedastic_laplace, parameter_groups, voxel_cross_entropy
from radmtl.nn.model import MultiTaskUNet
from radmtl.training.schedule import warmup_cosine
from radmtl.training.step import forward_losses, optimise

SHAPE = (1, 1, 8, 8, 8)


class FixedOutputs(nn.Module):
    """A 'network' whose outputs do not change: the task losses are stationary."""

    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.encoder = nn.Linear(1, 1)  # unused: no gradient reaches it
        self.outputs = outputs

    def forward(self, mr: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.outputs.items()}


def _stationary_batch():
    torch.manual_seed(0)
    ct = torch.randn(SHAPE) * 0.3
    labels = torch.randint(0, 3, SHAPE)
    outputs = {"sct": ct + 0.1 * torch.sign(torch.randn(SHAPE)),  # |error| = 0.1: MSE 0.01, MAE 0.1
               "seg_logits": torch.randn(1, 3, *SHAPE[2:])}
    batch = {"mr": torch.zeros(SHAPE), "ct": ct, "labels": labels, "mask": torch.ones(SHAPE)}
    return outputs, batch


def _run_real_steps(loss_cfg: LossConfig, train_cfg: TrainConfig, steps: int) -> MultiTaskLoss:
    outputs, batch = _stationary_batch()
    model = FixedOutputs(outputs)
    loss_fn = MultiTaskLoss(loss_cfg)
    optimizer = torch.optim.AdamW(parameter_groups(model, loss_fn, train_cfg.weight_decay, train_cfg.log_var_lr),
                                  lr=train_cfg.lr)
    # inside a long warm-up: the network's rate stays below a tenth of lr, the log-variances' is not
    scheduler = warmup_cosine(optimizer, warmup_steps=10 * steps, total_steps=20 * steps)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(steps):
        terms, _, _ = forward_losses(model, loss_fn, batch, None)
        optimise(terms, model, loss_fn, optimizer, scaler, train_cfg)
        scheduler.step()
    return loss_fn


def _seg_loss(loss_fn: MultiTaskLoss) -> float:
    outputs, batch = _stationary_batch()
    ce = voxel_cross_entropy(outputs["seg_logits"], batch["labels"]).mean()
    dice = loss_fn.dice(outputs["seg_logits"], batch["labels"]) * loss_fn.cfg.seg_dice_weight
    return float(ce + dice)


def test_scalar_log_variances_reach_their_optimum_under_the_real_optimiser():
    train_cfg = TrainConfig()
    loss_fn = _run_real_steps(LossConfig(weighting="homoscedastic"), train_cfg, steps=300)
    # regression optimum s = log MSE = log 0.01; classification optimum s = log 2·(CE + Dice)
    assert loss_fn.log_var_sct.item() == pytest.approx(math.log(0.01), abs=0.05)
    assert loss_fn.log_var_seg.item() == pytest.approx(math.log(2 * _seg_loss(loss_fn)), abs=0.05)


def test_at_the_network_learning_rate_the_scalar_would_not_move():
    # The control that makes the test above mean something: one shared rate (3e-4) leaves s near 0.
    train_cfg = TrainConfig(log_var_lr=TrainConfig().lr)
    loss_fn = _run_real_steps(LossConfig(weighting="homoscedastic"), train_cfg, steps=300)
    assert loss_fn.log_var_sct.item() > -0.2


def test_laplace_scalar_weight_reaches_log_mae():
    loss_fn = _run_real_steps(LossConfig(tasks=("sct",), weighting="homoscedastic", likelihood="laplace"),
                              TrainConfig(), steps=300)
    assert loss_fn.log_var_sct.item() == pytest.approx(math.log(0.1), abs=0.05)


def test_laplace_homoscedastic_form_and_logged_sigma():
    assert float(homoscedastic_laplace(torch.tensor(0.2), torch.tensor(math.log(0.5)))) == \
        pytest.approx(0.2 / 0.5 + math.log(0.5))
    outputs, batch = _stationary_batch()
    loss_fn = MultiTaskLoss(LossConfig(tasks=("sct",), weighting="homoscedastic", likelihood="laplace",
                                       init_log_var=math.log(0.5)))
    total, logged = loss_fn(outputs, batch)
    assert total.item() == pytest.approx(0.1 / 0.5 + math.log(0.5), abs=1e-6)  # exp(−s_b)·MAE + s_b
    assert logged["sigma_sct"] == pytest.approx(math.sqrt(2) * 0.5, abs=1e-6)  # σ = √2·b


def test_sct_log_var_init_follows_the_likelihood():
    assert load_config(None).model.sct_log_var_init == -5.0
    laplace = load_config(None, ["loss.likelihood=laplace"])
    assert laplace.model.sct_log_var_init == -2.9
    # both start σ near 80 HU at ct_scale_hu = 1000
    assert 1000 * math.exp(-5.0 / 2) == pytest.approx(82.1, abs=0.1)
    assert 1000 * math.sqrt(2) * math.exp(-2.9) == pytest.approx(77.8, abs=0.1)
    assert load_config(None, ["loss.likelihood=laplace", "model.sct_log_var_init=-1.0"]).model.sct_log_var_init == -1.0


# --- per-task gradients -------------------------------------------------------------------------


def _tiny_net_and_batch():
    torch.manual_seed(1)
    model = MultiTaskUNet(channels=(4, 8), strides=(2,), num_classes=3, dropout=0.0, sct_log_var=True)
    mr = torch.randn(2, 1, 8, 8, 8)
    batch = {"mr": mr, "ct": torch.randn(2, 1, 8, 8, 8) * 0.5, "labels": torch.randint(0, 3, (2, 1, 8, 8, 8)),
             "mask": torch.ones(2, 1, 8, 8, 8)}
    return model, MultiTaskLoss(LossConfig()), batch


def _task_grads(model, loss_fn, batch):
    """Each task's gradient on every network parameter, computed independently of train_step."""
    params = [p for p in model.parameters()]
    out = {}
    for task in ("sct", "seg"):
        terms, _, _ = forward_losses(model, loss_fn, batch, None)
        grads = torch.autograd.grad(terms[task], params, allow_unused=True)
        out[task] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return params, out


def _norm_over(params, encoder_ids, grads, only_encoder=False):
    """L2 norm of ``grads`` (aligned with ``params``), optionally over the encoder's parameters only."""
    return math.sqrt(sum(float(g.square().sum()) for p, g in zip(params, grads)
                         if not only_encoder or id(p) in encoder_ids))


@pytest.mark.parametrize("mode", ["per_task", "global"])
def test_optimise_logs_encoder_norms_and_clips_as_configured(mode):
    model, loss_fn, batch = _tiny_net_and_batch()
    params, grads = _task_grads(model, loss_fn, batch)
    encoder = {id(p) for p in model.encoder.parameters()}
    norm = functools.partial(_norm_over, params, encoder)

    clip = 0.5 * min(norm(grads["sct"]), norm(grads["seg"]))  # both tasks are clipped
    train_cfg = TrainConfig(grad_clip=clip, grad_clip_mode=mode)
    optimizer = torch.optim.SGD(parameter_groups(model, loss_fn, 0.0, 0.05), lr=0.0)  # lr 0: .grad stays
    terms, _, _ = forward_losses(model, loss_fn, batch, None)
    norms = optimise(terms, model, loss_fn, optimizer, torch.amp.GradScaler("cuda", enabled=False), train_cfg)

    for task in ("sct", "seg"):
        assert float(norms[f"grad_norm_encoder_{task}"]) == pytest.approx(norm(grads[task], True), rel=1e-4)
        assert float(norms[f"grad_norm_{task}"]) == pytest.approx(norm(grads[task]), rel=1e-4)
    assert float(norms["grad_ratio_encoder_sct_seg"]) == pytest.approx(
        norm(grads["sct"], True) / norm(grads["seg"], True), rel=1e-4)
    clipped = {t: clip / norm(grads[t]) if mode == "per_task" else 1.0 for t in ("sct", "seg")}
    assert float(norms["grad_ratio_encoder_sct_seg_applied"]) == pytest.approx(
        norm(grads["sct"], True) * clipped["sct"] / (norm(grads["seg"], True) * clipped["seg"]), rel=1e-4)
    if mode == "per_task":
        expected = [gs * clip / norm(grads["sct"]) + gg * clip / norm(grads["seg"])
                    for gs, gg in zip(grads["sct"], grads["seg"])]
    else:
        summed = [gs + gg for gs, gg in zip(grads["sct"], grads["seg"])]
        expected = [g * min(1.0, clip / norm(summed)) for g in summed]
    for p, want in zip(params, expected):
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_balanced_mode_gives_both_tasks_equal_encoder_norms_and_keeps_the_decoders_own():
    model, loss_fn, batch = _tiny_net_and_batch()
    params, grads = _task_grads(model, loss_fn, batch)
    encoder = {id(p) for p in model.encoder.parameters()}
    norm = functools.partial(_norm_over, params, encoder)

    seg_weight = 8.0  # the segmentation term outweighs the sCT term, as its learned weight makes it do
    grads["seg"] = [g * seg_weight for g in grads["seg"]]
    clip = 2.0 * norm(grads["sct"])  # clips the segmentation gradient only
    clip_factor = {t: min(1.0, clip / norm(grads[t])) for t in ("sct", "seg")}
    assert clip_factor["sct"] == 1.0 and clip_factor["seg"] < 0.5
    clipped_encoder = {t: norm(grads[t], True) * clip_factor[t] for t in ("sct", "seg")}
    assert clipped_encoder["sct"] / clipped_encoder["seg"] < 0.6  # there is something to balance
    target = (clipped_encoder["sct"] + clipped_encoder["seg"]) / 2
    optimizer = torch.optim.SGD(parameter_groups(model, loss_fn, 0.0, 0.05), lr=0.0)
    terms, _, _ = forward_losses(model, loss_fn, batch, None)
    terms["seg"] = terms["seg"] * seg_weight
    norms = optimise(terms, model, loss_fn, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                     TrainConfig(grad_clip=clip, grad_clip_mode="balanced"))

    assert float(norms["grad_ratio_encoder_sct_seg"]) == pytest.approx(
        norm(grads["sct"], True) / norm(grads["seg"], True), rel=1e-4)  # the raw ratio is still logged
    assert float(norms["grad_ratio_encoder_sct_seg_applied"]) == pytest.approx(1.0, rel=1e-5)
    for p, gs, gg in zip(params, grads["sct"], grads["seg"]):
        if id(p) in encoder:  # each task's clipped encoder gradient rescaled to the mean norm
            want = gs * clip_factor["sct"] * target / clipped_encoder["sct"] \
                + gg * clip_factor["seg"] * target / clipped_encoder["seg"]
        else:  # decoders and heads: per-task clipping only
            want = gs * clip_factor["sct"] + gg * clip_factor["seg"]
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_balanced_mode_leaves_a_task_that_sends_no_gradient_alone():
    model, loss_fn, batch = _tiny_net_and_batch()
    params, grads = _task_grads(model, loss_fn, batch)
    optimizer = torch.optim.SGD(parameter_groups(model, loss_fn, 0.0, 0.05), lr=0.0)
    terms, _, _ = forward_losses(model, loss_fn, batch, None)
    terms["seg"] = terms["seg"] * 0.0  # reaches every parameter with a zero gradient
    optimise(terms, model, loss_fn, optimizer, torch.amp.GradScaler("cuda", enabled=False),
             TrainConfig(grad_clip=1e6, grad_clip_mode="balanced"))
    for p, gs in zip(params, grads["sct"]):  # the sCT gradient is neither halved nor blown up
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, gs, rtol=1e-4, atol=1e-7)


def test_heads_run_in_float32_outside_bf16_autocast():
    torch.manual_seed(0)
    model = MultiTaskUNet(channels=(4, 8), strides=(2,), num_classes=3, dropout=0.0).eval()
    seen = {}
    model.heads["sct"].register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        outputs = model(torch.randn(1, 1, 8, 8, 8))
    assert all(v.dtype == torch.float32 for v in outputs.values())
    assert seen["inp"].dtype == torch.float32 and seen["out"].dtype == torch.float32
    conv = model.heads["sct"].conv
    reference = torch.nn.functional.conv3d(seen["inp"], conv.weight, conv.bias)
    # The head is a matmul (PointwiseHead), not oneDNN's conv: float32 rounding apart, the same map;
    # a bf16 head would be off by ~0.4 % (8 bits of mantissa), far outside this tolerance.
    torch.testing.assert_close(seen["out"], reference, rtol=1e-5, atol=1e-6)


# --- the weighting reaches the shared encoder (DESIGN.md section 1) -------------------------------


def _applied_encoder_gradient(overrides: list[str]) -> torch.Tensor:
    """The encoder gradient one real training step applies (after clipping and any balancing), flattened:
    the tiny network and batch of the tests above, the config's loss, optimiser groups and step."""
    cfg = load_config(None, overrides)
    model, _, batch = _tiny_net_and_batch()
    loss_fn = MultiTaskLoss(cfg.loss)
    optimizer = torch.optim.AdamW(parameter_groups(model, loss_fn, cfg.train.weight_decay, cfg.train.log_var_lr),
                                  lr=cfg.train.lr)
    terms, _, _ = forward_losses(model, loss_fn, batch, None)
    optimise(terms, model, loss_fn, optimizer, torch.amp.GradScaler("cuda", enabled=False), cfg.train,
             measure=False)
    return torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters() if p.grad is not None])


@pytest.mark.parametrize("mode", ["default", "balanced"])
@pytest.mark.parametrize("weights", [("loss.weighting=fixed", "fixed_weight_seg", 1.0, 10.0),
                                     ("loss.weighting=hetero_homo", "init_log_var", 0.0, -3.0)],
                         ids=["fixed_w_seg_1_vs_10", "learned_s_seg_0_vs_-3"])
def test_a_task_weight_changes_the_encoder_update_under_the_default_and_not_under_balanced(mode, weights):
    weighting, key, a, b = weights
    extra = [] if mode == "default" else ["train.grad_clip_mode=balanced"]
    if mode == "default":
        assert load_config(None).train.grad_clip_mode == "global"
    ga = _applied_encoder_gradient([weighting, f"loss.{key}={a}", *extra])
    gb = _applied_encoder_gradient([weighting, f"loss.{key}={b}", *extra])
    cosine = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
    if mode == "default":  # the segmentation weight (×10, or exp(3) ≈ 20) turns the encoder's update
        assert cosine < 0.95, cosine
    else:  # equal norms per task on the encoder: the weight cancels there (why balanced is a departure)
        assert cosine == pytest.approx(1.0, abs=1e-4)


def test_a_step_that_does_not_measure_applies_the_same_update_as_one_that_does():
    cfg = load_config(None)
    grads = []
    for measure in (True, False):
        model, loss_fn, batch = _tiny_net_and_batch()
        optimizer = torch.optim.SGD(parameter_groups(model, loss_fn, 0.0, 0.05), lr=0.0)
        terms, _, _ = forward_losses(model, loss_fn, batch, None)
        norms = optimise(terms, model, loss_fn, optimizer, torch.amp.GradScaler("cuda", enabled=False), cfg.train,
                         measure=measure)
        assert bool(norms) == measure  # norms (and their extra backward pass) on logging steps only
        grads.append([p.grad.clone() for p in [*model.parameters(), *loss_fn.parameters()] if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for measured, plain in zip(*grads):  # summation order apart (float32 rounding): the same gradient
        torch.testing.assert_close(plain, measured, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("measure", [True, False])
def test_loss_scaling_changes_neither_the_logged_norms_nor_the_applied_gradient(measure):
    # fp16 training scales the loss (here by 2^10) before backward; the per-task norms and the step must
    # come out in unscaled units, or a logged norm reads 1024× and the clip throttles the update 1024×.
    results = []
    for scaler in (torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model, loss_fn, batch = _tiny_net_and_batch()
        optimizer = torch.optim.SGD(parameter_groups(model, loss_fn, 0.0, 0.05), lr=0.0)
        terms, _, _ = forward_losses(model, loss_fn, batch, None)
        norms = optimise(terms, model, loss_fn, optimizer, scaler, TrainConfig(grad_clip=0.05), measure=measure)
        results.append((norms, [p.grad.clone() for p in [*model.parameters(), *loss_fn.parameters()]
                                if p.grad is not None]))
    (plain_norms, plain_grads), (scaled_norms, scaled_grads) = results
    assert scaled_norms.keys() == plain_norms.keys() and bool(plain_norms) == measure
    for key in plain_norms:
        assert float(scaled_norms[key]) == pytest.approx(float(plain_norms[key]), rel=1e-4), key
    for scaled, plain in zip(scaled_grads, plain_grads):
        torch.testing.assert_close(scaled, plain, rtol=1e-4, atol=1e-7)
