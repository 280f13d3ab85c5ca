"""radmtl train on faults (issue 26, "nothing silent"): a value --set gave is blamed on --set, a disk that
fills up while a checkpoint is written, a kill between the latest and the best checkpoint's publication."""

from __future__ import annotations

from pathlib import Path

from radmtl.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


# --- where a bad value came from ------------------------------------------------------------------


def test_a_bad_value_from_set_is_blamed_on_set_not_on_the_config_file(tmp_path, capsys):
    smoke = ROOT / "configs" / "smoke.yaml"
    assert main(["train", "--config", str(smoke), "--set", "train.epochs=0", "--out", str(tmp_path / "run")]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"radmtl train: error: train.epochs: must be >= 1, got 0 (the value came from --set "
                     f"train.epochs=0, not {smoke})"]
    assert not (tmp_path / "run").exists()


def test_a_bad_value_in_the_config_file_is_still_blamed_on_the_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  epochs: 0\n")
    assert main(["train", "--config", str(config), "--set", "train.lr=1e-3", "--out", str(tmp_path / "run")]) == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"radmtl train: error: {config}: train.epochs: must be >= 1, got 0"]
