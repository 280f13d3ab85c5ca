"""review.html, opened in a real browser with no network: the verdict and the embedded picture show.

Runs Debian's headless Chromium as a subprocess to take a screenshot of the page from ``file://``. A
page that needed the network (a remote image, script or style sheet) would show blank panels here, as
it would on a planning workstation without internet access. Skipped (with the reason) only where
Chromium is not installed; ``scripts/test.sh`` installs it when it can.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from radmtl.evaluation.review_figure import write_review_figure

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1400, 1800)  # width, height in CSS pixels
REVIEW_ORANGE = (0xE6, 0x61, 0x01)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser test needs {CHROMIUM} (apt-get install chromium)"),
]


def _case() -> dict:
    shape = (40, 32, 24)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = ((x - 20) / 18) ** 2 + ((y - 16) / 14) ** 2 + ((z - 12) / 14) ** 2 < 1
    labels = (((x - 20) ** 2 + (y - 18) ** 2 + (z - 12) ** 2) < 16).astype(np.uint8)
    sigma = np.where(body, 40.0, 0.0).astype(np.float32)
    sigma[26:31, 8:13, 14:19] = 300.0
    return {
        "mr": np.where(body, 400.0, 0.0) + 300.0 * labels + np.random.default_rng(0).normal(0.0, 10.0, shape),
        "sct_hu": np.where(body, 30.0, -1000.0).astype(np.float32), "sigma_total_hu": sigma, "labels": labels,
        "flagged": (sigma > 200.0) & body, "body": body, "spacing": (1.5, 1.5, 2.5), "label_names": {"bladder": 1},
        "summary": {"case": "case_001", "verdict": "review", "reasons": ["0.7 ml of the body has σ_total above 200 HU"],
                    "organs": {"bladder": {"volume_ml": 1.8, "mean_sigma_total_hu": 40.0}}},
    }


def test_review_page_renders_offline(tmp_path):
    _, html_path = write_review_figure(tmp_path / "review", **_case(), sigma_threshold_hu=200.0)
    screenshot = tmp_path / "screenshot.png"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--hide-scrollbars",
        # Any network request goes to a closed port: only what the page embeds can show.
        "--proxy-server=http://127.0.0.1:9", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={screenshot}", html_path.as_uri(),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert screenshot.is_file(), f"chromium wrote no screenshot (exit {run.returncode}):\n{run.stderr[-3000:]}"

    import matplotlib.image

    rgb = (matplotlib.image.imread(screenshot)[..., :3] * 255).round().astype(np.int16)
    assert rgb.shape[:2] == (WINDOW[1], WINDOW[0])
    # The verdict badge at the top, in the review colour.
    badge = np.all(np.abs(rgb[:200] - np.array(REVIEW_ORANGE)) <= 3, axis=-1)
    assert badge.sum() > 500, "no orange REVIEW badge at the top of the page"
    # Below the header, the embedded figure: grey MR, magma σ, outlines. A missing image would leave the
    # page white but for its alt text.
    panels = rgb[400:1700].reshape(-1, 3)
    assert np.mean(panels.min(axis=1) < 200) > 0.25
    assert len(np.unique(panels, axis=0)) > 1000
