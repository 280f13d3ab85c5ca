from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radmtl.evaluation.qa import _panels, _series, qa_images, training_curves
from radmtl.tracking.metrics_file import read_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.fixture
def phantom():
    """A small ellipse 'body' with a bone on the patient's right (high x) and two organs."""
    shape = (24, 20, 12)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = ((x - 12) / 10) ** 2 + ((y - 10) / 8) ** 2 < 1
    bone = (x - 18) ** 2 + (y - 10) ** 2 < 6
    ct = np.where(body, 40.0, -1000.0)
    ct[bone] = 900.0
    mr = np.where(body, 300.0, 0.0) - 200.0 * bone
    sct = ct + np.random.default_rng(0).normal(0.0, 25.0, shape)
    sigma = np.full(shape, 25.0)
    ref = np.zeros(shape, dtype=np.int64)
    ref[bone] = 2
    ref[((x - 8) ** 2 + (y - 12) ** 2 < 8) & (z > 3) & (z < 9)] = 1
    seg = np.roll(ref, 1, axis=0)
    return {"mr": mr, "ct_hu": ct, "sct_hu": sct, "sigma_hu": sigma, "seg": seg, "ref_labels": ref, "mask": body}


def test_qa_images_one_png_per_view(tmp_path, phantom):
    paths = qa_images(**phantom, out_dir=tmp_path, prefix="val_e0001_case01", spacing=(1.5, 1.5, 3.0),
                      label_names={"bladder": 1, "femoral_head_right": 2})
    assert [p.name for p in paths] == [f"val_e0001_case01_{v}.png" for v in ("axial", "coronal", "sagittal")]
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no temporary files left behind
    for path in paths:
        width, height = _png_size(path)
        # six panels in a row, readable at normal size, but not a poster
        assert 900 <= width <= 2600 and 200 <= height <= 900, (path.name, width, height)
        assert 10_000 < path.stat().st_size < 1_000_000


def test_physical_aspect_ratio_changes_figure_height(tmp_path, phantom):
    views = ("axial", "coronal")
    iso = qa_images(**phantom, out_dir=tmp_path / "iso", prefix="p", spacing=(1.0, 1.0, 1.0), views=views)
    thick = qa_images(**phantom, out_dir=tmp_path / "thick", prefix="p", spacing=(1.0, 1.0, 4.0), views=views)
    assert [p.name for p in thick] == ["p_axial.png", "p_coronal.png"]
    # coronal shows z vertically: 4 mm slices make it taller, the axial view is unchanged
    assert _png_size(thick[1])[1] > _png_size(iso[1])[1]
    assert _png_size(thick[0]) == _png_size(iso[0])


def test_none_panels_are_skipped(tmp_path, phantom):
    full = qa_images(**phantom, out_dir=tmp_path / "full", prefix="p", spacing=(1.0, 1.0, 2.0))
    minimal = qa_images(phantom["mr"], None, phantom["sct_hu"], None, None, None, None,
                        out_dir=tmp_path / "min", prefix="p", spacing=(1.0, 1.0, 2.0))
    assert len(minimal) == 3
    for small, large in zip(minimal, full):
        # two panels (MR, sCT) instead of six: a much narrower figure
        assert _png_size(small)[0] < 0.5 * _png_size(large)[0]


def test_qa_images_rejects_mismatched_shapes(tmp_path, phantom):
    with pytest.raises(ValueError, match="sct_hu has shape"):
        qa_images(phantom["mr"], None, phantom["sct_hu"][:-1], None, None, None, None,
                  out_dir=tmp_path, prefix="p", spacing=(1.0, 1.0, 1.0))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _radmtl_records() -> list[dict]:
    """What radmtl train logs: per-step values every few steps, one record per epoch."""
    records = []
    for step in range(2, 41, 2):
        records.append({"step": step, "time": 0.0, "step_loss_total": 2.0 / step, "step_loss_sct": 1.0 / step,
                        "step_sigma_sct": 0.5 - step / 100, "step_log_var_sct": -step / 20, "lr": 1e-4})
        if step % 10 == 0:
            epoch = step // 10
            records.append({"step": epoch, "time": 0.0, "epoch": epoch, "train_loss_total": 1.0 / epoch,
                            "train_sigma_seg": 0.9, "train_mae_hu": 150.0 - 10 * epoch,
                            "val_mae_hu": 200.0 - 10 * epoch, "val_mean_sigma_hu": 150.0 - 5 * epoch,
                            "val_sigma_over_mae": 0.8, "val_dice_bladder": 0.2 * epoch, "lr": 1e-4})
    return records


def test_training_curve_panels_do_not_mix_steps_and_epochs():
    panels = _panels(_radmtl_records())
    assert panels["losses"] == (["step_loss_sct", "step_loss_total"], "step")
    assert panels["sigma"] == (["step_log_var_sct", "step_sigma_sct"], "step")
    assert panels["hu"] == (["train_mae_hu", "val_mae_hu", "val_mean_sigma_hu"], "epoch")
    assert panels["dice"] == (["val_dice_bladder"], "epoch")
    # Without per-step values the per-epoch means are drawn instead.
    epochs_only = [r for r in _radmtl_records() if "epoch" in r]
    assert _panels(epochs_only)["losses"] == (["train_loss_total"], "epoch")


def test_training_curves_multi_panel(tmp_path):
    records = _radmtl_records()
    metrics = tmp_path / "metrics.jsonl"
    _write_jsonl(metrics, records)
    with metrics.open("a") as handle:
        handle.write('{"step": 42, "step_loss_to')  # a run killed mid-write
    assert len(read_records(metrics)) == len(records)
    out = training_curves(metrics, tmp_path / "curves" / "training_curves.png")
    assert out == tmp_path / "curves" / "training_curves.png"
    width, height = _png_size(out)
    assert width == 1200 and height == 720  # 2 × 2 panels


def test_resumed_epoch_last_value_wins():
    records = [{"step": 1, "epoch": 1, "val_mae_hu": 90.0}, {"step": 2, "epoch": 2, "val_mae_hu": 80.0},
               {"step": 2, "epoch": 2, "val_mae_hu": 70.0}]  # epoch 2 logged again after a resume
    assert _series(records, "val_mae_hu", "epoch") == ([1.0, 2.0], [90.0, 70.0])


def test_training_curves_only_what_exists(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_jsonl(metrics, [{"step": s, "time": 0.0, "step_loss_total": 1.0} for s in range(3)])
    width, height = _png_size(training_curves(metrics, tmp_path / "c.png"))
    assert (width, height) == (600, 360)  # one panel
    assert training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png") is None
    _write_jsonl(metrics, [{"step": 0, "time": 0.0, "lr": 1e-3}])
    assert training_curves(metrics, tmp_path / "y.png") is None
    assert not (tmp_path / "y.png").exists()
