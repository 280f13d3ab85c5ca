"""Data, three ideas: volumes and datasets here (reading and writing volumes with one reader, dataset
discovery, the integrity check, laterality, MONAI transforms); DICOM in :mod:`radmtl.data.dicom` (MR
series in; CT series and RT structure set out); the synthetic pelvis in :mod:`radmtl.data.phantom`.

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "Volume": "io", "Grid": "grid", "VolumeError": "io", "read_volume": "io", "write_like": "io", "write_volume": "io", "atomic_path": "atomic",
    "VolumeReader": "reader", "output_suffix": "io",
    "Case": "discovery", "DatasetIndex": "discovery", "DatasetError": "discovery", "discover": "discovery",
    "discover_all": "discovery", "split_cases": "splits", "stratified_split": "splits",
    "check_dataset": "check", "Problem": "check", "task_coverage": "check", "mr_problems": "volume_rules",
    "training_transforms": "transforms", "eval_transforms": "transforms", "derive_body_mask": "transforms",
    "check_laterality": "laterality", "left_right_pairs": "laterality",
    "generate_case": "phantom.cases", "generate_dataset": "phantom.dataset", "PHANTOM_LABELS": "phantom.cases",
    "DicomError": "dicom.common", "DicomIdentity": "dicom.common", "RADMTL_UID_ROOT": "dicom.common",
    "select_series": "dicom.series", "read_series": "dicom.series",
    "write_ct_series": "dicom.ct", "write_rtstruct": "dicom.rtstruct", "rasterise_rtstruct": "dicom.rtstruct",
    "phantom_mr_series": "phantom.dicom", "write_mr_series": "phantom.dicom",
})
