"""Loss terms of DESIGN.md section 1, checked against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from radmtl.config import LossConfig, config_from_dict
from radmtl.nn.losses import (
    MultiTaskLoss,
    clamp_log_var,
    heteroscedastic_nll,
    heteroscedastic_segmentation,
    homoscedastic_classification,
    homoscedastic_regression,
    masked_mean,
    parameter_groups,
)
from radmtl.nn.model import build_model

LOG2, LOG3 = math.log(2.0), math.log(3.0)


def vol(*values: float) -> torch.Tensor:
    """(1, 1, N, 1, 1) volume holding ``values``."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1, 1, 1)


# --- per-voxel regression terms ------------------------------------------------------------------


def test_gaussian_nll_hand_values():
    # voxel 1: r = 1, s = 0 -> 0.5; voxel 2: r = 0, s = log 4 -> 0.5·log 4 = log 2;
    # voxel 3: r = −3, s = log 2 -> 0.5·9/2 + 0.5·log 2 (residual and s both non-zero: a sign
    # slip in exp(−s) would give 0.5·9·2, a log σ regulariser 0.25·log 2)
    loss = heteroscedastic_nll(vol(0.0, 1.0, 1.0), vol(0.0, math.log(4.0), LOG2), vol(1.0, 1.0, -2.0))
    assert loss.item() == pytest.approx((0.5 + LOG2 + 2.25 + 0.5 * LOG2) / 3, abs=1e-6)


def test_laplace_nll_hand_values():
    # voxel 1: |r| = 2, s_b = log 2 -> 1 + log 2; voxel 2: |r| = 3, s_b = 0 -> 3
    loss = heteroscedastic_nll(vol(0.0, 0.0), vol(LOG2, 0.0), vol(2.0, -3.0), likelihood="laplace")
    assert loss.item() == pytest.approx((1.0 + LOG2 + 3.0) / 2, abs=1e-6)


def test_beta_nll_scales_term_and_stops_gradient_through_factor():
    mean = vol(0.0).requires_grad_()
    log_var = vol(math.log(4.0)).requires_grad_()
    # base term: 0.5·(4/4) + 0.5·log 4 = 0.5 + log 2; β = 0.5 multiplies by σ = 2
    loss = heteroscedastic_nll(mean, log_var, vol(2.0), beta=0.5, beta_scale="none")
    assert loss.item() == pytest.approx(2.0 * (0.5 + LOG2), abs=1e-6)
    loss.backward()
    # d/dμ of base = −exp(−s)·r = −0.5, times 2; d/ds of base is 0 at σ² = r², and the factor is
    # detached so it adds nothing (it would add β·term·σ = 1.19 otherwise)
    assert mean.grad.item() == pytest.approx(-1.0, abs=1e-6)
    assert log_var.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_mean_scaled_beta_nll_redistributes_the_gradient_without_shrinking_the_term():
    # voxel 1: r = 1, σ = 1 (s = 0); voxel 2: r = 2, σ = 2 (s = log 4); base terms 0.5 and 0.5 + log 2.
    # β = 0.5 factors σ = 1, 2 → mean 1.5 → "mean" factors 2/3, 4/3 (mean 1; "none" keeps 1 and 2).
    mean = vol(0.0, 0.0).requires_grad_()
    log_var = vol(0.0, math.log(4.0))
    target = vol(1.0, 2.0)
    base = [0.5, 0.5 + LOG2]
    loss = heteroscedastic_nll(mean, log_var, target, beta=0.5)
    assert loss.item() == pytest.approx((2 / 3 * base[0] + 4 / 3 * base[1]) / 2, abs=1e-6)
    loss.backward()
    # d/dμ of base = −r/σ² = −1 and −0.5; times the factors, over 2 voxels
    assert mean.grad.flatten().tolist() == pytest.approx([-1.0 * 2 / 3 / 2, -0.5 * 4 / 3 / 2], abs=1e-6)
    paper = heteroscedastic_nll(vol(0.0, 0.0), log_var, target, beta=0.5, beta_scale="none")
    assert paper.item() == pytest.approx((1 * base[0] + 2 * base[1]) / 2, abs=1e-6)
    # The mean runs over the mask only: a masked-out voxel with a huge σ changes nothing.
    masked = heteroscedastic_nll(vol(0.0, 0.0, 0.0), vol(0.0, math.log(4.0), 20.0), vol(1.0, 2.0, 0.0),
                                 mask=vol(1.0, 1.0, 0.0), beta=0.5)
    assert masked.item() == pytest.approx(loss.item(), abs=1e-6)
    with pytest.raises(ValueError, match="beta_scale"):
        heteroscedastic_nll(mean, log_var, target, beta=0.5, beta_scale="sum")


