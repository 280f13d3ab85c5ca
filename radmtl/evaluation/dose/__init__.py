"""Dosimetric evaluation of an sCT (issue 28): does the sCT give the same dose as the CT?

One idea per module: the HU → stopping-power/density table (:mod:`.hlut`), water-equivalent path length
along a ray with its σ (:mod:`.wepl`), dose–volume metrics (:mod:`.dvh`), the γ index (:mod:`.gamma`,
over pymedphys) and photon/proton planning and fixed-weight recomputation (:mod:`.engine`, over
pyRadPlan). pyRadPlan and pymedphys are the optional ``dose`` extra; without them the engine and γ raise
:class:`DoseDependencyError` saying how to install them, and the pure modules still work.

Public pieces are imported on first access (:mod:`radmtl._lazy`).
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "DoseError": "errors", "DoseDependencyError": "errors",
    "Hlut": "hlut", "DEFAULT_HLUT": "hlut", "load_hlut": "hlut",
    "ray_voxels": "wepl", "wepl": "wepl", "wepl_with_sigma": "wepl", "WeplResult": "wepl",
    "dose_at_volume": "dvh", "cumulative_dvh": "dvh", "dvh_metrics": "dvh",
    "gamma_pass_rate": "gamma", "gamma_index": "gamma",
    "PlanSettings": "engine", "DosePlan": "engine", "plan_on_ct": "engine", "recompute": "engine",
    "range_r80_mm": "profiles",
})
