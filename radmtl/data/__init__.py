"""Data: reading and writing volumes (one reader), DICOM (MR series in; CT series and RT structure set
out), dataset discovery, the integrity check, MONAI transforms and the synthetic pelvis phantom.

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "Volume": "io", "Grid": "io", "VolumeError": "io", "read_volume": "io", "write_like": "io", "write_volume": "io", "atomic_path": "io",
    "VolumeReader": "reader", "output_suffix": "io",
    "Case": "discovery", "DatasetIndex": "discovery", "DatasetError": "discovery", "discover": "discovery",
    "discover_all": "discovery", "split_cases": "splits", "stratified_split": "splits",
    "check_dataset": "check", "Problem": "check", "task_coverage": "check", "mr_problems": "volume_rules",
    "training_transforms": "transforms", "eval_transforms": "transforms", "derive_body_mask": "transforms",
    "generate_case": "phantom", "generate_dataset": "phantom", "PHANTOM_LABELS": "phantom",
    "DicomError": "dicom_common", "DicomIdentity": "dicom_common", "RADMTL_UID_ROOT": "dicom_common",
    "select_series": "dicom_series", "read_series": "dicom_series",
    "write_ct_series": "dicom_ct", "write_rtstruct": "dicom_rtstruct", "rasterise_rtstruct": "dicom_rtstruct",
    "phantom_mr_series": "phantom_dicom", "write_mr_series": "phantom_dicom",
})
