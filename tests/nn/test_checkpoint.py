"""model_from_checkpoint: a checkpoint that cannot rebuild its network is one CheckpointError line naming the file."""

from __future__ import annotations

import pytest
import torch

from radmtl.config import load_config
from radmtl.nn.checkpoint import CheckpointError, make_payload, model_from_checkpoint, save_checkpoint
from radmtl.nn.model import build_model

TINY = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]", "data.spacing=[6.0,6.0,6.0]",
        "model.num_classes=2"]


def _payload() -> dict:
    cfg = load_config(None, TINY)
    return make_payload(cfg=cfg, label_names={"background": 0, "bladder": 1}, model=build_model(cfg.model),
                        with_rng=False)


def _edit_rename(payload):
    state = payload["model_state"]
    name = next(iter(state))
    state[f"{name}_renamed"] = state.pop(name)


def _edit_extra(payload):
    payload["model_state"]["extra.weight"] = torch.zeros(3)


def _edit_not_a_dict(payload):
    payload["model_state"] = [1, 2]


def _edit_config(payload):
    payload["config"]["loss"]["tasks"] = []


def _edit_nan_weight(payload):
    name = next(k for k, v in payload["model_state"].items() if v.is_floating_point() and v.numel() > 1)
    payload["model_state"][name] = payload["model_state"][name].clone()
    payload["model_state"][name].view(-1)[0] = float("nan")


def _edit_labels_fewer_than_classes(payload):
    payload["config"]["model"]["num_classes"] = 6  # heads rebuilt for 6 classes would not fit: edit both
    payload["model_state"] = build_model(load_config(None, TINY + ["model.num_classes=6"]).model).state_dict()


def _edit_label_beyond_classes(payload):
    payload["label_names"]["rectum"] = 7


@pytest.mark.parametrize(("edit", "words"), [
    (_edit_rename, ["weights do not fit the config", "1 tensor(s) missing", "1 unexpected tensor(s)"]),
    (_edit_extra, ["weights do not fit the config", "1 unexpected tensor(s), first extra.weight"]),
    (_edit_not_a_dict, ["'model_state' is a list"]),
    (_edit_config, ["the config it carries cannot be built", "loss.tasks"]),
    (_edit_nan_weight, ["1 weight tensor(s) hold NaN or Inf", "training diverged", "earlier checkpoint"]),
    (_edit_labels_fewer_than_classes, ["label names do not fit model.num_classes = 6",
                                       "class(es) [2, 3, 4, 5] of the 6 have no name"]),
    (_edit_label_beyond_classes, ["label names do not fit model.num_classes = 2",
                                  "label values {'rectum': 7} outside 0..1"]),
])
def test_inconsistent_checkpoint_is_one_line(tmp_path, edit, words):
    payload = _payload()
    edit(payload)
    path = save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(CheckpointError) as caught:
        model_from_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert all(word in message for word in words), message


def test_good_checkpoint_round_trips_and_code_is_never_unpickled(tmp_path):
    path = save_checkpoint(tmp_path / "good.pt", _payload())
    loaded = model_from_checkpoint(path)
    assert loaded.label_names == {"background": 0, "bladder": 1}
    torch.save({"format": "radmtl-checkpoint/1", "evil": _Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a radmtl checkpoint or corrupt"):
        model_from_checkpoint(tmp_path / "evil.pt")


class _Pickled:
    """An arbitrary object: loading it would run code, which weights_only=True refuses."""
