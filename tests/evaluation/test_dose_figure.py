"""The dose figure shows the patient the same way whatever the storage order of the case (RAS, LPS): radmtl's
display convention puts the patient's right on the image's left, so an LPS-stored case must be turned into RAS
order before its slices are drawn (it was not, and showed the rectum anterior and the left femoral head on the
right)."""

from __future__ import annotations

import numpy as np
import pytest

from radmtl.evaluation.dose import figure as dose_figure_module

SHAPE = (12, 10, 6)


def _patient():
    """CT, doses, structures in RAS order: a bright marker on the patient's right (high RAS x), a target in the
    middle, a 'rectum' posterior (low RAS y)."""
    ct = np.zeros(SHAPE, np.float32)
    ct[9:11, 4:6, :] = 1000.0  # the patient's right
    target = np.zeros(SHAPE, bool)
    target[5:7, 4:6, 2:4] = True
    rectum = np.zeros(SHAPE, bool)
    rectum[5:7, 1:3, 2:4] = True
    dose = np.where(target, 60.0, 5.0).astype(np.float32)
    dose[9:11] += 10.0  # more dose on the right
    return ct, dose, {"prostate": target, "rectum": rectum}


def _drawn_slices(monkeypatch, tmp_path, lps: bool, samples: bool = False) -> list[np.ndarray]:
    ct, dose, structures = _patient()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    if lps:  # the same patient stored LPS: index x grows to the left, y to the posterior
        flip = lambda a: np.ascontiguousarray(np.asarray(a)[::-1, ::-1])  # noqa: E731
        ct, dose, structures = flip(ct), flip(dose), {k: flip(v) for k, v in structures.items()}
        affine = np.diag([-2.0, -2.0, 3.0, 1.0])
        affine[:2, 3] = [2.0 * (SHAPE[0] - 1), 2.0 * (SHAPE[1] - 1)]  # the same world points
    drawn = []
    from radmtl.evaluation.display import display_slice as original

    def record(image, view, index):
        out = original(image, view, index)
        drawn.append(np.array(out, copy=True))
        return out

    monkeypatch.setattr(dose_figure_module, "display_slice", record)
    sample_doses = np.stack([dose, dose * 1.01, dose * 0.99]) if samples else None
    path = dose_figure_module.dose_figure(ct, ct, dose, dose * 1.02, structures, "prostate", affine, 60.0, "t",
                                          tmp_path / f"{lps}.png", sample_doses=sample_doses)
    assert path.stat().st_size > 5_000
    return drawn


@pytest.mark.parametrize("samples", [False, True])
def test_an_lps_stored_case_is_drawn_as_the_same_case_stored_ras(monkeypatch, tmp_path, samples):
    ras = _drawn_slices(monkeypatch, tmp_path, lps=False, samples=samples)
    lps = _drawn_slices(monkeypatch, tmp_path, lps=True, samples=samples)
    assert len(ras) == len(lps) > 6
    for a, b in zip(ras, lps):
        np.testing.assert_array_equal(np.ma.getdata(a), np.ma.getdata(b))
    # The first slice drawn is the CT: its marker, on the patient's RIGHT (RAS x > centre), is on the image's
    # LEFT half (radiological view), whichever way the case was stored.
    columns = np.nonzero(np.ma.getdata(lps[0]) > 500)[1]
    assert columns.size and columns.max() < lps[0].shape[1] / 2