def test_beta_nll_rejected_for_laplace():
    with pytest.raises(ValueError, match="beta"):
        heteroscedastic_nll(vol(0.0), vol(0.0), vol(1.0), likelihood="laplace", beta=0.5)
    with pytest.raises(ValueError, match="likelihood"):
        heteroscedastic_nll(vol(0.0), vol(0.0), vol(1.0), likelihood="cauchy")


def test_mask_weights_and_empty_mask():
    values = vol(1.0, 2.0, 100.0)
    assert masked_mean(values, vol(1.0, 1.0, 0.0)).item() == pytest.approx(1.5)
    assert masked_mean(values, vol(1.0, 3.0, 0.0)).item() == pytest.approx((1.0 + 6.0) / 4)
    assert masked_mean(values, vol(1, 1, 0).bool()).item() == pytest.approx(1.5)
    mean = vol(0.0, 0.0, 0.0).requires_grad_()
    loss = heteroscedastic_nll(mean, vol(0.0, 0.0, 0.0), values, mask=vol(0.0, 0.0, 0.0))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(mean.grad, torch.zeros_like(mean))
    with pytest.raises(ValueError, match="mask"):
        masked_mean(values, torch.ones(1, 1, 2, 1, 1))


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_nll_optimum_by_gradient_descent(likelihood):
    residual = 0.3
    log_var = torch.zeros(1, 1, 1, 1, 1, requires_grad=True)
    optimizer = torch.optim.SGD([log_var], lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        heteroscedastic_nll(vol(0.0), log_var, vol(residual), likelihood=likelihood).backward()
        optimizer.step()
    if likelihood == "gaussian":
        assert math.exp(log_var.item()) == pytest.approx(residual**2, rel=1e-3)  # σ² = r²
    else:
        assert math.exp(log_var.item()) == pytest.approx(residual, rel=1e-3)  # b = |r|


def test_nll_optimum_on_grid():
    residual = -0.7
    grid = torch.linspace(-4, 2, 6001).reshape(1, 1, -1, 1, 1)
    target = torch.full_like(grid, residual)
    gauss = 0.5 * torch.exp(-grid) * residual**2 + 0.5 * grid
    laplace = torch.exp(-grid) * abs(residual) + grid
    for term, want in ((gauss, residual**2), (laplace, abs(residual))):
        best = grid.flatten()[term.flatten().argmin()]
        assert math.exp(best.item()) == pytest.approx(want, rel=2e-3)
    # the library function computes exactly those per-voxel terms
    for i in (0, 2500, 6000):
        s = grid[:, :, i : i + 1]
        assert heteroscedastic_nll(torch.zeros_like(s), s, target[:, :, i : i + 1]).item() == pytest.approx(
            gauss.flatten()[i].item(), rel=1e-5
        )


# --- homoscedastic and segmentation terms --------------------------------------------------------


def test_homoscedastic_forms_hand_values():
    task_loss, s = torch.tensor(2.0), torch.tensor(LOG2)
    assert homoscedastic_regression(task_loss, s).item() == pytest.approx(0.5 + 0.5 * LOG2)
    assert homoscedastic_classification(task_loss, s).item() == pytest.approx(1.0 + 0.5 * LOG2)


@pytest.mark.parametrize(
    ("form", "optimum"),
    [
        (homoscedastic_regression, lambda L: math.log(L)),
        (homoscedastic_classification, lambda L: math.log(2 * L)),
    ],
)
def test_learned_scalar_converges_without_factor_two_slip(form, optimum):
    task_loss = torch.tensor(0.3)
    log_var = torch.nn.Parameter(torch.tensor(0.0))
    optimizer = torch.optim.SGD([log_var], lr=0.5)
    for _ in range(500):
        optimizer.zero_grad()
        form(task_loss, log_var).backward()
        optimizer.step()
    assert log_var.item() == pytest.approx(optimum(0.3), abs=1e-4)


def test_heteroscedastic_segmentation_hand_value():
    # logits (0, log 3) for label 0: p0 = 1/4, CE = log 4; s = log 2: 0.5·log 4 + 0.5·log 2
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1, 1)
    labels = torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)
    loss = heteroscedastic_segmentation(logits, torch.full((1, 1, 1, 1, 1), LOG2), labels)
    assert loss.item() == pytest.approx(1.5 * LOG2, abs=1e-6)
    masked = heteroscedastic_segmentation(
        logits.expand(1, 2, 2, 1, 1), vol(LOG2, 0.0), torch.zeros(1, 1, 2, 1, 1), mask=vol(1.0, 0.0)
    )
    assert masked.item() == pytest.approx(1.5 * LOG2, abs=1e-6)


