"""The HTML report in a real browser: headless Chromium (Debian's `chromium`, installed by
hpc/browser/install.sh when missing) opens report.html from disk, every embedded plot decodes,
and a screenshot of the whole page shows each plot pixel for pixel. The screenshot is kept at
test-artifacts/report-screenshot.png. In CI a browser that cannot be installed is a failure, not
a skip."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from matplotlib.image import imread
from unit.test_report import make_run

from hpcrun import report

pytestmark = pytest.mark.slow

ARTIFACT = REPO / "test-artifacts" / "report-screenshot.png"
WIDTH = 1280
MIN_HEIGHT = 2400
BROWSER_TIMEOUT = 180

# Runs once the page has loaded (data: images included) and leaves what the browser made of the
# images in a <pre>, which --dump-dom then prints: decoded or not, natural size, and where each
# one was laid out, in page coordinates.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => {
    const box = img.getBoundingClientRect();
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth,
            height: img.naturalHeight, x: box.left + window.scrollX, y: box.top + window.scrollY,
            shown_width: box.width, shown_height: box.height};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({height: document.documentElement.scrollHeight, images});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's path; install.sh only locates it when it is already on PATH."""
    proc = subprocess.run([str(REPO / "hpc" / "browser" / "install.sh")], capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not Path(path).is_file():
        message = f"hpc/browser/install.sh found no chromium: {proc.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_chromium(browser: str, home: Path, *args: str) -> str:
    """One headless Chromium run; returns its stdout. The browser forks renderer and GPU
    processes that hold the output pipes, so a hung run is killed as a whole process group:
    killing only the browser would leave communicate() waiting on those pipes."""
    argv = [browser, "--headless", "--no-sandbox",  # root cannot use Chromium's sandbox
            "--disable-gpu", "--disable-dev-shm-usage",  # no display; containers' /dev/shm is small
            f"--user-data-dir={home / 'profile'}",
            # one CSS pixel is one screenshot pixel, so plots compare to their PNG files exactly
            "--force-device-scale-factor=1", "--hide-scrollbars", *args]
    # Chromium writes crash-report and dconf folders under HOME even with --user-data-dir
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium {' '.join(args)} did not finish in {BROWSER_TIMEOUT} s")
    assert proc.returncode == 0, f"chromium {' '.join(args)} exit {proc.returncode}: {err[-3000:]}"
    return out


def rgb(path: Path) -> np.ndarray:
    """A PNG as integers 0-255, height x width x 3 (alpha dropped); signed, so that differences
    of two images do not wrap. Integer maths on a page-sized picture is several times faster
    than on matplotlib's floats."""
    return (imread(path)[..., :3] * 255).round().astype(np.int16)


@dataclass
class Rendered:
    files: report.ReportFiles
    #: what the page's script saw: {"height": int, "images": [{"alt", "complete", ...}]}
    probe: dict
    screenshot: Path
    #: the screenshot decoded by rgb(), once for every test that reads it
    shot: np.ndarray
    height: int


@pytest.fixture(scope="module")
def rendered(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    root = tmp_path_factory.mktemp("browser")
    files = report.write_report(make_run(root))
    page = files.html.read_text(encoding="utf-8")
    assert page.count("</body>") == 1
    probed = root / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    # the probe lays out at the screenshot's width, so its image positions hold for it too
    dom = run_chromium(chromium, root, f"--window-size={WIDTH},{MIN_HEIGHT}",
                       "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page's script left no result: {dom[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))

    # as tall as the page, so every plot is in the picture and not only the first screen
    height = max(MIN_HEIGHT, int(probe["height"]))
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.unlink(missing_ok=True)  # a picture from an earlier run must not pass for this one
    run_chromium(chromium, root, f"--window-size={WIDTH},{height}",
                 f"--screenshot={ARTIFACT}", files.html.as_uri())
    return Rendered(files=files, probe=probe, screenshot=ARTIFACT, shot=rgb(ARTIFACT),
                    height=height)


def test_every_embedded_plot_decodes_in_the_browser(rendered: Rendered) -> None:
    images = rendered.probe["images"]
    assert len(rendered.files.pngs) > 0
    assert len(images) == len(rendered.files.pngs)
    decoded = [i for i in images if i["complete"] and i["width"] > 0 and i["height"] > 0]
    assert decoded == images, [i["alt"] for i in images if i not in decoded]
    sizes = sorted((i["height"], i["width"]) for i in images)
    assert sizes == sorted(rgb(p).shape[:2] for p in rendered.files.pngs)
    assert all(i["shown_width"] > 0 and i["shown_height"] > 0 for i in images)


def test_screenshot_is_a_png_of_the_whole_page_and_not_blank(rendered: Rendered) -> None:
    assert rendered.screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    shot = rendered.shot
    assert shot.shape == (rendered.height, WIDTH, 3)
    assert (shot.min(axis=2) < 230).mean() > 0.03  # text, tables and plots, not a white page
    levels = (shot >> 4) @ np.array([256, 16, 1])  # 16 levels a channel
    assert len(np.unique(levels)) > 50
    # the page's own style is greys only: strong colour comes from the plots' lines
    assert (shot.max(axis=2) - shot.min(axis=2) > 80).sum() > 1000


def test_each_plot_appears_in_the_screenshot_pixel_for_pixel(rendered: Rendered) -> None:
    shot = rendered.shot
    pngs = {p.name: rgb(p) for p in rendered.files.pngs}
    shown: set[str] = set()
    for image in rendered.probe["images"]:
        # the layout box includes the 1px border of the page's img style; layout positions may
        # be fractional, so look one pixel either side of the rounded one
        matches: set[str] = set()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                x, y = round(image["x"]) + dx, round(image["y"]) + dy
                for name, png in pngs.items():
                    crop = shot[y:y + png.shape[0], x:x + png.shape[1]]
                    if crop.shape == png.shape and np.abs(crop - png).mean() < 2:
                        matches.add(name)
        assert matches, f"{image['alt']} is not visible where the page laid it out"
        shown |= matches
    assert shown == set(pngs)
