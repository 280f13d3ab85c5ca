"""``review/`` in each case folder of ``radmtl infer``: review.json, review.png and review.html.

The review (:mod:`radmtl.evaluation.review`) is decided on the input grid, from the maps infer writes
there, with the thresholds fitted after training and stored in the checkpoint. The maps arrive one at a
time as infer streams them to the writers; :class:`CaseReview` keeps the few the review needs (the sCT,
σ_total, the labels, the segmentation entropy and mutual information) until the labels, which come
last, arrive, and the review is then written on a writer thread while the next case runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.data.io import Volume
from radmtl.data.atomic import atomic_path
from radmtl.evaluation.display import as_ras  # its home is the display module (the dose figure uses it too)
from radmtl.evaluation.review import ReviewThresholds, review_case

log = logging.getLogger(__name__)

REVIEW_FOLDER = "review"
REVIEW_JSON = "review.json"
# infer's file stems (radmtl.inference.case_maps.MAP_OUTPUTS, plus "seg") the review reads. σ_aleatoric
# stands in for σ_total at T = 1, where infer writes no σ_total (it would equal σ_aleatoric).
_NEEDED = ("sct", "sct_sigma_aleatoric", "sct_sigma_grid", "sct_sigma_total", "seg_entropy", "seg_mutual_info", "seg")


def thresholds_of(payload: dict[str, Any]) -> ReviewThresholds | None:
    """The checkpoint's fitted review thresholds, or None (saved before they existed, or not fitted)."""
    record = payload.get("review_thresholds")
    return ReviewThresholds.from_dict(record) if record else None


class CaseReview:
    """Keeps the maps of one case that its review needs, then writes ``review/``."""

    def __init__(self, case_id: str, volume: Volume, label_names: dict[str, int], thresholds: ReviewThresholds | None,
                 sigma_scale: float, body: np.ndarray | None = None):
        self.case_id = case_id
        self.volume = volume
        self.label_names = label_names
        self.thresholds = thresholds
        self.sigma_scale = sigma_scale
        self.body = body
        self.maps: dict[str, np.ndarray] = {}

    def keep(self, stem: str, array: np.ndarray) -> None:
        if stem in _NEEDED:
            self.maps[stem] = array
        if stem == "sct_sigma_total":
            self.maps.pop("sct_sigma_aleatoric", None)

    @property
    def sigma_stem(self) -> str | None:
        return next((stem for stem in ("sct_sigma_total", "sct_sigma_aleatoric") if stem in self.maps), None)

    def flag_sigma(self) -> tuple[np.ndarray | None, str | None]:
        """The σ the review flags on and its name: σ_total (σ_aleatoric at T = 1) without σ_grid, the σ its
        levels were fitted on (:func:`radmtl.training.recalibration.review_thresholds` says why)."""
        stem = self.sigma_stem
        if stem is None:
            return None, None
        sigma = self.maps[stem]
        if "sct_sigma_grid" not in self.maps:
            return sigma, stem
        grid = self.maps["sct_sigma_grid"]
        return np.sqrt(np.clip(np.square(sigma) - np.square(grid), 0.0, None)), f"{stem} without sct_sigma_grid"

    def write(self, folder: Path, laterality: dict[str, Any] | None) -> dict[str, Any]:
        """Decide the review and write ``folder`` (review.json; the pictures unless drawing fails).

        Returns the review.json content.
        """
        from radmtl.data.transforms import derive_body_mask

        body = self.body if self.body is not None else derive_body_mask(self.volume.array) != 0
        voxel_ml = abs(float(np.linalg.det(np.asarray(self.volume.affine, np.float64)[:3, :3]))) / 1000.0
        sigma, sigma_name = self.flag_sigma()
        review, flagged = review_case(
            case_id=self.case_id, sigma_total_hu=sigma, labels=self.maps.get("seg"),
            body=body, voxel_ml=voxel_ml, label_names=self.label_names, thresholds=self.thresholds,
            entropy=self.maps.get("seg_entropy"), mutual_info=self.maps.get("seg_mutual_info"),
            laterality=laterality, sigma_scale=self.sigma_scale)
        review["sigma_map"] = sigma_name  # sct_sigma_aleatoric: T = 1, no epistemic part
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / REVIEW_JSON) as tmp:
            tmp.write_text(json.dumps(review, indent=2) + "\n", encoding="utf-8")
        files = [REVIEW_JSON]
        try:
            files += self._draw(folder, review, flagged, body, sigma, sigma_name)
        except Exception as err:  # a picture that cannot be drawn must not cost the case its outputs
            log.warning("case %s: the review pictures could not be drawn (%s: %s); review.json is written",
                        self.case_id, type(err).__name__, err)
        review["files"] = files
        self.maps.clear()
        return review

    def _draw(self, folder: Path, review: dict[str, Any], flagged: np.ndarray, body: np.ndarray,
              sigma: np.ndarray | None, sigma_name: str | None) -> list[str]:
        from radmtl.evaluation.review_figure import write_review_figure

        if "sct" not in self.maps or sigma is None:
            log.info("case %s: no sCT or σ map (a segmentation-only model): review.json only", self.case_id)
            return []
        affine = self.volume.affine
        mr, spacing = as_ras(self.volume.array, affine)

        def ras(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else as_ras(array, affine)[0]

        png, html = write_review_figure(
            folder, mr=mr, sct_hu=ras(self.maps["sct"]), sigma_total_hu=ras(sigma),
            labels=ras(self.maps.get("seg")), flagged=ras(flagged), body=ras(body), spacing=spacing,
            label_names=self.label_names, summary=review, title=self.case_id,
            sigma_threshold_hu=self.thresholds.sigma_total_hu if self.thresholds is not None else None,
            sigma_label="σ_total − σ_grid" if sigma_name and "grid" in sigma_name else "σ_total")
        return [Path(png).name, Path(html).name]


__all__ = ["CaseReview", "REVIEW_FOLDER", "REVIEW_JSON", "as_ras", "thresholds_of"]
