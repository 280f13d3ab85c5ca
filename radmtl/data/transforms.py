"""MONAI transform pipelines: volumes on disk -> normalised network input on the training grid.

One preprocessing chain serves training, validation and inference, so the network sees the same
intensities everywhere: load → channel-first → RAS → resample to ``cfg.spacing`` (labels and masks
nearest) → MR robust z-score → CT clip and scale. Training appends foreground-biased random crops
and augmentation that keeps left/right organ labels true.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from scipy import ndimage

from radmtl.config import Config, DataConfig
from radmtl.data.discovery import Case

log = logging.getLogger(__name__)

IMAGE_KEYS = ("mr", "ct")  # interpolated linearly
DISCRETE_KEYS = ("mask", "labels")  # nearest neighbour, never interpolated


def derive_body_mask(mr: np.ndarray) -> np.ndarray:
    """Body outline from an MR volume: threshold, keep the largest component, fill holes.

    Bone and air are both dark on MR, so the threshold alone leaves holes inside the body; hole
    filling (per axial slice and in 3D) closes them. Used when a case has no ``mask`` file and
    always for MR normalisation statistics, so training and inference normalise identically.
    """
    mr = np.asarray(mr, dtype=np.float32)
    positive = mr[mr > 0]
    if positive.size == 0:
        return np.zeros(mr.shape, dtype=np.uint8)
    threshold = 0.1 * float(np.percentile(positive, 99.0))
    body = mr > threshold
    body = ndimage.binary_closing(body, iterations=2)
    labelled, n = ndimage.label(body)
    if n > 1:
        sizes = ndimage.sum_labels(body, labelled, index=np.arange(1, n + 1))
        body = labelled == (1 + int(np.argmax(sizes)))
    for z in range(body.shape[2]):
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    body = ndimage.binary_fill_holes(body)
    return body.astype(np.uint8)


class DeriveMaskd(MapTransform):
    """Add ``mask`` from the MR when the case has none (DESIGN.md section 2)."""

    def __init__(self, mr_key: str = "mr", mask_key: str = "mask") -> None:
        super().__init__(keys=[mr_key])
        self.mr_key, self.mask_key = mr_key, mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if self.mask_key not in d:
            mr = d[self.mr_key]
            body = derive_body_mask(np.asarray(mr[0]))
            d[self.mask_key] = mr.new_tensor(body[None].astype(np.float32)) if isinstance(
                mr, torch.Tensor) else body[None].astype(np.float32)
            if hasattr(mr, "affine") and hasattr(d[self.mask_key], "affine"):
                d[self.mask_key].affine = mr.affine
        return d


class NormalizeMRd(MapTransform):
    """Per-case robust MR normalisation: clip to body percentiles, then z-score inside the body.

    Written by hand because MONAI's ``NormalizeIntensityd`` cannot take statistics from a separate
    mask, and MR scale is arbitrary per scanner/case. The statistics come from a body outline
    derived from the MR itself, never from a ground-truth mask, so inference (which has only MR)
    normalises exactly as training did.
    """

    def __init__(self, keys: KeysCollection, percentiles: Sequence[float]) -> None:
        super().__init__(keys)
        self.lo_pct, self.hi_pct = float(percentiles[0]), float(percentiles[1])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_mr(d[key], self.lo_pct, self.hi_pct)
        return d


def normalize_mr(mr: torch.Tensor, lo_pct: float, hi_pct: float) -> torch.Tensor:
    """(1, X, Y, Z) MR tensor → clipped and z-scored (float32), same type/metadata."""
    values = np.asarray(mr[0], dtype=np.float32)
    body = derive_body_mask(values).astype(bool)
    inside = values[body] if body.sum() >= 10 else values.ravel()
    lo, hi = np.percentile(inside, [lo_pct, hi_pct])
    clipped = np.clip(values, lo, hi)
    inside = clipped[body] if body.sum() >= 10 else clipped.ravel()
    mean, std = float(inside.mean()), float(inside.std())
    normalised = (clipped - mean) / max(std, 1e-6)
    out = mr.clone() if isinstance(mr, torch.Tensor) else np.array(mr)
    out[0] = torch.as_tensor(normalised) if isinstance(out, torch.Tensor) else normalised
    return out


def left_right_label_swaps(label_names: Mapping[str, int]) -> list[tuple[int, int]]:
    """Pairs of label values that exchange under a left-right flip (``*_left`` ↔ ``*_right``)."""
    swaps = []
    for name, value in label_names.items():
        if name.endswith("_left"):
            partner = name[: -len("_left")] + "_right"
            if partner in label_names:
                swaps.append((int(value), int(label_names[partner])))
    return swaps


class RandLeftRightFlipd(Randomizable, MapTransform):
    """Flip along RAS x (patient left-right) and swap left/right organ labels.

    MONAI's ``RandFlipd`` would mirror a left femoral head onto the right side while keeping its
    "left" label, teaching the network that laterality does not exist; this flips the image *and*
    exchanges the label values of each ``*_left``/``*_right`` pair. Requires RAS-oriented data.
    """

    def __init__(self, keys: KeysCollection, label_key: str, swaps: Sequence[tuple[int, int]],
                 prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.label_key, self.swaps, self.prob = label_key, list(swaps), prob
        self._do = False

    def randomize(self, data: object = None) -> None:
        self._do = self.R.random_sample() < self.prob

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        self.randomize()
        d = dict(data)
        if not self._do:
            return d
        for key in self.key_iterator(d):
            # Spatial axis 0 of a channel-first RAS tensor is x: patient right→left.
            d[key] = torch.flip(d[key], dims=[1]) if isinstance(d[key], torch.Tensor) \
                else np.flip(d[key], axis=1).copy()
        if self.label_key in d and self.swaps:
            labels = d[self.label_key]
            swapped = labels.clone()
            for left, right in self.swaps:
                swapped[labels == left] = right
                swapped[labels == right] = left
            d[self.label_key] = swapped
        return d


def preprocess(cfg: DataConfig, keys: Sequence[str]) -> list:
    """Deterministic chain for the keys present (``mr`` required); cached by the datasets."""
    keys = list(keys)
    interp = [k for k in keys if k in IMAGE_KEYS]
    discrete = [k for k in keys if k in DISCRETE_KEYS]
    lo, hi = cfg.ct_clip_hu
    chain: list = [
        LoadImaged(keys=keys, image_only=True, ensure_channel_first=True, dtype=np.float32),
        # labels=None: orient by the MetaTensor's own space (RAS from nibabel and ITK readers).
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=interp, pixdim=cfg.spacing, mode="bilinear", dtype=np.float32),
    ]
    if discrete:
        chain.append(Spacingd(keys=discrete, pixdim=cfg.spacing, mode="nearest", dtype=np.float32))
    chain.append(NormalizeMRd(keys=["mr"], percentiles=cfg.mr_percentiles))
    if "ct" in keys:
        chain.append(ScaleIntensityRanged(keys=["ct"], a_min=lo, a_max=hi, b_min=lo / cfg.ct_scale_hu,
                                          b_max=hi / cfg.ct_scale_hu, clip=True))
    if "mask" not in keys:
        chain.append(DeriveMaskd())
    return chain


def training_transforms(cfg: DataConfig, keys: Sequence[str], label_names: Mapping[str, int]) -> Compose:
    """Preprocessing + random foreground-biased crops + left/right-safe augmentation."""
    keys = list(keys)
    all_keys = keys + (["mask"] if "mask" not in keys else [])
    label_key = "labels" if "labels" in keys else "mask"
    pos = cfg.pos_fraction
    chain = preprocess(cfg, keys) + [
        SpatialPadd(keys=all_keys, spatial_size=cfg.patch_size, mode="constant"),
        RandCropByPosNegLabeld(
            keys=all_keys, label_key=label_key, spatial_size=cfg.patch_size, pos=pos, neg=1.0 - pos,
            num_samples=cfg.patches_per_volume, image_key="mask", image_threshold=0.0,
        ),
    ]
    if cfg.augment_flip:
        chain.append(RandLeftRightFlipd(keys=all_keys, label_key="labels",
                                        swaps=left_right_label_swaps(label_names)))
    if cfg.augment_intensity:
        chain += [
            RandBiasFieldd(keys=["mr"], coeff_range=(0.0, 0.05), prob=0.3),
            RandScaleIntensityd(keys=["mr"], factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=["mr"], offsets=0.1, prob=0.5),
        ]
    chain.append(EnsureTyped(keys=all_keys, track_meta=False))
    return Compose(chain)


def eval_transforms(cfg: DataConfig, keys: Sequence[str]) -> Compose:
    """Whole-volume preprocessing for validation and inference (metadata kept for inversion)."""
    return Compose(preprocess(cfg, keys))


def case_dicts(cases: list[Case], keys: tuple[str, ...]) -> list[dict]:
    """MONAI input dicts: file paths per key (the keys a case lacks are left out), plus the case id."""
    return [{"case_id": c.case_id, **{k: str(c.paths[k]) for k in keys if k in c.paths}} for c in cases]


def data_keys(cfg: Config, cases: list[Case]) -> tuple[str, ...]:
    """The image keys every case provides and the tasks need (``mask`` is derived when absent)."""
    keys = ["mr"]
    if "sct" in cfg.loss.tasks:
        keys.append("ct")
    if "seg" in cfg.loss.tasks:
        keys.append("labels")
    if cases and all("mask" in c.paths for c in cases):
        keys.append("mask")
    elif cases and all("labels" in c.paths for c in cases) and "labels" not in keys:
        keys.append("labels")  # organ-biased crops even for single-task sCT
    return tuple(keys)