def test_clamp_passes_only_inward_gradients():
    s = torch.tensor([-12.0, -12.0, 0.0, 12.0, 12.0], requires_grad=True)
    clamped = clamp_log_var(s, -10.0, 10.0)
    assert clamped.tolist() == [-10.0, -10.0, 0.0, 10.0, 10.0]
    (clamped * torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])).sum().backward()
    # below range: +grad would push s lower (blocked), −grad pulls it up; above range the reverse
    assert s.grad.tolist() == [0.0, -1.0, 1.0, 1.0, 0.0]


def test_learned_scalar_does_not_run_away_when_task_loss_is_zero():
    loss_fn = MultiTaskLoss(LossConfig(tasks=("sct",), weighting="homoscedastic", log_var_min=-5.0))
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.5)
    ct = torch.zeros(1, 1, 2, 2, 2)
    batch = {"ct": ct, "mask": torch.ones_like(ct)}
    for _ in range(300):
        optimizer.zero_grad()
        total, logged = loss_fn({"sct": ct.clone()}, batch)
        total.backward()
        optimizer.step()
    assert math.isfinite(total.item())
    assert logged["log_var_sct"] == -5.0
    assert -5.0 - 6.0 < loss_fn.log_var_sct.item() < -4.0  # overshoot bounded by Adam's momentum


def test_extreme_per_voxel_log_var_is_finite():
    loss_fn = MultiTaskLoss(LossConfig(tasks=("sct",), weighting="hetero_homo"))
    ct = torch.ones(1, 1, 2, 2, 2)
    log_var = torch.tensor([-1e4, 1e4]).repeat(4).reshape(1, 1, 2, 2, 2).requires_grad_()
    outputs = {"sct": torch.zeros_like(ct), "sct_log_var": log_var}
    total, _ = loss_fn(outputs, {"ct": ct, "mask": torch.ones_like(ct)})
    total.backward()
    assert math.isfinite(total.item()) and torch.isfinite(log_var.grad).all()


# --- MultiTaskLoss --------------------------------------------------------------------------------


def make_batch(num_classes: int = 3):
    """8 voxels; sCT error 0.5 in the 4 body voxels, 10 outside (ignored); uniform logits."""
    ct = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 2, 2) / 10
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32).reshape(1, 1, 2, 2, 2)
    sct = ct + 0.5 * mask + 10.0 * (1 - mask)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]).reshape(1, 1, 2, 2, 2)
    outputs = {"sct": sct, "seg_logits": torch.zeros(1, num_classes, 2, 2, 2)}
    return outputs, {"ct": ct, "mask": mask, "labels": labels}


