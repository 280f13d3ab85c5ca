"""The HU → relative stopping power (SPR) and HU → relative electron density (rED) table.

One named table serves the whole dose evaluation: the proton engine and the WEPL read its ``spr``
column, the photon engine its ``red`` column, both by piecewise-linear interpolation between its points
and held constant beyond its ends (``numpy.interp``, which is also how pyRadPlan converts a CT).

The default, ``matrad_default``, is matRad's generic calibration (``matRad_default.hlut``, Wieser et al.,
Med. Phys. 44:2556, 2017), the table that pyRadPlan 0.5.0 ships as ``pyRadPlan.ct.default_hlut`` and uses
for both photons and protons: air (−1024/−999 HU → 0.001), adipose (−90 → 0.95), soft tissue
(−45 → 0.99, 0 → 1.0, 100 → 1.095), bone (350 → 1.199, 3000 → 2.505). It is a generic curve, not a
scanner's stoichiometric calibration (Schneider et al., PMB 41:111, 1996): a clinic overrides it with its
own from a small CSV or YAML file (:func:`load_hlut`). matRad uses the same numbers as rED for photons;
so does the default here (a photon pencil beam barely tells the two apart in the pelvis).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from radmtl.evaluation.dose.errors import DoseError

logger = logging.getLogger(__name__)

_MATRAD_HU = (-1024.0, -999.0, -90.0, -45.0, 0.0, 100.0, 350.0, 3000.0)
_MATRAD_SPR = (0.001, 0.001, 0.95, 0.99, 1.0, 1.095, 1.199, 2.505)


@dataclass(frozen=True)
class Hlut:
    """A piecewise-linear HU table.

    Attributes:
        name: how reports name the table (``matrad_default`` or the file it came from).
        hu: (N,) strictly increasing CT numbers, N ≥ 2.
        spr: (N,) proton stopping power relative to water at each ``hu``.
        red: (N,) electron density relative to water at each ``hu``.
    """

    name: str
    hu: np.ndarray
    spr: np.ndarray
    red: np.ndarray

    def __post_init__(self) -> None:
        columns = {key: np.asarray(getattr(self, key), dtype=np.float64) for key in ("hu", "spr", "red")}
        shapes = {key: value.shape for key, value in columns.items()}
        if len(set(shapes.values())) != 1 or columns["hu"].ndim != 1 or columns["hu"].size < 2:
            raise DoseError(f"HU table {self.name!r}: hu, spr and red must be 1D columns of one length ≥ 2, "
                            f"got shapes {shapes}")
        if not all(np.all(np.isfinite(value)) for value in columns.values()):
            raise DoseError(f"HU table {self.name!r} holds a NaN or infinite value; fix the table file")
        if np.any(np.diff(columns["hu"]) <= 0):
            raise DoseError(f"HU table {self.name!r}: hu must increase strictly, got {columns['hu'].tolist()}")
        if np.any(columns["spr"] < 0) or np.any(columns["red"] < 0):
            raise DoseError(f"HU table {self.name!r}: spr and red must be ≥ 0")
        for key, value in columns.items():
            value.setflags(write=False)
            object.__setattr__(self, key, value)

    def to_spr(self, ct_hu: np.ndarray) -> np.ndarray:
        """Relative stopping power of each voxel, same shape as ``ct_hu``."""
        return np.interp(np.asarray(ct_hu, np.float64), self.hu, self.spr)

    def to_red(self, ct_hu: np.ndarray) -> np.ndarray:
        """Relative electron density of each voxel, same shape as ``ct_hu``."""
        return np.interp(np.asarray(ct_hu, np.float64), self.hu, self.red)

    def spr_slope(self, ct_hu: np.ndarray) -> np.ndarray:
        """dSPR/dHU (per HU) of the segment each voxel falls in; 0 beyond the table's ends.

        At a breakpoint the segment above it is used (right-continuous), so a σ of a few HU around a
        kink is propagated with one slope rather than an average of two.
        """
        ct_hu = np.asarray(ct_hu, np.float64)
        slopes = np.diff(self.spr) / np.diff(self.hu)
        segment = np.searchsorted(self.hu, ct_hu, side="right") - 1
        inside = (segment >= 0) & (segment < slopes.size)
        return np.where(inside, slopes[np.clip(segment, 0, slopes.size - 1)], 0.0)

    def table(self, quantity: str) -> np.ndarray:
        """(N, 2) array ``[hu, quantity]`` as pyRadPlan's engines take it; ``quantity`` is spr or red."""
        if quantity not in ("spr", "red"):
            raise DoseError(f"HU table quantity must be 'spr' or 'red', got {quantity!r}")
        return np.stack([self.hu, getattr(self, quantity)], axis=1)


DEFAULT_HLUT = Hlut("matrad_default", np.array(_MATRAD_HU), np.array(_MATRAD_SPR), np.array(_MATRAD_SPR))


def load_hlut(source: str | Path | None = None) -> Hlut:
    """The named default (``None`` or ``"matrad_default"``) or a table read from a file.

    Files: CSV with a header row ``hu,spr,red`` (``red`` may be left out: it then equals ``spr``, as in
    matRad), one breakpoint per row; or YAML ``{name: ..., hu: [...], spr: [...], red: [...]}``.

    Raises:
        DoseError: an unknown name, an unreadable file, or a table that is not strictly increasing in HU.
    """
    if source is None or str(source) == DEFAULT_HLUT.name:
        return DEFAULT_HLUT
    path = Path(source)
    if not path.is_file():
        raise DoseError(f"HU table {source!r} is neither {DEFAULT_HLUT.name!r} nor an existing CSV/YAML file")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict):
                raise DoseError(f"HU table {path}: expected a mapping with hu, spr and red lists")
            name = str(data.get("name", path.stem))
            hu, spr = data.get("hu"), data.get("spr")
            red = data.get("red", spr)
        else:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            name = path.stem
            columns = {key.strip().lower(): key for key in (rows[0].keys() if rows else [])}
            if "hu" not in columns or "spr" not in columns:
                raise DoseError(f"HU table {path}: the CSV header must name hu and spr (and optionally red), "
                                f"got {sorted(columns)}")
            hu = [float(row[columns["hu"]]) for row in rows]
            spr = [float(row[columns["spr"]]) for row in rows]
            red = [float(row[columns["red"]]) for row in rows] if "red" in columns else spr
        if hu is None or spr is None:
            raise DoseError(f"HU table {path}: needs hu and spr lists")
        table = Hlut(name, np.asarray(hu, np.float64), np.asarray(spr, np.float64), np.asarray(red, np.float64))
    except DoseError:
        raise
    except (OSError, ValueError, TypeError, yaml.YAMLError) as err:
        raise DoseError(f"HU table {path} could not be read ({err}); write a CSV with header hu,spr,red") from err
    logger.info("HU table %s: %d points from %s", table.name, table.hu.size, path)
    return table
