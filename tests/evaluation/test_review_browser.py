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


def test_review_page_renders_offline(tmp_path, review_case):
    _, html_path = write_review_figure(tmp_path / "review", **review_case, sigma_threshold_hu=200.0)
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