@pytest.mark.parametrize(("likelihood", "l_sct"), [("gaussian", 0.25), ("laplace", 0.5)])
def test_fixed_weights(likelihood, l_sct):
    outputs, batch = make_batch()
    cfg = LossConfig(weighting="fixed", likelihood=likelihood, fixed_weight_sct=2.0, fixed_weight_seg=3.0,
                     seg_dice_weight=0.0)
    total, logged = MultiTaskLoss(cfg)(outputs, batch)
    assert total.item() == pytest.approx(2.0 * l_sct + 3.0 * LOG3, abs=1e-6)
    assert logged["loss_sct"] == pytest.approx(l_sct)
    assert logged["loss_seg"] == pytest.approx(LOG3)
    assert logged["mae_sct"] == pytest.approx(0.5)
    assert logged["loss_total"] == pytest.approx(total.item())
    assert not list(MultiTaskLoss(cfg).parameters())


def test_homoscedastic_mode():
    outputs, batch = make_batch()
    loss_fn = MultiTaskLoss(LossConfig(weighting="homoscedastic", init_log_var=1.0, seg_dice_weight=0.0))
    total, logged = loss_fn(outputs, batch)
    e = math.exp(-1.0)
    assert total.item() == pytest.approx(0.5 * e * 0.25 + 0.5 + e * LOG3 + 0.5, abs=1e-6)
    assert logged["log_var_sct"] == pytest.approx(1.0) and logged["log_var_seg"] == pytest.approx(1.0)
    assert logged["sigma_sct"] == pytest.approx(math.exp(0.5))
    assert logged["sigma_seg"] == pytest.approx(math.exp(0.5))


@pytest.mark.parametrize(
    ("likelihood", "log_var", "nll", "mean_sigma"),
    [
        ("gaussian", math.log(0.25), 0.5 + 0.5 * math.log(0.25), 0.5),
        ("laplace", math.log(0.5), 1.0 + math.log(0.5), math.sqrt(2.0) * 0.5),
    ],
)
def test_hetero_homo_mode(likelihood, log_var, nll, mean_sigma):
    outputs, batch = make_batch()
    outputs["sct_log_var"] = torch.full_like(outputs["sct"], log_var)
    total, logged = MultiTaskLoss(LossConfig(likelihood=likelihood, seg_dice_weight=0.0))(outputs, batch)
    assert logged["loss_sct"] == pytest.approx(nll, abs=1e-6)
    assert logged["mean_sigma_sct"] == pytest.approx(mean_sigma, abs=1e-6)
    assert total.item() == pytest.approx(nll + LOG3, abs=1e-6)  # seg at s = 0: exp(0)·L + 0
    assert "log_var_sct" not in logged and logged["log_var_seg"] == 0.0


def test_hetero_mode_with_dice():
    outputs, batch = make_batch(num_classes=2)
    outputs["sct_log_var"] = torch.zeros_like(outputs["sct"])
    outputs["seg_log_var"] = torch.full_like(outputs["sct"], LOG2)
    total, logged = MultiTaskLoss(LossConfig(weighting="hetero", seg_dice_weight=2.0))(outputs, batch)
    # uniform softmax, 4 of 8 voxels foreground: Dice = 1 − 2·(0.5·4)/(0.5·8 + 4) = 0.5
    assert logged["loss_seg"] == pytest.approx(LOG2 + 2.0 * 0.5, abs=1e-4)
    seg_term = 0.5 * LOG2 + 0.5 * LOG2 + 2.0 * 0.5
    assert total.item() == pytest.approx(0.5 * 0.25 + seg_term, abs=1e-4)
    assert logged["mean_sigma_seg"] == pytest.approx(math.sqrt(2.0), abs=1e-6)


