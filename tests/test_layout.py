"""The package is grouped by stage and imports flow one way (DESIGN.md section 5)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "radmtl"
# Who may import whom: cli → training → inference → evaluation → nn/data/tracking → config/errors/device/
# distributed (torchrun's process group, shared by training and inference).
# training uses inference (validation, recalibration run the network as infer does) and evaluation
# (metrics, QA pictures); inference uses evaluation for the per-case review it writes (its rule and
# pictures); evaluation never uses inference: it reads what infer wrote, from files.
ALLOWED = {
    "base": set(),
    "data": {"base"}, "nn": {"base", "data"}, "tracking": {"base"},  # nn writes checkpoints with data.io
    "inference": {"base", "data", "nn", "tracking", "evaluation"},
    "evaluation": {"base", "data", "nn", "tracking"},
    "training": {"base", "data", "nn", "tracking", "inference", "evaluation"},
    "cli": {"base", "data", "nn", "tracking", "inference", "evaluation", "training"},
}


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    return "cli" if parts[1:2] in (["cli"], ["__main__"]) else "base"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("radmtl"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if node.module == "radmtl"}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("radmtl")}
    return found


def test_imports_flow_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("radmtl", *path.relative_to(PACKAGE).with_suffix("").parts))
        stage = _stage(module)
        for imported in _imports(path):
            target = _stage(imported)
            if target != stage and target not in ALLOWED[stage]:
                wrong.append(f"{module} ({stage}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_every_stage_package_exists_and_names_its_public_pieces():
    import importlib

    for stage in ("data", "data.dicom", "data.phantom", "nn", "training", "inference", "evaluation", "tracking"):
        package = importlib.import_module(f"radmtl.{stage}")
        assert package.__all__, stage
        for name in package.__all__:
            assert getattr(package, name) is not None, f"radmtl.{stage}.{name}"


def test_no_flat_modules_left_behind():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "_lazy.py", "cli.py", "device.py", "distributed.py",
                    "errors.py"]


# Inside data: the phantom may use DICOM (its MR as a series) and the volume/dataset modules; DICOM may use
# the volume modules; the volume/dataset modules use neither, so reading a NIfTI never imports pydicom.
DATA_PARTS = {"core": set(), "dicom": {"core"}, "phantom": {"core", "dicom"}}


def _data_part(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["radmtl", "data"]:
        return None
    return parts[2] if len(parts) > 2 and parts[2] in ("dicom", "phantom") else "core"


def test_data_subpackages_exist_and_import_one_way():
    for part in ("dicom", "phantom"):
        assert (PACKAGE / "data" / part / "__init__.py").is_file(), part
    assert not sorted((PACKAGE / "data").glob("dicom_*.py")) and not sorted((PACKAGE / "data").glob("phantom*.py"))
    wrong = []
    for path in (PACKAGE / "data").rglob("*.py"):
        module = ".".join(("radmtl", *path.relative_to(PACKAGE).with_suffix("").parts))
        part = _data_part(module.removesuffix(".__init__"))
        for imported in _imports(path):
            target = _data_part(imported)
            if target is not None and target != part and target not in DATA_PARTS[part]:
                wrong.append(f"{module} ({part}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)
