"""radmtl.inference.predict: per-window statistics and the σ / entropy maps, against hand-computed values.

A stub model returns T known samples, so each statistic has one right answer: σ_epistemic is the
population SD (ddof = 0) of the sCT samples, σ_aleatoric is √(mean σ²) over samples (not the mean
σ), mutual information is entropy of the mean minus the mean entropy, and the σ-scaling factor
multiplies the aleatoric part only. Samples are chosen so that each plausible slip (E[x²] for the
variance, mean σ for √mean σ², MI = expected entropy, scaling σ_total as a whole) gives a
different number.
"""

from __future__ import annotations

import math

import pytest
import torch

from radmtl.inference.predict import finalize, predict_volume, window_statistics


def _entropy(*p: float) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


class StubModel(torch.nn.Module):
    """Returns fixed samples: ``samples[key]`` is (T, B, C, D, H, W); ``forward`` gives sample 0."""

    def __init__(self, samples: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.samples = samples
        self.calls: list[tuple[str, int]] = []

    def forward(self, mr: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(("forward", 1))
        return {k: v[0] for k, v in self.samples.items()}

    def mc_forward(self, mr: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
        self.calls.append(("mc_forward", samples))
        assert samples == next(iter(self.samples.values())).shape[0]
        return dict(self.samples)


def _voxels(values) -> torch.Tensor:
    """(T, 1, 1, N, 1, 1) from a T × N nested list: T samples of an N-voxel volume."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, :, None, None]


MR = torch.zeros(1, 1, 2, 1, 1)

# Three samples at two voxels. Voxel 0: sCT (1, 2, 6) -> mean 3, population variance 14/3
# (E[x²] = 41/3 would be the slip). Voxel 1: all equal -> variance 0 (E[x²] = 4).
SCT = [[1.0, 2.0], [2.0, 2.0], [6.0, 2.0]]
VAR_EPISTEMIC = [14.0 / 3.0, 0.0]


def test_epistemic_variance_is_the_population_variance_of_the_samples():
    model = StubModel({"sct": _voxels(SCT)})
    stats = window_statistics(model, MR, 3, "gaussian")
    assert model.calls == [("mc_forward", 3)]
    torch.testing.assert_close(stats["sct"].flatten(), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(stats["var_epistemic"].flatten(), torch.tensor(VAR_EPISTEMIC))
    out = finalize(stats, 3)
    torch.testing.assert_close(out["sigma_epistemic"].flatten(),
                               torch.tensor([math.sqrt(14.0 / 3.0), 0.0]))
    # no aleatoric head: the total is the epistemic part alone
    torch.testing.assert_close(out["sigma_total"], out["sigma_epistemic"])
    assert "sigma_aleatoric" not in out


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_aleatoric_sigma_is_the_root_of_the_mean_variance(likelihood):
    # Per-sample σ at voxel 0: (1, 3) -> √mean σ² = √5 while mean σ = 2; voxel 1: (2, 2) -> 2.
    sigmas = [[1.0, 2.0], [3.0, 2.0]]
    if likelihood == "gaussian":
        log_var = [[math.log(s**2) for s in row] for row in sigmas]  # s = log σ²
    else:
        log_var = [[math.log(s / math.sqrt(2.0)) for s in row] for row in sigmas]  # s_b = log b, σ = √2·b
    model = StubModel({"sct": _voxels([[0.0, 0.0], [0.0, 0.0]]), "sct_log_var": _voxels(log_var)})
    out = finalize(window_statistics(model, MR, 2, likelihood), 2)
    want = torch.tensor([math.sqrt(5.0), 2.0])
    torch.testing.assert_close(out["sigma_aleatoric"].flatten(), want)
    torch.testing.assert_close(out["sigma_epistemic"].flatten(), torch.zeros(2))
    torch.testing.assert_close(out["sigma_total"].flatten(), want)


def test_laplace_sigma_is_root_two_times_b():
    # b = (1, 3) at one voxel: σ² = 2b² = (2, 18), mean 10 -> σ = √10 (√2·mean b would be 2√2).
    log_b = [[0.0], [math.log(3.0)]]
    model = StubModel({"sct": _voxels([[0.0], [0.0]]), "sct_log_var": _voxels(log_b)})
    out = finalize(window_statistics(model, MR[:, :, :1], 2, "laplace"), 2)
    assert out["sigma_aleatoric"].item() == pytest.approx(math.sqrt(10.0), rel=1e-6)


def test_total_combines_aleatoric_and_epistemic_variances():
    # voxel 0: σ = (1, 3) -> var_al = 5; sCT (0, 4) -> var_ep = 4; total = √9 = 3
    model = StubModel({"sct": _voxels([[0.0], [4.0]]),
                       "sct_log_var": _voxels([[0.0], [math.log(9.0)]])})
    out = finalize(window_statistics(model, MR[:, :, :1], 2, "gaussian"), 2)
    assert out["sct"].item() == pytest.approx(2.0)
    assert out["sigma_aleatoric"].item() == pytest.approx(math.sqrt(5.0), rel=1e-6)
    assert out["sigma_epistemic"].item() == pytest.approx(2.0, rel=1e-6)
    assert out["sigma_total"].item() == pytest.approx(3.0, rel=1e-6)


def test_sigma_scale_multiplies_the_aleatoric_part_only():
    model = StubModel({"sct": _voxels([[0.0], [4.0]]),
                       "sct_log_var": _voxels([[0.0], [math.log(9.0)]])})
    stats = window_statistics(model, MR[:, :, :1], 2, "gaussian")
    out = finalize(stats, 2, sigma_scale=1.7)
    assert out["sigma_aleatoric"].item() == pytest.approx(1.7 * math.sqrt(5.0), rel=1e-6)
    assert out["sigma_epistemic"].item() == pytest.approx(2.0, rel=1e-6)
    # √(1.7²·5 + 4) = √18.45, not 1.7·3 = 5.1 (scaling the total) nor √(1.7·5 + 4)
    assert out["sigma_total"].item() == pytest.approx(math.sqrt(1.7**2 * 5.0 + 4.0), rel=1e-6)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="sigma_scale"):
            finalize(stats, 2, sigma_scale=bad)


def test_single_sample_uses_the_deterministic_forward():
    model = StubModel({"sct": _voxels([[5.0]]), "sct_log_var": _voxels([[math.log(4.0)]]),
                       "seg_logits": torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 2, 1, 1, 1)})
    stats = window_statistics(model, MR[:, :, :1], 1, "gaussian")
    assert model.calls == [("forward", 1)]
    assert stats["var_epistemic"].item() == 0.0
    out = finalize(stats, 1, sigma_scale=1.5)
    assert out["sct"].item() == 5.0
    assert out["sigma_aleatoric"].item() == pytest.approx(3.0)  # 1.5·√4
    assert out["sigma_total"].item() == pytest.approx(3.0)
    assert "sigma_epistemic" not in out and "seg_entropy" not in out and "seg_mutual_info" not in out
    torch.testing.assert_close(out["seg_probs"].flatten(), torch.tensor([0.25, 0.75]))
    assert out["seg_labels"].item() == 1


def test_entropy_and_mutual_information_two_classes():
    # Two samples at one voxel: p = (0.9, 0.1) and (0.3, 0.7); mean p = (0.6, 0.4).
    p1, p2 = (0.9, 0.1), (0.3, 0.7)
    logits = torch.tensor([[math.log(q) for q in p1], [math.log(q) for q in p2]])  # (T, C)
    model = StubModel({"seg_logits": logits.reshape(2, 1, 2, 1, 1, 1)})
    stats = window_statistics(model, MR[:, :, :1], 2, "gaussian")
    expected_entropy = (_entropy(*p1) + _entropy(*p2)) / 2  # 0.4680
    assert stats["seg_expected_entropy"].item() == pytest.approx(expected_entropy, rel=1e-5)
    out = finalize(stats, 2)
    torch.testing.assert_close(out["seg_probs"].flatten(), torch.tensor([0.6, 0.4]))
    assert out["seg_labels"].item() == 0
    entropy = _entropy(0.6, 0.4)  # 0.6730
    assert out["seg_entropy"].item() == pytest.approx(entropy, rel=1e-5)
    assert out["seg_mutual_info"].item() == pytest.approx(entropy - expected_entropy, rel=1e-4)  # 0.2050
    assert "sct" not in out and "sigma_total" not in out


def test_samples_that_agree_have_zero_mutual_information():
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(2, 1, 2, 1, 1, 1)
    out = finalize(window_statistics(StubModel({"seg_logits": logits}), MR[:, :, :1], 2, "gaussian"), 2)
    p = 1.0 / (1.0 + math.e)
    assert out["seg_entropy"].item() == pytest.approx(_entropy(p, 1.0 - p), rel=1e-5)
    assert out["seg_mutual_info"].item() == pytest.approx(0.0, abs=1e-6)


# --- through the sliding window -------------------------------------------------------------------


class WindowMeanModel(torch.nn.Module):
    """Deterministic per window: sCT = the window's mean MR (+ a per-sample offset), so overlapping
    windows disagree while the T samples within a window differ only by ``offsets``."""

    def __init__(self, offsets: tuple[float, ...]) -> None:
        super().__init__()
        self.offsets = torch.tensor(offsets)
        self.window_means: list[float] = []

    def _one(self, mr: torch.Tensor) -> dict[str, torch.Tensor]:
        means = mr.mean(dim=(1, 2, 3, 4), keepdim=True)
        self.window_means += means.flatten().tolist()
        return {"sct": means.expand_as(mr).clone(), "sct_log_var": torch.full_like(mr, math.log(0.25))}

    def forward(self, mr: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._one(mr)

    def mc_forward(self, mr: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
        assert samples == len(self.offsets)
        one = self._one(mr)
        sct = one["sct"][None] + self.offsets.reshape(-1, 1, 1, 1, 1, 1)
        return {"sct": sct, "sct_log_var": one["sct_log_var"][None].expand_as(sct).clone()}


def _ramp(shape=(16, 8, 8)) -> torch.Tensor:
    x = torch.arange(shape[0], dtype=torch.float32).reshape(-1, 1, 1).expand(shape)
    return (x**2 / 10.0)[None, None].contiguous()


def test_window_disagreement_is_not_epistemic_uncertainty():
    model = WindowMeanModel(offsets=(0.0, 0.0, 0.0))
    maps = predict_volume(model, _ramp(), (8, 8, 8), overlap=0.5, mc_samples=3, sw_batch_size=1)
    # The windows (x = 0..7, 4..11, 8..15) do disagree where they overlap ...
    assert len({round(m, 4) for m in model.window_means}) == 3
    sct = maps["sct"][0, 0, :, 0, 0]
    assert sct[0] < sct[6] < sct[15]
    # ... but the samples within each window agree, so there is no model uncertainty anywhere.
    assert torch.equal(maps["sigma_epistemic"], torch.zeros_like(maps["sigma_epistemic"]))
    torch.testing.assert_close(maps["sigma_aleatoric"], torch.full_like(maps["sct"], 0.5))
    torch.testing.assert_close(maps["sigma_total"], maps["sigma_aleatoric"])


def test_sliding_window_keeps_the_within_window_sample_spread():
    # Samples differ by (0, 2) in every window: SD 1 everywhere, however the windows disagree.
    model = WindowMeanModel(offsets=(0.0, 2.0))
    maps = predict_volume(model, _ramp(), (8, 8, 8), overlap=0.5, mc_samples=2, sw_batch_size=2,
                          sigma_scale=2.0)
    torch.testing.assert_close(maps["sigma_epistemic"], torch.ones_like(maps["sct"]))
    torch.testing.assert_close(maps["sigma_aleatoric"], torch.full_like(maps["sct"], 1.0))  # 2·0.5
    torch.testing.assert_close(maps["sigma_total"], torch.full_like(maps["sct"], math.sqrt(2.0)))


def test_mc_samples_are_reduced_as_they_come_not_held_all_at_once():
    """T = 1000 samples of one voxel valued 0, 1, …, 999, drawn a sample at a time: mean 499.5, population
    variance (T² − 1)/12, and never more than the chunk being reduced (and the next) alive at once."""
    import weakref

    class Chunks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.refs: list[weakref.ref] = []
            self.alive: list[int] = []

        def mc_chunks(self, mr: torch.Tensor, samples: int):
            for t in range(samples):
                chunk = {"sct": torch.full((1, 1, 1, 1, 1, 1), float(t)),
                         "sct_log_var": torch.full((1, 1, 1, 1, 1, 1), math.log(4.0))}
                self.refs.append(weakref.ref(chunk["sct"]))
                self.alive.append(sum(ref() is not None for ref in self.refs))
                yield chunk

    model = Chunks()
    t = 1000
    stats = window_statistics(model, torch.zeros(1, 1, 1, 1, 1), t, "gaussian")
    assert len(model.refs) == t and max(model.alive) <= 2
    assert stats["sct"].item() == pytest.approx((t - 1) / 2)
    assert stats["var_epistemic"].item() == pytest.approx((t**2 - 1) / 12, rel=1e-6)
    assert stats["var_aleatoric"].item() == pytest.approx(4.0)
