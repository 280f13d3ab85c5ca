"""Which tasks and cases a training run gets from the data (mixed supervision)."""

from __future__ import annotations

import logging

import pytest

from radmtl.config import load_config
from radmtl.data.discovery import Case
from radmtl.errors import RadmtlError
from radmtl.data.splits import stratified_split
from radmtl.training.data_setup import case_table, data_params, prepare_training_data, tasks_for_data


def _case(case_id, *keys):
    from pathlib import Path

    return Case(case_id, {k: Path(f"/d/{case_id}/{k}.nii.gz") for k in ("mr", *keys)})


def test_a_dataset_without_labels_trains_the_sct_alone_with_one_notice(caplog):
    cfg = load_config(None, ["train.best_metric=val_dice_mean", "train.best_mode=max"])
    caplog.set_level(logging.WARNING)
    fitted = tasks_for_data(cfg, [_case("a", "ct"), _case("b", "ct", "mask")], "DATA")
    assert fitted.loss.tasks == ("sct",) and fitted.model.tasks == ("sct",)
    assert fitted.model.sct_log_var and not fitted.model.seg_log_var
    assert (fitted.train.best_metric, fitted.train.best_mode) == ("val_mae_hu", "min")
    assert [r.getMessage() for r in caplog.records] == [
        "DATA: no case has a target for segmentation (needs labels files); training the sCT (needs ct files) "
        "alone (loss.tasks=['sct'], best epoch by val_mae_hu)"]
    # a dataset with both kinds keeps both tasks, unchanged
    assert tasks_for_data(cfg, [_case("a", "ct"), _case("b", "labels")], "DATA") is cfg
    only_labels = tasks_for_data(load_config(None, []), [_case("a", "labels")], "DATA")
    assert only_labels.loss.tasks == ("seg",) and only_labels.train.best_metric == "val_dice_mean"
    with pytest.raises(RadmtlError, match="no case has a target for segmentation"):
        tasks_for_data(load_config(None, ["loss.tasks=[seg]"]), [_case("a", "ct")], "DATA")


def test_stratified_split_gives_validation_every_kind_of_case():
    cases = [_case(f"both{i}", "ct", "labels") for i in range(5)] + [_case(f"sct{i}", "ct") for i in range(5)]
    train, val = stratified_split(cases, 0.2, seed=0)
    assert sorted(c.tasks for c in val) == [("sct",), ("sct", "seg")]
    assert len(train) == 8 and not {c.case_id for c in train} & {c.case_id for c in val}


def test_prepare_synthrad2025_tree(synthrad_trees):
    cfg = load_config(None, ["data.val_fraction=0.25"])
    data = prepare_training_data(cfg, [synthrad_trees["2025"]])
    assert data.cfg.loss.tasks == ("sct",) and data.labels == {}  # no invented label names
    assert len(data.train_cases) == 3 and len(data.val_cases) == 1
    params = data_params(data, [synthrad_trees["2025"]])
    assert params["data.groups"] == "AB=2, TH=2" and params["data.cases_sct"] == 4
    rows = case_table(data).splitlines()
    assert rows[0] == "case,group,split,tasks,mr" and len(rows) == 5
    assert any(r.startswith("AB/1ABA001,AB,") and ",sct," in r for r in rows)


def test_prepare_mixed_tree_keeps_both_tasks_and_leaves_out_what_no_task_uses(synthrad_trees, caplog):
    data = prepare_training_data(load_config(None, ["data.val_fraction=0.25"]), [synthrad_trees["mixed"]])
    assert data.cfg.loss.tasks == ("sct", "seg")
    assert {c.case_id for c in data.train_cases + data.val_cases} == {"c1", "c2", "c3", "c4"}
    sct_only = prepare_training_data(load_config(None, ["loss.tasks=[sct]"]), [synthrad_trees["mixed"]])
    assert "c4" not in {c.case_id for c in sct_only.train_cases + sct_only.val_cases}
    assert "1 case(s) have no target for loss.tasks=['sct'] and are left out: c4" in caplog.text
