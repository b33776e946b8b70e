"""A real browser opens the report: no console error, no failed request, every plot drawn,
and a screenshot that is not blank.

Debian's chromium is driven through playwright's Python API with its own executable (never
`playwright install`, which downloads a browser). scripts/setup.sh --dev installs chromium
where it may; without it this test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from evolkit.report import write_report
from tests.report_fixtures import two_runs

CHROMIUM = os.environ.get("EVOLKIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which("chromium")),
    reason=f"chromium is not installed ({CHROMIUM}); scripts/setup.sh --dev installs it",
)


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    page_path = write_report(two_runs(), tmp_path)
    check_in_browser(page_path, tmp_path, plots=8)


def test_a_compare_report_renders_in_chromium(tmp_path: Path) -> None:
    """The page `evolkit compare` writes from real run folders (scripted models)."""
    pytest.importorskip("matplotlib")
    from tests.test_analyze import compare_report

    page_path, drawn = compare_report(tmp_path)
    assert drawn >= 7  # only the IFD plot may be a note (one run scored)
    check_in_browser(page_path, tmp_path, plots=drawn)


def check_in_browser(page_path: Path, tmp_path: Path, plots: int) -> None:
    """No console error, no failed or outside request, `plots` plots drawn, a real screenshot."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from PIL import Image, ImageStat

    executable = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")

            figures = page.locator("figure.plot")
            assert figures.count() == plots
            for i in range(figures.count()):
                plot = figures.nth(i)
                name = plot.get_attribute("data-plot")
                svg = plot.locator("svg")
                assert svg.count() == 1, name
                box = svg.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 100, (name, box)
                drawn = svg.evaluate(
                    "s => [...s.querySelectorAll('path')]"
                    ".filter(p => { const b = p.getBBox(); return b.width > 0 || b.height > 0; })"
                    ".length"
                )
                assert drawn > 10, (name, drawn)
            # The only thing loaded is the page itself: nothing from a network.
            assert requests == [page_path.as_uri()]

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    with Image.open(shot) as im:
        gray = im.convert("L")
        assert gray.size[1] > 2000  # the whole page, not one screen
        assert ImageStat.Stat(gray).var[0] > 100.0, "the screenshot is blank"
    keep = os.environ.get("EVOLKIT_REPORT_SCREENSHOT")
    if keep:  # a person can look at what the browser drew
        shutil.copy(shot, keep)
