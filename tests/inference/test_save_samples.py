"""radmtl infer --save-samples K: the first K MC-dropout samples of the sCT, for a dose per sample.

The samples must be the very realisations σ_epistemic and the sCT are made of: their mean over K = T is
the written sCT, their population SD is σ_epistemic where one window covers a voxel, and a smaller K is
the start of the same sequence.
"""

from __future__ import annotations

import math

import pytest
import torch

from radmtl.inference.predict import finalize, predict_volume, window_statistics


class ChunkedSamples(torch.nn.Module):
    """T known sCT samples of a 2-voxel volume, sample t = (t, 10·t), handed out ``chunk`` at a time."""

    def __init__(self, chunk: int) -> None:
        super().__init__()
        self.chunk = chunk
        self.chunks_drawn = 0

    def mc_chunks(self, mr: torch.Tensor, samples: int):
        for first in range(0, samples, self.chunk):
            self.chunks_drawn += 1
            t = torch.arange(first, min(first + self.chunk, samples), dtype=torch.float32)
            sct = torch.stack([t, 10.0 * t], dim=-1)  # (t, 2)
            yield {"sct": sct.reshape(-1, 1, 1, 2, 1, 1)}


def test_window_statistics_keeps_the_first_k_samples_in_order_across_chunks():
    model = ChunkedSamples(chunk=3)
    stats = window_statistics(model, torch.zeros(1, 1, 2, 1, 1), 7, "gaussian", save_samples=5)
    assert model.chunks_drawn == 3  # 3 + 3 + 1: all T samples still feed the statistics
    samples = stats["sct_samples"]
    assert samples.shape == (1, 5, 2, 1, 1)
    torch.testing.assert_close(samples[0, :, :, 0, 0], torch.tensor([[t, 10.0 * t] for t in range(5)]))
    # The statistics are still those of all 7 samples, not of the 5 kept: mean 3, variance 4 at voxel 0.
    torch.testing.assert_close(stats["sct"].flatten(), torch.tensor([3.0, 30.0]))
    torch.testing.assert_close(stats["var_epistemic"].flatten(), torch.tensor([4.0, 400.0]))
    assert finalize(stats, 7)["sct_samples"] is samples


def test_window_statistics_without_save_samples_keeps_none_and_refuses_more_than_t():
    mr = torch.zeros(1, 1, 2, 1, 1)
    assert "sct_samples" not in window_statistics(ChunkedSamples(3), mr, 7, "gaussian")
    with pytest.raises(ValueError, match="save_samples"):
        window_statistics(ChunkedSamples(3), mr, 7, "gaussian", save_samples=8)


class OffsetSamples(torch.nn.Module):
    """Per window: sCT sample t = window mean MR + offsets[t]; the samples of one window differ by a constant."""

    def __init__(self, offsets: tuple[float, ...]) -> None:
        super().__init__()
        self.offsets = torch.tensor(offsets)

    def mc_forward(self, mr: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
        means = mr.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(mr)
        return {"sct": means[None] + self.offsets[:samples].reshape(-1, 1, 1, 1, 1, 1),
                "sct_log_var": torch.zeros_like(mr)[None].expand(samples, *mr.shape).clone()}


def test_predict_volume_blends_the_samples_like_the_mean():
    """Overlapping windows disagree; each sample is blended with the same Gaussian weights as the sCT, so
    sample k − the sCT is offset k − mean offset everywhere, and K = 0 leaves every map unchanged."""
    mr = (torch.arange(16, dtype=torch.float32).reshape(-1, 1, 1).expand(16, 8, 8) ** 2 / 10.0)[None, None]
    mr = mr.contiguous()
    offsets = (0.0, 1.0, 5.0)
    run = dict(roi_size=(8, 8, 8), overlap=0.5, mc_samples=3, sw_batch_size=1)
    plain = predict_volume(OffsetSamples(offsets), mr, **run)
    maps = predict_volume(OffsetSamples(offsets), mr, **run, save_samples=3)
    assert "sct_samples" not in plain and maps["sct_samples"].shape == (1, 3, 16, 8, 8)
    for key, value in plain.items():
        assert torch.equal(maps[key], value), key
    sct = maps["sct"][0, 0]
    assert sct[0, 0, 0] < sct[6, 0, 0] < sct[15, 0, 0]  # the windows do disagree
    for k, offset in enumerate(offsets):
        torch.testing.assert_close(maps["sct_samples"][0, k], sct + offset - 2.0)
    torch.testing.assert_close(maps["sct_samples"].std(dim=1, unbiased=False, keepdim=True),
                               maps["sigma_epistemic"])
    assert math.isclose(maps["sigma_epistemic"].mean().item(), math.sqrt(14.0 / 3.0), rel_tol=1e-5)
