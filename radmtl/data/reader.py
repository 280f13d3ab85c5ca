"""radmtl's one image reader, offered to MONAI's ``LoadImage``.

``check``, ``evaluate`` and the geometry checks of ``infer`` read volumes with
:func:`radmtl.data.io.read_volume` (nibabel for NIfTI, SimpleITK for ``.mha/.mhd/.nrrd``). MONAI's
own readers cannot take that place for the network's preprocessing: its ITK reader needs the
1.3 GB ``itk`` package (SimpleITK is not ``itk``), so without it ``LoadImaged`` refuses ``.mha``
— SynthRAD2025's format. This adapter hands ``read_volume``'s array and RAS affine to MONAI, so
every command reads every file through the same code and an ``.mha`` lands in the same RAS world
as the NIfTI of the same case.
"""

from __future__ import annotations

import re

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from radmtl.data.io import Volume, VolumeError, has_volume_suffix, read_volume


class VolumeReader(ImageReader):
    """MONAI ``ImageReader`` over :func:`radmtl.data.io.read_volume`: one 3D file per key."""

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return all(has_volume_suffix(name) for name in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs) -> Volume:
        names = ensure_tuple(data)
        if len(names) != 1:
            raise VolumeError(f"{', '.join(map(str, names))}: one file per image expected, got {len(names)}")
        return read_volume(names[0])

    def get_data(self, img: Volume) -> tuple[np.ndarray, dict]:
        affine = np.asarray(img.affine, dtype=np.float64)
        meta = {
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            # no channel axis: LoadImage(ensure_channel_first=True) adds it
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        return img.array, meta


def volume_error_in(err: BaseException) -> VolumeError | None:
    """The reader's :class:`VolumeError` behind a MONAI ``RuntimeError``, if any.

    ``LoadImage`` given a reader catches what the reader raises and keeps only its formatted
    traceback, as text, in the message of its own "cannot find a suitable reader" error; so the
    error is looked for in the exception chain first, then as the traceback's last line.
    """
    # VolumeError or a subclass of it (VolumeHeaderError), as the traceback's last line names it
    marker = re.compile(rf"^{re.escape(VolumeError.__module__)}\.Volume\w*Error: ")
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VolumeError):
            return err
        for line in str(err).splitlines():
            found = marker.match(line)
            if found:
                return VolumeError(line[found.end():])
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
