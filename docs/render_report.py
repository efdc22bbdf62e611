"""Render a medkern ``report.html`` in headless Chromium and save a full-page PNG screenshot.

    python docs/render_report.py OUT/report.html [--out shot.png] [--width 1280] [--chromium PATH]

The screenshot goes next to the page (``report.png``) unless ``--out`` names another file. It is
how the page is checked as a browser shows it: layout, figure orientation letters and scale bars
are HTML over the images, so only a real browser shows them in place.

Chromium's command line screenshots the window only, so the page is first loaded once with a small
script appended (in a temporary copy) that reports its full height; the screenshot is then taken
with a window that tall. Needs Chromium (Debian/Ubuntu: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from medkern.io._atomic import atomic_path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium refuses to rasterise taller pages in one piece (GPU texture limit).
MAX_HEIGHT_PX = 16384
# Reading scrollHeight forces layout; every figure states its size in width/height attributes and
# the page loads no font or other resource, so the height is final at the end of <body>.
MEASURE = ("<script>document.body.setAttribute('data-page-height',"
           "Math.ceil(document.documentElement.scrollHeight));</script>")


def _chromium(explicit: str | None) -> str:
    if explicit:
        if shutil.which(explicit) is None:
            sys.exit(f"error: --chromium {explicit} is not an executable")
        return explicit
    for name in BROWSERS:
        if shutil.which(name):
            return name
    sys.exit("error: Chromium was not found (looked for " + ", ".join(BROWSERS) + "). Install it "
             "(Debian/Ubuntu: apt-get install -y chromium) or give its path with --chromium PATH")


def _run(browser: str, profile: Path, width: int, height: int, *args: str) -> str:
    command = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Chromium's sandbox refuses to start as root (containers, CI); the page is our own file.
        command.insert(1, "--no-sandbox")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"error: {browser} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def render(page: Path, out: Path, width: int, browser: str) -> tuple[int, int]:
    """Screenshot ``page`` at ``width`` CSS pixels, full height, into ``out``; returns the size."""
    with tempfile.TemporaryDirectory(prefix="medkern-render-") as tmp:
        tmp_dir = Path(tmp)
        text = page.read_text(encoding="utf-8")
        if "</body>" not in text:
            sys.exit(f"error: {page} has no </body>: not a complete HTML page")
        probe = tmp_dir / "probe.html"
        probe.write_text(text.replace("</body>", MEASURE + "</body>", 1), encoding="utf-8")
        dom = _run(browser, tmp_dir / "profile", width, 800, "--dump-dom", probe.as_uri())
        found = re.search(r'data-page-height="(\d+)"', dom)
        if found is None:
            sys.exit(f"error: {browser} did not report the page height (is JavaScript disabled by policy?)")
        height = int(found.group(1))
        if height > MAX_HEIGHT_PX:
            print(f"note: the page is {height} px tall; the screenshot keeps its first {MAX_HEIGHT_PX} px",
                  file=sys.stderr)
            height = MAX_HEIGHT_PX
        with atomic_path(out) as target:
            _run(browser, tmp_dir / "profile", width, height, f"--screenshot={target}", page.as_uri())
            if not target.is_file() or target.stat().st_size == 0:
                sys.exit(f"error: {browser} wrote no screenshot")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the report.html to render")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: the page's name, .png)")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels (default 1280)")
    parser.add_argument("--chromium", default=None, help="the Chromium or Chrome executable")
    args = parser.parse_args(argv)
    page = args.page.resolve()
    if not page.is_file():
        parser.error(f"{args.page} is not a file")
    if args.width < 320:
        parser.error(f"--width must be at least 320 CSS pixels, got {args.width}")
    out = (args.out or page.with_suffix(".png")).resolve()
    browser = _chromium(args.chromium)
    width, height = render(page, out, args.width, browser)
    print(f"{out} ({width} x {height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
