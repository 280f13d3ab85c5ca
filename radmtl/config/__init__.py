"""Configuration: YAML -> typed, frozen dataclasses (the schema in :mod:`radmtl.config.schema`, the typed
building in :mod:`radmtl.config.build`); this module loads, overrides and writes them.

Every key is checked: unknown keys and values of the wrong type are errors that name the dotted
key, so a typo in a YAML file fails before any data is read. ``--set a.b=c`` overrides are parsed
as YAML scalars/lists, so ``--set data.patch_size=[32,32,32]`` and ``--set train.lr=1e-3`` work.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from radmtl.config.build import ConfigError, build_dataclass
from radmtl.config.schema import (DEFAULT_SCT_LOG_VAR_INIT, LEGACY_MC_DROPOUT_AT, MAX_MC_SAMPLES, MC_DROPOUT_PLACES,
                                  TASKS, WEIGHTINGS, Config, DataConfig, InferConfig, LossConfig, ModelConfig,
                                  TrackingConfig, TrainConfig, mc_samples_problem, required_heads)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` (saved ones too); model heads are derived from the loss when omitted."""
    raw = dict(raw or {})
    loss = build_dataclass(LossConfig, raw.get("loss"), "loss")
    model_raw = dict(raw.get("model") or {})
    for key, value in required_heads(loss).items():
        model_raw.setdefault(key, list(value) if isinstance(value, tuple) else value)
    model_raw.setdefault("sct_log_var_init", DEFAULT_SCT_LOG_VAR_INIT[loss.likelihood])
    model_raw.setdefault("mc_dropout_at", LEGACY_MC_DROPOUT_AT)
    raw["model"] = model_raw
    return build_dataclass(Config, raw)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-python (YAML/JSON-safe) dict of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"data.spacing": [3.0, 3.0, 3.0], ...}`` for logging every resolved value as a param."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = v

    walk(to_dict(cfg), "")
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b=c`` strings to a raw dict; values are parsed as YAML (``[1,2]``, ``1e-3``, ``true``)."""
    raw = yaml.safe_load(yaml.safe_dump(raw or {}))  # deep copy, plain types
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-3")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {text!r} ({err})") from err
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (or the built-in defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from err
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides)
    if isinstance(raw.get("model") or {}, dict):  # a YAML file without the key gets today's default
        raw["model"] = {"mc_dropout_at": ModelConfig.mc_dropout_at, **(raw.get("model") or {})}
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        blamed = _overrides_named(str(err), overrides)
        if blamed:  # the file is not to blame for a value --set gave
            source = ", ".join(f"--set {item}" for item in blamed)
            raise ConfigError(f"{err} (the value came from {source}" + (f", not {path})" if path else ")")) from err
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from err


def _overrides_named(message: str, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The ``--set`` items whose key ``message`` names (as a whole dotted key, or a section of one)."""
    named = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message):
            named.append(item)
    return named


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (what is logged to MLflow and stored in checkpoints)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = ["DEFAULT_SCT_LOG_VAR_INIT", "LEGACY_MC_DROPOUT_AT", "MAX_MC_SAMPLES", "MC_DROPOUT_PLACES", "TASKS",
           "WEIGHTINGS", "Config", "ConfigError", "DataConfig", "InferConfig", "LossConfig", "ModelConfig",
           "TrackingConfig", "TrainConfig", "apply_overrides", "config_from_dict", "dump_config", "flatten",
           "load_config", "mc_samples_problem", "required_heads", "to_dict"]
