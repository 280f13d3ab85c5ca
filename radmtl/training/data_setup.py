"""What a training run trains on: the checked cases of one or more dataset folders, the tasks their
targets allow, the label names, and the training/validation split.

Mixed supervision (DESIGN.md section 2 allows a case without CT or labels): a case trains the tasks
it has targets for — ``ct`` for the sCT, ``labels`` for segmentation. A task that no case has a
target for is dropped from the run with one notice (a SynthRAD tree has no organ labels: it trains
the sCT alone, and its model carries no label names), and a case that serves none of the run's
tasks is left out with one notice.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from radmtl.config import Config, required_heads
from radmtl.data.discovery import Case, DatasetIndex, discover_all, label_names as numbered_labels
from radmtl.data.splits import stratified_split
from radmtl.errors import RadmtlError

log = logging.getLogger(__name__)

TASK_NAMES = {"sct": "the sCT (needs ct files)", "seg": "segmentation (needs labels files)"}
# the validation metric that stands for each task when a run's best_metric belongs to a dropped one
TASK_BEST_METRIC = {"sct": ("val_mae_hu", "min"), "seg": ("val_dice_mean", "max")}


@dataclass(frozen=True)
class TrainingData:
    """The run's config (tasks fitted to the data), its cases and label names."""

    cfg: Config
    index: DatasetIndex
    labels: dict[str, int]
    train_cases: list[Case]
    val_cases: list[Case]


def check_before_training(data_dirs: Sequence[Path]) -> None:
    """Refuse to train on a dataset with problems; the message shows the first three."""
    from radmtl.data.check import check_dataset

    for data_dir in data_dirs:
        _, problems = check_dataset(data_dir, purpose="train")
        if problems:
            shown = "; ".join(p.line() for p in problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise RadmtlError(f"{data_dir}: {len(problems)} problem(s) found before training: {shown}{more}; "
                              f"run 'radmtl check {data_dir}' for the full list")


def tasks_for_data(cfg: Config, cases: Sequence[Case], where: str) -> Config:
    """``cfg`` with the tasks that no case has a target for dropped (one notice), heads to match.

    Raises:
        RadmtlError: no case has a target for any task of ``cfg.loss.tasks``.
    """
    served = {task for case in cases for task in case.tasks}
    tasks = tuple(task for task in cfg.loss.tasks if task in served)
    if tasks == tuple(cfg.loss.tasks):
        return cfg
    if not tasks:
        wanted = " or ".join(TASK_NAMES[t] for t in cfg.loss.tasks)
        raise RadmtlError(f"{where}: no case has a target for {wanted}; add those files, or set "
                          "--set loss.tasks=[...] to the tasks your data has targets for")
    loss = replace(cfg.loss, tasks=tasks)
    train = cfg.train
    dropped = [t for t in cfg.loss.tasks if t not in tasks]
    metric_task = "seg" if train.best_metric.startswith("val_dice") else "sct"
    if metric_task in dropped:
        metric, mode = TASK_BEST_METRIC[tasks[0]]
        train = replace(train, best_metric=metric, best_mode=mode)
    log.warning("%s: no case has a target for %s; training %s alone (loss.tasks=%s, best epoch by %s)",
                where, " or ".join(TASK_NAMES[t] for t in dropped), " and ".join(TASK_NAMES[t] for t in tasks),
                list(tasks), train.best_metric)
    return replace(cfg, loss=loss, model=replace(cfg.model, **required_heads(loss)), train=train)


def resolve_labels(index: DatasetIndex, cfg: Config) -> dict[str, int]:
    """Label name → value for a segmentation run; empty for an sCT-only run (no invented names)."""
    if "seg" not in cfg.loss.tasks:
        return {}
    names = index.labels or numbered_labels(index, max_label=cfg.model.num_classes - 1)
    if len(names) != cfg.model.num_classes:
        raise RadmtlError(
            f"model.num_classes is {cfg.model.num_classes} but the dataset has {len(names)} labels "
            f"({', '.join(names)}); set --set model.num_classes={len(names)}"
        )
    return names


def prepare_training_data(cfg: Config, data_dirs: Sequence[Path]) -> TrainingData:
    """Check and index the dataset folders, fit the tasks to the data, split (see the module doc)."""
    check_before_training(data_dirs)
    index = discover_all(data_dirs)
    where = ", ".join(str(d) for d in data_dirs)
    cfg = tasks_for_data(cfg, index.training + index.validation, where)
    unused = [c.case_id for c in index.training + index.validation if not set(c.tasks) & set(cfg.loss.tasks)]
    if unused:
        log.warning("%s: %d case(s) have no target for loss.tasks=%s and are left out: %s", where, len(unused),
                    list(cfg.loss.tasks), ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else ""))
    usable = [c for c in index.training if c.case_id not in unused]
    if index.validation:
        train_cases, val_cases = usable, [c for c in index.validation if c.case_id not in unused]
    else:
        train_cases, val_cases = stratified_split(usable, cfg.data.val_fraction, cfg.seed)
    if not train_cases:
        raise RadmtlError(f"{where}: no training case left for loss.tasks={list(cfg.loss.tasks)}")
    return TrainingData(cfg, index, resolve_labels(index, cfg), train_cases, val_cases)


def case_table(data: TrainingData) -> str:
    """CSV of every case the run uses: id, group (centre/anatomy folder), split, tasks it trains."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["case", "group", "split", "tasks", "mr"])
    for split, cases in (("training", data.train_cases), ("validation", data.val_cases)):
        for case in cases:
            tasks = [t for t in case.tasks if t in data.cfg.loss.tasks]
            writer.writerow([case.case_id, case.group, split, "+".join(tasks), case.paths["mr"]])
    return stream.getvalue()


def data_params(data: TrainingData, data_dirs: Sequence[Path]) -> dict[str, str | int]:
    """MLflow parameters of the data: folders, case counts, cases per group and per task."""
    cases = data.train_cases + data.val_cases
    groups: dict[str, int] = {}
    for case in cases:
        groups[case.group or "-"] = groups.get(case.group or "-", 0) + 1
    params: dict[str, str | int] = {
        "data.dir": ", ".join(str(d) for d in data_dirs),
        "data.train_cases": len(data.train_cases),
        "data.val_cases": len(data.val_cases),
        "data.groups": ", ".join(f"{g}={n}" for g, n in sorted(groups.items())),
    }
    for task in data.cfg.loss.tasks:
        params[f"data.cases_{task}"] = sum(task in c.tasks for c in cases)
    return params