def test_dice_inside_homoscedastic_weight():
    outputs, batch = make_batch(num_classes=2)
    cfg = LossConfig(tasks=("seg",), weighting="homoscedastic", seg_dice_weight=1.0, init_log_var=LOG2)
    total, logged = MultiTaskLoss(cfg)(outputs, batch)
    assert logged["loss_seg"] == pytest.approx(LOG2 + 0.5, abs=1e-4)
    assert total.item() == pytest.approx(0.5 * (LOG2 + 0.5) + 0.5 * LOG2, abs=1e-4)
    assert set(logged) == {"loss_total", "loss_seg", "log_var_seg", "sigma_seg"}


def ce_batch():
    """4 voxels, 2 classes, non-uniform logits; body mask on the first two voxels only.

    Per-voxel CE: (0, 0) label 0 -> log 2; (0, log 3) label 0 -> log 4; (0, log 3) label 1 ->
    log 4/3; (log 7, 0) label 0 -> log 8/7. Mean over all voxels: log(256/21)/4 = 0.6253; over the
    body mask it would be (log 2 + log 4)/2 = 1.0397.
    """
    logits = torch.tensor([[0.0, 0.0, 0.0, math.log(7.0)], [0.0, LOG3, LOG3, 0.0]]).reshape(1, 2, 4, 1, 1)
    labels = torch.tensor([0, 0, 1, 0]).reshape(1, 1, 4, 1, 1)
    ce = [LOG2, 2 * LOG2, math.log(4 / 3), math.log(8 / 7)]
    return {"seg_logits": logits}, {"labels": labels, "mask": vol(1.0, 1.0, 0.0, 0.0)}, ce


def test_segmentation_ce_averages_over_all_voxels_not_the_body_mask():
    outputs, batch, ce = ce_batch()
    all_voxels = sum(ce) / 4
    assert all_voxels == pytest.approx(math.log(256 / 21) / 4)
    fixed = LossConfig(tasks=("seg",), weighting="fixed", seg_dice_weight=0.0, fixed_weight_seg=2.0)
    total, logged = MultiTaskLoss(fixed)(outputs, batch)
    assert logged["loss_seg"] == pytest.approx(all_voxels, abs=1e-6)
    assert total.item() == pytest.approx(2.0 * all_voxels, abs=1e-6)
    homo = LossConfig(tasks=("seg",), weighting="homoscedastic", seg_dice_weight=0.0, init_log_var=LOG2)
    total, logged = MultiTaskLoss(homo)(outputs, batch)
    assert logged["loss_seg"] == pytest.approx(all_voxels, abs=1e-6)
    assert total.item() == pytest.approx(0.5 * all_voxels + 0.5 * LOG2, abs=1e-6)
    # per-voxel s(x) = (0, log 2, log 3, 0): exp(−s)·CE + 0.5·s, again averaged over all 4 voxels
    s = [0.0, LOG2, LOG3, 0.0]
    outputs["seg_log_var"] = vol(*s)
    hetero = LossConfig(tasks=("seg",), weighting="hetero", seg_dice_weight=0.0)
    total, logged = MultiTaskLoss(hetero)(outputs, batch)
    want = sum(math.exp(-si) * ci + 0.5 * si for si, ci in zip(s, ce)) / 4
    assert total.item() == pytest.approx(want, abs=1e-6)
    assert logged["loss_seg"] == pytest.approx(all_voxels, abs=1e-6)
    assert logged["mean_sigma_seg"] == pytest.approx(sum(math.exp(0.5 * si) for si in s) / 4, abs=1e-6)


def test_single_task_sct_modes():
    outputs, batch = make_batch()
    outputs["sct_log_var"] = torch.zeros_like(outputs["sct"])
    m1_total, m1 = MultiTaskLoss(LossConfig(tasks=("sct",), weighting="fixed"))(outputs, batch)
    assert m1_total.item() == pytest.approx(0.25) and "loss_seg" not in m1
    m2b_total, m2b = MultiTaskLoss(LossConfig(tasks=("sct",), weighting="hetero_homo"))(outputs, batch)
    assert m2b_total.item() == pytest.approx(0.5 * 0.25) and m2b["mean_sigma_sct"] == pytest.approx(1.0)


