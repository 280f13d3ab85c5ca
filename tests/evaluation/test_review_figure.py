from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from radmtl.evaluation.flagged_region import FlaggedRegion, worst_flagged_region
from radmtl.evaluation.review_figure import render_review_figure, write_review_figure
from radmtl.evaluation.review_page import format_value, review_html

SHAPE = (40, 32, 24)  # as review_case's volumes
BLOB = (slice(26, 31), slice(8, 13), slice(14, 19))  # review_case's flagged blob: 5³ voxels centred on (28, 10, 16)


def _image(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_worst_flagged_region_is_the_largest_blob():
    flagged = np.zeros(SHAPE, dtype=bool)
    flagged[BLOB] = True
    flagged[2:4, 2:4, 2:4] = True  # 8 voxels
    flagged[20, 16, 12] = True  # a lone voxel at the centre
    assert worst_flagged_region(flagged) == FlaggedRegion(centre=(28, 10, 16), n_voxels=125, n_regions=3)
    assert worst_flagged_region(np.zeros(SHAPE, dtype=bool)) is None


def test_worst_flagged_region_centre_lies_in_a_curved_region():
    # A square ring in one axial plane: its centroid (5, 5, 3) is not flagged.
    flagged = np.zeros((11, 11, 7), dtype=bool)
    flagged[2:9, 2:9, 3] = True
    flagged[3:8, 3:8, 3] = False
    region = worst_flagged_region(flagged)
    # Four ring voxels are 3 voxels from the centroid; the first in x, y, z order is taken.
    assert region == FlaggedRegion(centre=(2, 5, 3), n_voxels=24, n_regions=1)
    assert flagged[region.centre]
    # Nearest in mm: with x voxels twice as long, the ring's sides at y = 2 and 8 are 3 mm away, x = 2 and 8 are 6 mm.
    assert worst_flagged_region(flagged, spacing=(2.0, 1.0, 1.0)).centre == (5, 2, 3)


def test_worst_flagged_region_connectivity_and_ties():
    flagged = np.zeros((12, 12, 12), dtype=bool)
    flagged[1, 1, 1] = flagged[2, 2, 2] = True  # touching at a corner only: one region (26-connected)
    flagged[8, 8, 8] = flagged[9, 8, 8] = True  # another 2-voxel region
    sigma = np.zeros(flagged.shape, dtype=np.float32)
    assert worst_flagged_region(flagged).n_regions == 2
    assert worst_flagged_region(flagged, sigma).centre == (1, 1, 1)  # full tie: the first in x, y, z order
    sigma[9, 8, 8] = 500.0
    assert worst_flagged_region(flagged, sigma).centre == (8, 8, 8)  # the larger summed σ_total wins
    with pytest.raises(ValueError, match="flagged must be a 3D"):
        worst_flagged_region(flagged[0])


def test_review_figure_png_and_html(tmp_path, review_case):
    png_path, html_path = write_review_figure(tmp_path, **review_case, title="case_001", sigma_threshold_hu=200.0)
    assert (png_path.name, html_path.name) == ("review.png", "review.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.html", "review.png"]  # no temporary file left
    image = _image(png_path.read_bytes())
    height, width = image.shape[:2]
    assert 1200 <= width <= 1800 and 1200 <= height <= 2600, (width, height)  # 6 rows × 4 columns
    pixels = (image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 500  # grey MR, magma σ, coloured outlines: not blank
    assert np.mean(pixels.min(axis=1) < 200) > 0.3  # a good part of the page is not white

    page = html_path.read_text(encoding="utf-8")
    assert '<span class="verdict" style="background: #e66101">REVIEW</span>' in page
    for text in ("case_001", "bladder", "rectum", "0.7 ml of the body has σ_total above 200 HU",
                 "<th>thresholds.sigma_total_hu</th><td class=\"number\">200</td>", "flagged (σ_total ≥ 200 HU): 125 voxels"):
        assert text in page, text
    # The organ table has the union of the organs' keys as columns, "—" where an organ lacks one.
    assert "<th>entropy</th>" in page and "<td>sigma_p95</td>" in page and "<td>—</td>" in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [png_path.read_bytes()]
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()


def test_figure_slices_through_the_blob_and_marks_it(review_case):
    figure = render_review_figure(**review_case, title="case_001")
    assert figure.region == FlaggedRegion(centre=(28, 10, 16), n_voxels=125, n_regions=1)
    assert figure.notes[0].startswith("flagged: 125 voxels = 0.7 ml")

    def red_pixels(png: bytes) -> int:
        rgb = _image(png)[..., :3]
        return int(np.sum((rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)))

    # Translucent red over the MR shows where the flagged panels cut the blob; without flags only the
    # bladder's red outline is left.
    quiet = render_review_figure(**dict(review_case, flagged=np.zeros(SHAPE, dtype=bool)), title="case_001")
    assert red_pixels(figure.png) > 5 * red_pixels(quiet.png) > 0


def test_nothing_flagged_leaves_out_the_worst_rows_and_says_so(tmp_path, review_case):
    flagged_png = render_review_figure(**review_case, title="case_001").png
    quiet = dict(review_case, flagged=np.zeros(SHAPE, dtype=bool),
                 summary=dict(review_case["summary"], verdict="ok", reasons=[], flagged_fraction_body=0.0))
    png_path, html_path = write_review_figure(tmp_path, **quiet, sigma_threshold_hu=200.0)
    # Three rows instead of six: about half the height, the same width.
    assert _image(png_path.read_bytes()).shape[1] == _image(flagged_png).shape[1]
    assert _image(png_path.read_bytes()).shape[0] < 0.7 * _image(flagged_png).shape[0]
    page = html_path.read_text(encoding="utf-8")
    assert "no voxel flagged (σ_total ≥ 200 HU): no worst-flagged rows" in page
    assert '<span class="verdict" style="background: #1a9641">OK</span>' in page
    assert "<p>no reason to review</p>" in page
    assert "<title>case_001 — radmtl review: ok</title>" in page  # the title defaults to summary["case"]


def test_text_from_files_is_escaped(review_case):
    summary = dict(review_case["summary"], reasons=["<script>alert(1)</script>"],
                   organs={"<img src=x onerror=alert(1)>": {"note": "a & b"}})
    page = review_html(summary, b"\x89PNG", 'case "<b>"')
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a &amp; b" in page
    assert "case &quot;&lt;b&gt;&quot;" in page


@pytest.mark.parametrize("value, text", [
    (0.123456, "0.123"), (12.3456, "12.35"), (1234.6, "1235"), (0.0, "0"), (np.float32(2.5), "2.5"),
    (np.int64(7), "7"), (True, "yes"), (None, "—"), (float("nan"), "n/a"), (float("-inf"), "−∞"),
    (["sigma_p95", "entropy"], "sigma_p95, entropy"), ([], "—"), ({"low": 0.5, "high": 2}, "low: 0.5, high: 2"),
])
def test_values_are_formatted_for_reading(value, text):
    assert format_value(value) == text


def test_missing_required_volume_is_named(review_case):
    with pytest.raises(ValueError, match="sigma_total_hu: required"):
        render_review_figure(**dict(review_case, sigma_total_hu=None), title="c")
    with pytest.raises(ValueError, match="flagged has shape"):
        render_review_figure(**dict(review_case, flagged=review_case["flagged"][:-1]), title="c")
