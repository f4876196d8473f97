"""The clinical validation loop in a real browser (Playwright, Debian's Chromium), on the shipped starter and the bundled
sample: a shift report on a folder (Data), a site profile made from a labelled folder and then used by Demo (Evaluate →
Demo). The 10-film reader study by a scripted reader is walked through AppTest (tests/dashboard/test_reader_page.py).

Screenshots go to tests/artifacts/ (and the README's to docs/ when CXR_STUDIO_SCREENSHOTS=docs).
"""
from __future__ import annotations

import json
import shutil

import pytest

from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DOCS, DOCS_MODE, PLOTS_DRAWN, server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLINIC_SHOTS = ("shift", "site")


def _shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_function(PLOTS_DRAWN)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if DOCS_MODE and name in CLINIC_SHOTS:
        shutil.copyfile(path, DOCS / f"{name}.png")


def _go(page, name: str) -> None:
    page.get_by_role("link", name=name).first.click()
    page.get_by_role("heading", name=name, level=1).wait_for(timeout=60_000)


def _starter(runs):
    from core.store.runs import RunStore

    return RunStore(runs).get("starter-efficientnet-lite0")


def test_a_site_profile_made_on_evaluate_sets_the_threshold_demo_calls_at(server):
    from playwright.sync_api import expect, sync_playwright

    url, runs = server
    starter = _starter(runs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/evaluate")
        page.get_by_role("heading", name="Evaluate", level=1).wait_for()
        expect(page.get_by_text("Site profiles: set the threshold")).to_be_visible(timeout=90_000)
        name = page.get_by_role("textbox", name="Profile name")
        name.fill("browser-site")
        name.press("Enter")
        page.get_by_role("button", name="Create site profile").click()
        expect(page.get_by_text("Site profile browser-site saved")).to_be_visible(timeout=120_000)
        profile = json.loads((starter.path / "sites" / "browser-site.json").read_text())
        threshold = profile["threshold"]
        expect(page.get_by_text(f"threshold {threshold:.3f}").first).to_be_visible()
        page.get_by_text("Profile to compare").scroll_into_view_if_needed()
        _shoot(page, "site")

        # Demo calls at the profile's threshold and says where it comes from.
        _go(page, "Demo")
        expect(page.get_by_text(f"Called pneumonia from {threshold:.1%}: the threshold of site profile")).to_be_visible()
        expect(page.get_by_text("browser-site").first).to_be_visible()
        browser.close()
    assert profile["n"] == 80 and profile["cross_fitted"]["n_splits"] == 20


def test_a_shift_report_on_a_folder_from_the_data_page(server, real_data):
    from playwright.sync_api import expect, sync_playwright

    url, runs = server  # the starter's training films are the staged Kaggle copy: real_data must be there
    starter = _starter(runs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("heading", name="Data", level=1).wait_for()
        films = page.get_by_role("spinbutton", name="Films per side")
        films.fill("40")
        films.press("Enter")
        page.locator(".st-key-shift_go button").click()
        expect(page.get_by_text("P(new)").first).to_be_visible(timeout=240_000)  # the most foreign films: the end
        report = json.loads(next((starter.path / "shifts").glob("*.json")).read_text())
        assert report["domain"]["n_new"] == 40 and 0.5 <= report["domain"]["auc"] <= 1.0
        expect(page.get_by_text(f"{report['domain']['auc']:.2f}", exact=True).first).to_be_visible()
        page.get_by_text("Shift against a run").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        _shoot(page, "shift")
        browser.close()

