"""Dataset discovery: which cases a dataset folder holds and where each case's files are.

A dataset is a folder tree in which every folder holding an ``mr.*`` file is one case, plus an
optional ``dataset.json`` (nnU-Net/MSD-like) that names the labels and lists the cases::

    DATA/
      dataset.json          # optional
      case_001/mr.nii.gz ct.nii.gz mask.nii.gz labels.nii.gz [ct_noise_sd.nii.gz]

The published SynthRAD trees are datasets as they are: ``Task1/pelvis/1PA001/{mr,ct,mask}.nii.gz``
(SynthRAD2023) and ``Task1/AB/1ABA005/{mr,ct,mask}.mha`` (SynthRAD2025) are found from the task
root, with the case id the path below the root (``AB/1ABA005``, unique across centres) and the
folder above the case (``AB``, the centre or anatomy) its :attr:`Case.group`. Folders without an
MR (SynthRAD's ``overview/``) are not cases, and a case folder's own sub-folders are not searched.

Files are found by stem (``ct.nii``, ``ct.nii.gz``, ``ct.mha``, ``ct.nrrd`` are all "ct"). This
module never reads an image: it only decides which files belong to which case, so it is cheap
enough to run before anything else. Content checks live in :mod:`radmtl.data.check`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


from radmtl.errors import RadmtlError
from radmtl.data.io import VOLUME_SUFFIXES, has_volume_suffix, strip_volume_suffix

log = logging.getLogger(__name__)

IMAGE_KEYS = ("mr", "ct", "mask", "labels", "ct_noise_sd")
DATASET_JSON = "dataset.json"
SPLITS = ("training", "validation", "test")

_LABELS_EXAMPLE = '{"background": 0, "bladder": 1, ...}'


class DatasetError(RadmtlError, ValueError):
    """The dataset folder or its ``dataset.json`` cannot be used.

    Args:
        file: the folder or file at fault.
        what: what is wrong, one short clause.
        fix: how to fix it, one short clause.
    """

    def __init__(self, file: str | Path, what: str, fix: str) -> None:
        self.file = Path(file)
        self.what = what
        self.fix = fix
        super().__init__(f"{file}: {what}; fix: {fix}")


@dataclass(frozen=True)
class Case:
    """One case: its id and the files it has, keyed by :data:`IMAGE_KEYS` (absolute paths).

    Only files that were declared in ``dataset.json`` or found in the case folder are present;
    a declared file may still not exist on disk (``radmtl check`` reports that).
    """

    case_id: str
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The folder path above the case (``AB`` for ``AB/1ABA005``): centre or anatomy; "" at top level."""
        parent = PurePosixPath(self.case_id).parent.as_posix()
        return "" if parent == "." else parent

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this case has targets for: ``sct`` (a ct file), ``seg`` (a labels file)."""
        return tuple(task for task, key in (("sct", "ct"), ("seg", "labels")) if key in self.paths)


@dataclass(frozen=True)
class DatasetIndex:
    """All cases of a dataset folder, by split, plus the label names when known."""

    root: Path
    name: str
    labels: dict[str, int] | None
    training: tuple[Case, ...]
    validation: tuple[Case, ...]
    test: tuple[Case, ...] = ()

    @property
    def cases(self) -> tuple[Case, ...]:
        """Every case: training, then validation, then test."""
        return self.training + self.validation + self.test

    @property
    def has_dataset_json(self) -> bool:
        return (self.root / DATASET_JSON).is_file()


def find_volumes(folder: Path, key: str) -> list[Path]:
    """Every volume file in ``folder`` whose stem is ``key`` (case-insensitive), best first.

    Order follows :data:`radmtl.data.io.VOLUME_SUFFIXES` (``.nii.gz`` first) so the choice among
    duplicates is deterministic; more than one match is ambiguous and ``radmtl check`` says so.
    """
    if not folder.is_dir():
        return []
    matches = [
        p for p in folder.iterdir()
        if p.is_file() and has_volume_suffix(p.name) and strip_volume_suffix(p.name).lower() == key
    ]

    def rank(path: Path) -> tuple[int, str]:
        lower = path.name.lower()
        for i, suffix in enumerate(VOLUME_SUFFIXES):
            if lower.endswith(suffix):
                return i, path.name
        return len(VOLUME_SUFFIXES), path.name

    return sorted(matches, key=rank)


def _find_case_files(folder: Path, keys: Sequence[str] = IMAGE_KEYS) -> dict[str, Path]:
    paths = {}
    for key in keys:
        found = find_volumes(folder, key)
        if found:
            if len(found) > 1:
                log.warning("%s: several %s files (%s); using %s", folder, key,
                            ", ".join(p.name for p in found), found[0].name)
            paths[key] = found[0]
    return paths


def _walk(root: Path) -> Iterator[tuple[Path, bool]]:
    """Every visible folder below ``root`` (sorted, depth first) and whether it holds an ``mr.*``.

    A case folder's sub-folders are not visited: a case never contains another case.
    """
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        log.warning("%s: cannot list (%s); skipped", root, err.strerror)
        return
    for sub in children:
        is_case = bool(find_volumes(sub, "mr"))
        yield sub, is_case
        if not is_case:
            yield from _walk(sub)


def folders_without_mr(root: str | Path) -> list[Path]:
    """Folders below ``root`` that hold volume files but no ``mr.*`` (skipped by discovery).

    Usually a misnamed MR (``T2.nii.gz``); reported by ``radmtl check`` so a case is never
    silently left out.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return [folder for folder, is_case in _walk(root)
            if not is_case and any(p.is_file() and has_volume_suffix(p.name) for p in folder.iterdir())]