def test_missing_head_and_bad_config_name_the_problem():
    outputs, batch = make_batch()
    with pytest.raises(KeyError, match="sct_log_var"):
        MultiTaskLoss(LossConfig())(outputs, batch)
    with pytest.raises(ValueError, match="beta_nll"):
        MultiTaskLoss(LossConfig(likelihood="laplace", beta_nll=0.5))
    with pytest.raises(ValueError, match="init_log_var"):
        MultiTaskLoss(LossConfig(init_log_var=20.0))
    with pytest.raises(ValueError, match="tasks"):
        MultiTaskLoss(LossConfig(tasks=("ct",)))


# --- with the model: gradient flow and optimiser groups ------------------------------------------

WEIGHTINGS = ("fixed", "homoscedastic", "hetero_homo", "hetero")
SMALL_MODEL = {"channels": [4, 8], "strides": [2], "dropout": 0.2}


def model_and_loss(weighting: str, tasks=("sct", "seg"), **loss_options):
    loss = {"weighting": weighting, "tasks": list(tasks), **loss_options}
    cfg = config_from_dict({"model": SMALL_MODEL, "loss": loss})
    return build_model(cfg.model), MultiTaskLoss(cfg.loss)


def synthetic_batch(shape=(8, 8, 8), num_classes: int = 6):
    torch.manual_seed(0)
    mask = torch.zeros(1, 1, *shape)
    mask[..., 1:-1, 1:-1, 1:-1] = 1
    return {
        "mr": torch.randn(1, 1, *shape),
        "ct": torch.randn(1, 1, *shape) * 0.1,
        "mask": mask,
        "labels": torch.randint(0, num_classes, (1, 1, *shape)),
    }


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_gradient_reaches_every_head_and_learned_scalar(weighting):
    model, loss_fn = model_and_loss(weighting)
    batch = synthetic_batch()
    total, _ = loss_fn(model(batch["mr"]), batch)
    total.backward()
    for key, head in model.heads.items():
        assert head.conv.weight.grad.abs().sum() > 0, key
    for name, param in loss_fn.named_parameters():
        assert param.grad is not None and param.grad.abs() > 0, name
    assert model.encoder.levels[0].conv.unit0.conv.weight.grad.abs().sum() > 0
    expected_scalars = {
        "fixed": set(),
        "homoscedastic": {"log_var_sct", "log_var_seg"},
        "hetero_homo": {"log_var_seg"},
        "hetero": set(),
    }
    assert {name for name, _ in loss_fn.named_parameters()} == expected_scalars[weighting]


def test_parameter_groups_keep_log_vars_out_of_weight_decay():
    model, loss_fn = model_and_loss("homoscedastic")
    groups = parameter_groups(model, loss_fn, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["log_vars"]["weight_decay"] == 0.0 and by_name["biases_norms"]["weight_decay"] == 0.0
    assert by_name["weights"]["weight_decay"] == 0.1
    assert {id(p) for p in by_name["log_vars"]["params"]} == {id(p) for p in loss_fn.parameters()}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters())) + 2

    optimizer = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.5)  # group values override 0.5
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    for param in loss_fn.parameters():
        param.data.fill_(1.5)
        param.grad = torch.zeros_like(param)
    weight = by_name["weights"]["params"][0]
    before = weight.detach().clone()
    optimizer.step()
    assert all(p.item() == 1.5 for p in loss_fn.parameters())
    assert torch.allclose(weight, before * (1 - 0.1 * 0.1))  # decoupled decay did act on weights
    with pytest.raises(ValueError, match="weight_decay"):
        parameter_groups(model, loss_fn, -1.0)


