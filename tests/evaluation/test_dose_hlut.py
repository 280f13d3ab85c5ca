"""The HU → SPR/rED table: the named default, its lookup and slope, and overrides from CSV and YAML."""

from __future__ import annotations

import numpy as np
import pytest

from radmtl.evaluation.dose.errors import DoseError
from radmtl.evaluation.dose.hlut import DEFAULT_HLUT, Hlut, load_hlut


def test_default_is_matrads_table_and_interpolates_linearly():
    assert load_hlut() is DEFAULT_HLUT and load_hlut("matrad_default") is DEFAULT_HLUT
    hu = np.array([[-2000.0, -1024.0, 0.0], [50.0, 350.0, 5000.0]])
    # 50 HU: halfway 0 → 100 HU (1.0 → 1.095); beyond the ends the table's end values.
    np.testing.assert_allclose(DEFAULT_HLUT.to_spr(hu), [[0.001, 0.001, 1.0], [1.0475, 1.199, 2.505]])
    np.testing.assert_allclose(DEFAULT_HLUT.to_red(hu), DEFAULT_HLUT.to_spr(hu))
    # 1000 HU of bone: 1.199 + 650 · (2.505 − 1.199)/2650.
    assert DEFAULT_HLUT.to_spr(1000.0) == pytest.approx(1.199 + 650 * 1.306 / 2650)


def test_slope_is_the_segment_above_a_breakpoint_and_zero_outside():
    slope = DEFAULT_HLUT.spr_slope(np.array([-3000.0, 50.0, 100.0, 1000.0, 3000.0]))
    np.testing.assert_allclose(slope, [0.0, 0.095 / 100, 0.104 / 250, 1.306 / 2650, 0.0])


def test_override_from_csv_and_yaml(tmp_path):
    csv_path = tmp_path / "scanner.csv"
    csv_path.write_text("hu,spr,red\n-1000,0.0,0.0\n0,1.0,1.0\n1000,1.5,1.4\n")
    table = load_hlut(csv_path)
    assert table.name == "scanner"
    assert table.to_spr(500.0) == pytest.approx(1.25) and table.to_red(500.0) == pytest.approx(1.2)
    yaml_path = tmp_path / "t.yaml"
    yaml_path.write_text("name: mine\nhu: [-1000, 0, 2000]\nspr: [0, 1, 2]\n")
    table = load_hlut(yaml_path)
    assert table.name == "mine" and table.to_red(1000.0) == pytest.approx(1.5)
    np.testing.assert_array_equal(table.table("spr"), [[-1000, 0], [0, 1], [2000, 2]])


@pytest.mark.parametrize("text, says", [
    ("hu,spr\n0,1\n0,2\n", "increase strictly"),
    ("hu,density\n0,1\n1,2\n", "must name hu and spr"),
    ("hu,spr\n0,1\n1,abc\n", "could not be read"),
])
def test_bad_tables_say_what_is_wrong(tmp_path, text, says):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DoseError, match=says):
        load_hlut(path)
    with pytest.raises(DoseError, match="neither"):
        load_hlut(tmp_path / "missing.csv")
    with pytest.raises(DoseError, match="NaN"):
        Hlut("x", np.array([0.0, 1.0]), np.array([1.0, np.nan]), np.array([1.0, 1.0]))
