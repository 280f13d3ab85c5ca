from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from radmtl.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    flatten,
    load_config,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_equals_builtin_defaults():
    # configs/default.yaml documents the defaults; it must not drift from the dataclasses.
    assert load_config(ROOT / "configs" / "default.yaml") == load_config(None)
    assert load_config(None) == Config()


def test_smoke_config_is_small():
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert cfg.model.channels == (8, 16, 32)
    assert cfg.model.strides == (2, 2)
    assert cfg.train.epochs == 3
    assert cfg.loss.weighting == "hetero_homo"


def _demo_grid() -> tuple[list[int], list[float]]:
    text = (ROOT / "scripts" / "demo.sh").read_text()
    shape = re.search(r"^SHAPE=\(([^)]*)\)", text, re.M).group(1).split()
    spacing = re.search(r"^SPACING=\(([^)]*)\)", text, re.M).group(1).split()
    return [int(v) for v in shape], [float(v) for v in spacing]


def test_demo_phantom_lives_on_the_grid_where_sigma_is_learned(tmp_path):
    # The noise-recovery check compares σ with the phantom's true noise SD: the demo must generate
    # the phantom at the recipe's training spacing so both live on one grid (DESIGN.md section 1).
    import nibabel as nib
    import numpy as np

    from radmtl.data.phantom import generate_dataset
    from radmtl.data.transforms import eval_transforms

    cfg = load_config(ROOT / "configs" / "quick.yaml")
    shape, spacing = _demo_grid()
    assert list(cfg.data.spacing) == spacing
    generate_dataset(tmp_path, cases=1, seed=0, shape=tuple(shape), spacing=tuple(spacing))
    case = tmp_path / "case_001"
    net = eval_transforms(cfg.data, ["mr"])({"mr": str(case / "mr.nii.gz")})["mr"]
    truth = nib.load(case / "ct_noise_sd.nii.gz")
    assert tuple(net.shape[1:]) == truth.shape == tuple(shape)
    np.testing.assert_allclose(np.asarray(net.affine), truth.affine, atol=1e-4)


def test_override_nested_values_parsed_as_yaml():
    cfg = load_config(None, ["train.lr=1e-3", "data.patch_size=[32, 32, 16]", "data.cache=false"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.patch_size == (32, 32, 16)
    assert cfg.data.cache is False


def test_int_accepted_for_float_and_converted():
    cfg = load_config(None, ["train.lr=1"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("nosuch.x=1", "nosuch"),
        ("train.epochs=ten", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("data.patch_size=[32, 32]", "data.patch_size"),
        ("data.cache=1", "data.cache"),
        ("loss.weighting=magic", "loss.weighting"),
        ("loss.tasks=[sct, ct]", "loss.tasks"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.strides=[2]", "model.strides"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        load_config(None, [override])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_model_heads_derived_from_loss():
    hetero = config_from_dict({"loss": {"weighting": "hetero"}})
    assert hetero.model.sct_log_var and hetero.model.seg_log_var
    fixed = config_from_dict({"loss": {"weighting": "fixed"}})
    assert not fixed.model.sct_log_var and not fixed.model.seg_log_var
    seg_only = config_from_dict({"loss": {"tasks": ["seg"]}})
    assert seg_only.model.tasks == ("seg",) and not seg_only.model.sct_log_var
    m2b = config_from_dict({"loss": {"tasks": ["sct"], "weighting": "hetero_homo"}})
    assert m2b.model.tasks == ("sct",) and m2b.model.sct_log_var


def test_inconsistent_explicit_heads_rejected():
    with pytest.raises(ConfigError, match="model.sct_log_var"):
        config_from_dict({"loss": {"weighting": "fixed"}, "model": {"sct_log_var": True}})


def test_round_trip_through_yaml_and_flatten():
    cfg = load_config(None, ["loss.weighting=hetero", "seed=7"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    flat = flatten(cfg)
    assert flat["seed"] == 7
    assert flat["loss.weighting"] == "hetero"
    assert flat["data.spacing"] == list(cfg.data.spacing)
    assert set(to_dict(cfg)) == {"seed", "data", "model", "loss", "train", "infer", "tracking"}


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: train.epoch: unknown key"):
        load_config(typo)


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from radmtl.cli import build_parser; build_parser(); " \
           "print('torch' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_mc_dropout_at_checked_when_built_directly():
    from radmtl.config import ModelConfig

    with pytest.raises(ConfigError, match="model.mc_dropout_at"):
        Config(model=ModelConfig(mc_dropout_at="tail"))


def test_budget_recipe_is_the_quick_recipe_on_the_finer_grid_with_more_steps():
    # configs/budget.yaml (ablation, σ studies) and configs/quick.yaml (the demo) must stay one recipe
    # apart from the grid and the step count, or the ablation's conclusions stop describing the demo.
    from radmtl.config import flatten

    quick = flatten(load_config(ROOT / "configs" / "quick.yaml"))
    budget = flatten(load_config(ROOT / "configs" / "budget.yaml"))
    differ = {k for k in quick if quick[k] != budget[k]}
    assert differ == {"data.spacing", "data.patch_size", "train.epochs"}
    assert budget["train.epochs"] * budget["train.steps_per_epoch"] == 1000


@pytest.mark.parametrize(("override", "words"), [
    ("train.lr=-1", "train.lr: must be a finite number > 0, got -1.0"),
    ("train.lr=nan", "train.lr: must be a finite number > 0, got nan"),
    ("train.lr=0", "train.lr: must be a finite number > 0, got 0.0"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be a finite number >= 0, got -0.1"),
])
def test_a_learning_rate_torch_would_reject_is_a_config_error_naming_the_key(override, words):
    # torch's "Invalid learning rate" used to surface as a traceback from inside the optimiser
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(None, [override])