def reference_objective(outputs, batch, cfg: LossConfig) -> dict[str, float]:
    """DESIGN.md section 1 written out with plain torch ops: the value MultiTaskLoss must give
    (Gaussian likelihood: MSE base loss, regression form for a scalar sCT s)."""
    assert cfg.likelihood == "gaussian"
    mask = batch["mask"]

    def body_mean(x):
        return ((x * mask).sum() / mask.sum()).item()

    def clamp(s):
        return s.clamp(cfg.log_var_min, cfg.log_var_max)

    s0 = cfg.init_log_var
    want: dict[str, float] = {}
    total = 0.0
    if "sct" in cfg.tasks:
        r = batch["ct"] - outputs["sct"]
        want["mae_sct"] = body_mean(r.abs())
        if cfg.weighting in ("hetero_homo", "hetero"):
            s = clamp(outputs["sct_log_var"])
            want["loss_sct"] = body_mean(0.5 * torch.exp(-s) * r**2 + 0.5 * s)
            want["mean_sigma_sct"] = body_mean(torch.exp(0.5 * s))
            total += want["loss_sct"]
        else:
            want["loss_sct"] = body_mean(r**2)
            total += (cfg.fixed_weight_sct * want["loss_sct"] if cfg.weighting == "fixed"
                      else 0.5 * math.exp(-s0) * want["loss_sct"] + 0.5 * s0)
    if "seg" in cfg.tasks:
        logits = outputs["seg_logits"]
        onehot = torch.nn.functional.one_hot(batch["labels"][:, 0], logits.shape[1]).movedim(-1, 1).float()
        ce = -(onehot * torch.log_softmax(logits, 1)).sum(1, keepdim=True)  # (B, 1, ...) every voxel
        probs = torch.softmax(logits, 1)
        dims = (0, 2, 3, 4)  # pooled over the batch, foreground classes, MONAI's 1e-5 smoothing
        inter, p_sum, g_sum = (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)
        dice = (1 - (2 * inter + 1e-5) / (p_sum + g_sum + 1e-5))[1:].mean().item() * cfg.seg_dice_weight
        want["loss_seg"] = ce.mean().item() + dice
        if cfg.weighting == "hetero":
            s = clamp(outputs["seg_log_var"])
            total += (torch.exp(-s) * ce + 0.5 * s).mean().item() + dice
            want["mean_sigma_seg"] = torch.exp(0.5 * s).mean().item()
        elif cfg.weighting == "fixed":
            total += cfg.fixed_weight_seg * want["loss_seg"]
        else:
            total += math.exp(-s0) * want["loss_seg"] + 0.5 * s0
    want["loss_total"] = total
    for task in ("sct", "seg"):
        scalar = task in cfg.tasks and {"homoscedastic": True, "hetero_homo": task == "seg"}.get(cfg.weighting)
        if scalar:
            want[f"log_var_{task}"] = s0
            want[f"sigma_{task}"] = math.exp(0.5 * s0)
    return want


@pytest.mark.parametrize(
    ("weighting", "tasks"),
    [(w, ("sct", "seg")) for w in WEIGHTINGS]
    + [(w, ("sct",)) for w in WEIGHTINGS]
    + [(w, ("seg",)) for w in WEIGHTINGS],
)
def test_components_on_odd_volume(weighting, tasks):
    # Non-default weights and initial s, so a dropped or swapped factor changes the value.
    options = {"init_log_var": 0.3, "fixed_weight_sct": 2.0, "fixed_weight_seg": 0.5, "seg_dice_weight": 0.7}
    model, loss_fn = model_and_loss(weighting, tasks, **options)
    shape = (19, 13, 11)  # odd: the model pads to a multiple of its stride and crops back
    batch = synthetic_batch(shape=shape)
    with torch.no_grad():
        outputs = model(batch["mr"])
    assert all(v.shape[2:] == shape for v in outputs.values())
    total, logged = loss_fn(outputs, batch)
    assert total.ndim == 0
    want = reference_objective(outputs, batch, loss_fn.cfg)
    assert set(logged) == set(want)
    assert all(isinstance(v, float) for v in logged.values())
    for key, value in want.items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert total.item() == pytest.approx(want["loss_total"], rel=1e-5)