def discover(root: str | Path) -> DatasetIndex:
    """Index the cases of a dataset folder.

    With ``DATA/dataset.json`` its ``training``/``validation``/``test`` lists define the cases;
    files an entry does not declare are still picked up from ``DATA/<case>/`` by stem. Without
    it, every folder below ``root`` holding an ``mr.*`` file is a training case (sorted by path; see
    the module docstring) and the labels are unknown (``None``).

    Args:
        root: the dataset folder.

    Returns:
        The index; paths are absolute.

    Raises:
        DatasetError: the folder is missing or holds no case, or ``dataset.json`` is malformed.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(root, "dataset folder not found", "check the path")
    if not root.is_dir():
        raise DatasetError(root, "is a file, expected a dataset folder",
                           "pass the folder holding the case sub-folders")
    root = root.resolve()
    json_path = root / DATASET_JSON
    if json_path.is_file():
        index = _from_dataset_json(root, json_path)
    else:
        index = _from_folders(root)
    log.debug("%s: %d training, %d validation, %d test case(s)", root, len(index.training),
             len(index.validation), len(index.test))
    return index


def _from_folders(root: Path) -> DatasetIndex:
    cases = []
    for folder, is_case in _walk(root):
        if is_case:
            cases.append(Case(case_id=folder.relative_to(root).as_posix(), paths=_find_case_files(folder)))
    if not cases:
        raise DatasetError(
            root, "no cases found (no folder below it holds an mr.nii.gz/.nii/.mha/.nrrd file)",
            "put each case in its own folder, e.g. case_001/mr.nii.gz, or add a dataset.json",
        )
    return DatasetIndex(root=root, name=root.name, labels=None, training=tuple(cases),
                        validation=())


def discover_all(roots: Sequence[str | Path]) -> DatasetIndex:
    """Index several dataset folders as one (``--data A B``): their cases, split by split.

    Case ids must stay unique across the folders, and declared labels must agree, so that a
    case is never silently replaced and a label value means one organ.

    Raises:
        DatasetError: as :func:`discover`, or a case id or label map that clashes between folders.
    """
    if not roots:
        raise ValueError("discover_all: no dataset folder given")
    indices = [discover(root) for root in roots]
    if len(indices) == 1:
        return indices[0]
    owner: dict[str, Path] = {}
    labels = None
    for index in indices:
        for case in index.cases:
            if case.case_id in owner:
                raise DatasetError(index.root, f'case id "{case.case_id}" is also a case of {owner[case.case_id]}',
                                   "rename one of the two case folders, or pass only one of the folders")
            owner[case.case_id] = index.root
        if index.labels is not None:
            if labels is not None and index.labels != labels:
                raise DatasetError(index.root / DATASET_JSON, f"labels {index.labels} differ from {labels} "
                                   "of the other dataset folder", "use one label map in every dataset.json")
            labels = index.labels
    return DatasetIndex(
        root=indices[0].root, name="+".join(index.name for index in indices), labels=labels,
        training=sum((index.training for index in indices), ()),
        validation=sum((index.validation for index in indices), ()),
        test=sum((index.test for index in indices), ()))


def _from_dataset_json(root: Path, json_path: Path) -> DatasetIndex:
    try:
        spec = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise DatasetError(json_path, f"not valid JSON{where}: {err}",
                           "fix the syntax, e.g. with `python -m json.tool dataset.json`") from err
    except OSError as err:
        raise DatasetError(json_path, f"cannot be read ({err.strerror})",
                           "check its permissions") from err
    if not isinstance(spec, dict):
        raise DatasetError(json_path, f"top level is a JSON {type(spec).__name__}, expected an object",
                           'write {"name": ..., "labels": {...}, "training": [...]}')
    if "training" not in spec:
        raise DatasetError(json_path, 'has no "training" list',
                           'add "training": [{"case": "case_001", "mr": "case_001/mr.nii.gz", ...}]')
    labels = _parse_labels(json_path, spec.get("labels"))
    splits: dict[str, tuple[Case, ...]] = {}
    seen: set[str] = set()
    for split in SPLITS:
        entries = spec.get(split, [])
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise DatasetError(json_path, f'"{split}" is a JSON {type(entries).__name__}, expected a list',
                               f'write "{split}": [{{"case": ..., "mr": ...}}, ...]')
        cases = []
        for i, entry in enumerate(entries):
            case = _parse_entry(root, json_path, split, i, entry)
            if case.case_id in seen:
                raise DatasetError(json_path, f'case "{case.case_id}" is listed more than once',
                                   "list each case in exactly one split, once")
            seen.add(case.case_id)
            cases.append(case)
        splits[split] = tuple(cases)
    if not seen:
        raise DatasetError(json_path, "lists no cases", 'add entries to "training"')
    name = spec.get("name")
    return DatasetIndex(root=root, name=str(name) if name else root.name, labels=labels, **splits)


def _parse_labels(json_path: Path, raw: object) -> dict[str, int] | None:
    if raw is None:
        return None
    fix = f'write "labels" as name -> integer with background 0, e.g. {_LABELS_EXAMPLE}'
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(json_path, '"labels" must be a non-empty object', fix)
    # MSD's dataset.json maps "0" -> "background"; catch it so the fix can say "swap".
    if all(isinstance(v, str) for v in raw.values()) and all(str(k).isdigit() for k in raw):
        raise DatasetError(json_path, '"labels" maps integer -> name (MSD style)',
                           f"swap keys and values, e.g. {_LABELS_EXAMPLE}")
    labels: dict[str, int] = {}
    for name, value in raw.items():
        # bool is an int subclass; true/false as a label value is a typo, not a label.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetError(json_path, f'label "{name}" has value {json.dumps(value)}, '
                               "expected a non-negative integer", fix)
        labels[str(name)] = value
    if labels.get("background") != 0:
        raise DatasetError(json_path, '"labels" has no "background": 0', fix)
    values = list(labels.values())
    if len(set(values)) != len(values):
        dup = sorted({v for v in values if values.count(v) > 1})
        raise DatasetError(json_path, f'"labels" gives value(s) {dup} to more than one name',
                           "give each label its own integer")
    return labels


def _parse_entry(root: Path, json_path: Path, split: str, i: int, entry: object) -> Case:
    where = f'"{split}"[{i}]'
    if not isinstance(entry, dict):
        raise DatasetError(json_path, f"{where} is a JSON {type(entry).__name__}, expected an object",
                           'write {"case": "case_001", "mr": "case_001/mr.nii.gz", ...}')
    case_id = entry.get("case")
    if not isinstance(case_id, str) or not case_id.strip():
        raise DatasetError(json_path, f'{where} has no "case" id',
                           f'add "case": "<folder name>" to {where}')
    if "mr" not in entry:
        raise DatasetError(json_path, f'{where} (case "{case_id}") has no "mr" path',
                           f'add "mr": "{case_id}/mr.nii.gz"')
    paths: dict[str, Path] = {}
    for key in IMAGE_KEYS:
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(json_path, f'{where} (case "{case_id}") "{key}" is {json.dumps(value)}, '
                               "expected a path string", f'write "{key}": "{case_id}/{key}.nii.gz"')
        path = Path(value).expanduser()
        paths[key] = path if path.is_absolute() else root / path
    unknown = sorted(set(entry) - set(IMAGE_KEYS) - {"case"})
    if unknown:
        log.debug("%s: %s ignores keys %s", json_path, where, unknown)
    # Files an entry leaves out are still picked up from the case folder: listing only "case"
    # and "mr" should not hide a ct.nii.gz sitting next to the mr.
    undeclared = [k for k in IMAGE_KEYS if k not in paths]
    paths.update(_find_case_files(root / case_id, undeclared))
    return Case(case_id=case_id, paths=paths)


def label_names(index: DatasetIndex, max_label: int | None = None) -> dict[str, int]:
    """Label name → integer value.

    Args:
        index: the dataset.
        max_label: the largest label value found in the data; used only when ``dataset.json``
            declares no labels.

    Returns:
        ``index.labels`` when declared; otherwise ``background`` = 0 and ``label_<k>`` = k for
        k = 1..``max_label`` (just background when ``max_label`` is None or 0).
    """
    if index.labels is not None:
        return dict(index.labels)
    if max_label is not None and (isinstance(max_label, bool) or int(max_label) != max_label or max_label < 0):
        raise ValueError(f"max_label must be a non-negative integer, got {max_label!r}")
    names = {"background": 0}
    for k in range(1, int(max_label or 0) + 1):
        names[f"label_{k}"] = k
    return names
