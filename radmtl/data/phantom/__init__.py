"""The synthetic male pelvis: paired MR/CT with labels and a known CT noise SD (:mod:`.cases`), its
anatomy in millimetres (:mod:`.anatomy`), its CT noise model (:mod:`.noise`), the hard parts of real data
(:mod:`.realism`), the grids it is stored on (:mod:`.grids`) and its MR as a DICOM series (:mod:`.dicom`).

Public pieces are imported on first access (:mod:`radmtl._lazy`), so ``from radmtl.data.phantom import
generate_dataset`` reads as before the package was split.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "PHANTOM_LABELS": "cases", "CASE_FILES": "cases", "DEFAULT_SHAPE": "cases", "DEFAULT_FOV_MM": "cases",
    "PhantomCase": "cases", "PhantomError": "cases", "TRAIN_SEED": "cases", "DESIGN_SEED": "cases",
    "TEST_SEED": "cases", "case_seed": "cases", "case_tissue_hu": "cases", "default_spacing": "cases",
    "generate_case": "cases", "generate_dataset": "dataset", "phantom_affine": "grids",
    "phantom_mr_series": "dicom", "write_mr_series": "dicom", "write_dataset_mr_series": "dicom",
    "axial_affine": "grids", "oblique_affine": "grids", "orientation_affine": "grids",
    "ORIENTATIONS": "grids",
})