# --- mixed supervision: per-sample task masks ------------------------------------------------------


def mixed_batch():
    """Three samples: 0 has ct and labels, 1 ct only (labels are a zero stand-in), 2 labels only.

    Sample 1's stand-in labels and sample 2's stand-in CT are made badly wrong on purpose (a huge
    sCT error, confident logits for the wrong class), so any leak of them into a term shows.
    """
    torch.manual_seed(0)
    shape = (3, 1, 4, 4, 4)
    ct = torch.randn(shape) * 0.2
    sct = ct + 0.1 * torch.randn(shape)
    sct[2] = ct[2] + 50.0  # sample 2 has no CT: its stand-in CT is zeros, its error huge
    labels = torch.randint(0, 3, shape)
    logits = torch.randn(3, 3, 4, 4, 4)
    logits[1] = 0.0
    logits[1, 2] = 30.0  # sample 1 has no labels: confidently "2" against stand-in "0"
    labels[1] = 0
    mask = torch.ones(shape)
    mask[:, :, :, :, 0] = 0
    outputs = {"sct": sct.requires_grad_(), "seg_logits": logits.requires_grad_(),
               "sct_log_var": torch.full(shape, -1.0, requires_grad=True)}
    batch = {"mr": torch.randn(shape), "ct": ct, "labels": labels, "mask": mask,
             "has_ct": torch.tensor([1.0, 1.0, 0.0]), "has_labels": torch.tensor([1.0, 0.0, 1.0])}
    return outputs, batch


@pytest.mark.parametrize("weighting", ["fixed", "homoscedastic", "hetero_homo"])
def test_each_task_is_averaged_over_the_samples_that_have_its_target(weighting):
    outputs, batch = mixed_batch()
    loss_fn = MultiTaskLoss(LossConfig(weighting=weighting, seg_dice_weight=1.0, init_log_var=0.3))
    terms, logged = loss_fn.task_terms(outputs, batch)
    # the same terms computed on the samples that have the target, with no flags at all
    pick = lambda d, rows: {k: v[rows] for k, v in d.items() if k not in ("has_ct", "has_labels")}  # noqa: E731
    sct_only, _ = loss_fn.task_terms(pick(outputs, [0, 1]), pick(batch, [0, 1]))
    seg_only, _ = loss_fn.task_terms(pick(outputs, [0, 2]), pick(batch, [0, 2]))
    assert terms["sct"].item() == pytest.approx(sct_only["sct"].item(), rel=1e-6)
    assert terms["seg"].item() == pytest.approx(seg_only["seg"].item(), rel=1e-6)
    assert logged["mae_sct"].item() < 1.0  # sample 2's 50-unit stand-in error is out
    # and no gradient reaches a sample's output from a task it has no target for
    sum(terms.values()).backward()
    assert outputs["sct"].grad[2].abs().max() == 0 and outputs["sct"].grad[:2].abs().max() > 0
    assert outputs["seg_logits"].grad[1].abs().max() == 0 and outputs["seg_logits"].grad[[0, 2]].abs().max() > 0


def test_a_task_absent_from_the_whole_batch_is_left_out():
    outputs, batch = mixed_batch()
    batch["has_labels"] = torch.zeros(3)
    loss_fn = MultiTaskLoss(LossConfig(weighting="homoscedastic", seg_dice_weight=1.0))
    terms, logged = loss_fn.task_terms(outputs, batch)
    assert set(terms) == {"sct"} and "loss_seg" not in logged
    total, parts = loss_fn.combine(terms, logged)
    total.backward()
    # a batch that says nothing about segmentation does not move its learned weight (the +s/2
    # term alone would push s down for ever)
    assert loss_fn.log_var_seg.grad is None and loss_fn.log_var_sct.grad is not None
    assert parts["loss_total"] == pytest.approx(terms["sct"].item())
    batch["has_ct"] = torch.zeros(3)
    with pytest.raises(ValueError, match="no sample of the batch has a target"):
        loss_fn.task_terms(outputs, batch)
