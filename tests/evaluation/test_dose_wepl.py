"""WEPL by exact ray traversal, against hand values: water, a bone slab, a HU change in it, and σ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation.dose.hlut import DEFAULT_HLUT, Hlut
from radmtl.evaluation.dose.wepl import distal_edge_mm, ray_voxels, wepl, wepl_with_sigma

WATER = Hlut("linear", np.array([-1000.0, 1000.0]), np.array([0.0, 2.0]), np.array([0.0, 2.0]))  # slope 1/1000 per HU


def _affine(spacing, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def test_traversal_lengths_add_up_to_the_path_inside_the_grid_on_any_affine():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 3.0, 4.0])
    centre = affine[:3, :3] @ np.array([5.0, 5.0, 5.0])
    # A segment from the centre 10 mm in any direction stays inside an 11³ grid of ≥ 2 mm voxels.
    for _ in range(5):
        direction = rng.normal(size=3)
        end = centre + 10.0 * direction / np.linalg.norm(direction)
        indices, lengths = ray_voxels((11, 11, 11), affine, centre, end)
        assert lengths.sum() == pytest.approx(10.0, abs=1e-9)
        assert np.all(np.abs(np.diff(indices, axis=0)).sum(axis=1) >= 1)  # each piece a new voxel


def test_water_box_wepl_is_the_geometric_length():
    spr = np.ones((20, 10, 10))
    affine = _affine((2.0, 2.0, 2.0))
    # From outside the grid (x = −10 mm) to the centre of voxel 15 (x = 30 mm): inside from x = −1 mm.
    assert wepl(spr, affine, (-10.0, 9.0, 9.0), (30.0, 9.0, 9.0)) == pytest.approx(31.0)
    diagonal = np.array([20.0, 8.0, 6.0])
    assert wepl(spr, affine, (0.0, 0.0, 0.0), diagonal) == pytest.approx(np.linalg.norm(diagonal))


def test_bone_slab_adds_spr_minus_one_times_thickness_and_a_hu_change_shifts_it_analytically():
    ct_hu = np.zeros((40, 8, 8))
    ct_hu[10:15] = 1000.0  # a 15 mm slab of bone at 3 mm voxels
    affine = _affine((3.0, 3.0, 3.0))
    start, end = (-1.5, 10.5, 10.5), (100.5, 10.5, 10.5)  # 102 mm from the grid's edge
    s = DEFAULT_HLUT.to_spr(1000.0)
    result = wepl_with_sigma(ct_hu, affine, start, end)
    assert result.geometric_mm == pytest.approx(102.0)
    assert result.wepl_mm == pytest.approx(102.0 + (s - 1.0) * 15.0)
    more = ct_hu.copy()
    more[10:15] *= 1.10  # +10 % HU in the slab
    shift = wepl_with_sigma(more, affine, start, end).wepl_mm - result.wepl_mm
    assert shift == pytest.approx((DEFAULT_HLUT.to_spr(1100.0) - s) * 15.0)
    assert shift == pytest.approx(100.0 * 1.306 / 2650 * 15.0)


def test_sigma_bounds_correlated_and_independent_by_hand():
    ct_hu = np.zeros((10, 3, 3))
    sigma_hu = np.zeros_like(ct_hu)
    sigma_hu[2:6] = 50.0  # four 2 mm voxels with σ 50 HU, slope 1/1000 per HU
    affine = _affine((2.0, 2.0, 2.0))
    result = wepl_with_sigma(ct_hu, affine, (-1.0, 2.0, 2.0), (19.0, 2.0, 2.0), sigma_hu, hlut=WATER)
    per_voxel = 50.0 * 2.0 / 1000.0  # 0.1 mm of WEPL per voxel
    assert result.wepl_mm == pytest.approx(20.0)
    assert result.sigma_correlated_mm == pytest.approx(4 * per_voxel)
    assert result.sigma_independent_mm == pytest.approx(math.sqrt(4) * per_voxel)
    assert result.sigma_correlated_percent == pytest.approx(100 * 0.4 / 20.0)
    assert result.as_dict("beam0_")["beam0_sigma_wepl_independent_mm"] == pytest.approx(0.2)


def test_distal_edge_is_the_exit_plane_of_the_last_structure_voxel_on_the_ray():
    mask = np.zeros((20, 5, 5), bool)
    mask[8:12, 2, 2] = True
    affine = _affine((2.0, 2.0, 2.0))
    edge = distal_edge_mm(mask, affine, (-20.0, 4.0, 4.0), (20.0, 4.0, 4.0))
    np.testing.assert_allclose(edge, [23.0, 4.0, 4.0])  # voxel 11 spans 21–23 mm
    # From the other side the distal edge is voxel 8's far plane.
    np.testing.assert_allclose(distal_edge_mm(mask, affine, (60.0, 4.0, 4.0), (20.0, 4.0, 4.0)), [15.0, 4.0, 4.0])
    assert distal_edge_mm(mask, affine, (-20.0, 0.0, 0.0), (20.0, 0.0, 0.0)) is None
