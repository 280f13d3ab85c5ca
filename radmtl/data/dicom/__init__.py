"""DICOM for the planning-system side: MR series in (:mod:`.series`), the sCT as a CT series
(:mod:`.ct`) and the organs as an RT Structure Set (:mod:`.rtstruct`) out, and what they share
(:mod:`.common`: LPS ↔ RAS image planes, UIDs, identifiers).

Public pieces are imported on first access (:mod:`radmtl._lazy`).
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "DicomError": "common", "DicomIdentity": "common", "RADMTL_UID_ROOT": "common", "SlicePlanes": "common",
    "grid_to_planes": "common",
    "select_series": "series", "read_series": "series", "is_dicom_file": "series",
    "write_ct_series": "ct", "write_rtstruct": "rtstruct", "rasterise_rtstruct": "rtstruct",
})
