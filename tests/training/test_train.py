from __future__ import annotations

import json

import socket

import numpy as np
import pytest
import torch

from radmtl.nn.checkpoint import BEST, LATEST, load_checkpoint, model_from_checkpoint
from radmtl.config import load_config
from radmtl.errors import RadmtlError
from radmtl.tracking.metrics_file import read_records
from radmtl.tracking.tracker import NullTracker
from radmtl.training.train import NonFiniteLossError, train
from radmtl.data.transforms import RandLeftRightFlipd, left_right_label_swaps
from tiny_config import TINY
from train_runs import epoch_rows


def test_same_seed_same_losses(phantom_data, tmp_path):
    cfg = load_config(None, TINY)
    for name in ("a", "b"):
        train(cfg, phantom_data, tmp_path / name, progress=False,
              tracker=NullTracker(metrics_jsonl=tmp_path / name / "metrics.jsonl"))
    a, b = read_records(tmp_path / "a" / "metrics.jsonl"), read_records(tmp_path / "b" / "metrics.jsonl")
    drop = {"time", "patches_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]
    assert any("step_loss_total" in r for r in a) and any("val_mae_hu" in r for r in a)
    # train.steps_per_epoch = 2 for 2 epochs, log_every 1: exactly steps 1-4 carry step metrics
    assert [r["step"] for r in a if "step_loss_total" in r] == [1, 2, 3, 4]
    # the gradient each task sends into the shared encoder, and their ratio, every log_every steps
    for r in (r for r in a if "step_loss_total" in r):
        assert r["step_grad_norm_encoder_sct"] > 0 and r["step_grad_norm_encoder_seg"] > 0
        assert r["step_grad_ratio_encoder_sct_seg"] == pytest.approx(
            r["step_grad_norm_encoder_sct"] / r["step_grad_norm_encoder_seg"], rel=1e-5)
    # A different seed must change the trajectory (else the test above proves nothing).
    other = load_config(None, TINY + ["seed=1"])
    train(other, phantom_data, tmp_path / "c", progress=False,
          tracker=NullTracker(metrics_jsonl=tmp_path / "c" / "metrics.jsonl"))
    c = read_records(tmp_path / "c" / "metrics.jsonl")
    assert c[0]["step_loss_total"] != a[0]["step_loss_total"]


def test_checkpoint_is_self_describing(phantom_data, tmp_path):
    cfg = load_config(None, TINY)
    state = train(cfg, phantom_data, tmp_path / "run", progress=False, tracker=NullTracker())
    payload = load_checkpoint(tmp_path / "run" / LATEST)
    assert payload["epoch"] == 2 == state.epoch
    assert payload["label_names"]["femoral_head_left"] == 4
    assert payload["config"]["data"]["spacing"] == [12.0, 12.0, 12.0]
    assert payload["optimizer_state"] is not None and payload["rng"] is not None
    # σ recalibration ran on the validation case and left its factor in the best checkpoint
    scaling = load_checkpoint(tmp_path / "run" / BEST)["sigma_scaling"]
    assert scaling["factor"] > 0 and scaling["cases"] and scaling["voxels"] > 0
    assert np.hypot(scaling["after"]["zscore_mean"], scaling["after"]["zscore_sd"]) == pytest.approx(1.0, abs=1e-3)
    # and the review's thresholds, fitted on the same validation voxels; each validation case's review kept
    thresholds = load_checkpoint(tmp_path / "run" / BEST)["review_thresholds"]
    assert thresholds["validation_cases"] == scaling["cases"] and thresholds["sigma_total_hu"] > 0
    for case_id in scaling["cases"]:
        review = tmp_path / "run" / "validation_review" / case_id
        assert sorted(p.name for p in review.iterdir()) == ["review.html", "review.json", "review.png"]
        assert json.loads((review / "review.json").read_text())["thresholds"] == thresholds
    loaded = model_from_checkpoint(tmp_path / "run" / BEST)
    assert loaded.cfg.model.channels == (4, 8)
    mr = torch.randn(1, 1, 16, 16, 16)
    assert set(loaded.model(mr)) == {"sct", "sct_log_var", "seg_logits"}
    # Re-running into the same folder without --resume must not overwrite a run.
    with pytest.raises(RadmtlError, match="already holds a run"):
        train(cfg, phantom_data, tmp_path / "run", progress=False, tracker=NullTracker())


def test_nan_loss_stops_with_step_and_checkpoint(phantom_data, tmp_path, monkeypatch):
    from radmtl.nn import losses
    real_terms = losses.MultiTaskLoss.task_terms
    calls = {"n": 0}

    def poisoned(self, outputs, batch):
        terms, logged = real_terms(self, outputs, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["sct"] = terms["sct"] * float("nan")
        return terms, logged

    monkeypatch.setattr(losses.MultiTaskLoss, "task_terms", poisoned)
    cfg = load_config(None, TINY + ["train.epochs=3"])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(epoch \d\); last good checkpoint"):
        train(cfg, phantom_data, tmp_path / "run", progress=False, tracker=NullTracker())


def test_left_right_flip_swaps_femoral_heads():
    names = {"background": 0, "bladder": 1, "femoral_head_left": 4, "femoral_head_right": 5}
    assert left_right_label_swaps(names) == [(4, 5)]
    labels = torch.zeros(1, 6, 2, 2)
    labels[0, 0] = 4  # low x = the patient's left in RAS+
    labels[0, 5] = 5  # high x = the patient's right
    labels[0, 2] = 1
    mr = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1).expand(1, 6, 2, 2).clone()
    flip = RandLeftRightFlipd(keys=["mr", "labels"], label_key="labels", swaps=[(4, 5)], prob=1.0)
    out = flip({"mr": mr, "labels": labels})
    # The anatomy is mirrored, yet the head now on the left (low x) is still labelled left (4).
    assert torch.equal(out["mr"][0, :, 0, 0], torch.tensor([5.0, 4, 3, 2, 1, 0]))
    assert out["labels"][0, 0, 0, 0] == 4 and out["labels"][0, 5, 0, 0] == 5
    assert out["labels"][0, 3, 0, 0] == 1  # bladder mirrored, value unchanged
    never = RandLeftRightFlipd(keys=["mr", "labels"], label_key="labels", swaps=[(4, 5)], prob=0.0)
    assert torch.equal(never({"mr": mr, "labels": labels})["labels"], labels)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_does_not_stop_training(phantom_data, tmp_path, caplog):
    cfg = load_config(None, TINY)
    uri = f"http://127.0.0.1:{_closed_port()}"
    with caplog.at_level("WARNING"):
        state = train(cfg, phantom_data, tmp_path / "run", progress=False, tracking_uri=uri)
    assert state.epoch == 2
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert (tmp_path / "run" / LATEST).exists()
    assert sorted(epoch_rows(tmp_path / "run" / "metrics.jsonl")) == [1, 2]


def test_unusable_out_is_one_line_and_a_failed_start_leaves_nothing(phantom_data, tmp_path, capsys):
    from radmtl.cli import main

    (tmp_path / "file").write_text("x")
    for out, words in ((tmp_path / "file", "is an existing file, not a folder"),
                       (tmp_path / "file" / "run", "cannot be written")):
        assert main(["train", "--data", str(phantom_data), "--out", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and err[0].startswith(f"radmtl train: error: {out}:")
    # a run that fails before it writes anything (here: no such dataset) leaves no folder, no train.log
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "new"),
                 "--no-progress"]) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("native", [True, False])
def test_cpu_training_runs_the_convolutions_in_bf16_when_asked_for_and_native(phantom_data, tmp_path,
                                                                              monkeypatch, native):
    from radmtl import device as device_module
    from radmtl.nn import model as model_module

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    seen: dict[str, set] = {"encoder": set(), "heads": set()}
    build = model_module.build_model

    def build_and_watch(model_cfg):
        net = build(model_cfg)
        net.encoder.register_forward_hook(lambda m, i, out: seen["encoder"].add(out[0].dtype))
        for head in net.heads.values():
            head.register_forward_hook(lambda m, i, out: seen["heads"].add(out.dtype))
        return net

    monkeypatch.setattr("radmtl.training.train.build_model", build_and_watch)
    cfg = load_config(None, TINY + ["train.amp=bf16", "train.epochs=1"])
    train(cfg, phantom_data, tmp_path / "run", progress=False, tracker=NullTracker())
    assert seen["encoder"] == ({torch.bfloat16} if native else {torch.float32})
    assert seen["heads"] == {torch.float32}  # the 1×1×1 heads stay outside autocast either way
