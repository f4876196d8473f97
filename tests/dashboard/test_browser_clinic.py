"""The clinical validation loop in a real browser (Playwright, Debian's Chromium), on the shipped starter and the bundled
sample: a shift report on a folder (Data), a site profile made from a labelled folder and then used by Demo (Evaluate →
Demo), and a 10-film reader study in Demo by a scripted reader, answered with the keys.

Screenshots go to tests/artifacts/ (and the README's to docs/ when CXR_STUDIO_SCREENSHOTS=docs).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DOCS, DOCS_MODE, PLOTS_DRAWN, server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLINIC_SHOTS = ("shift", "site", "reader")


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


@contextlib.contextmanager
def _page(url: str, heading: str, path: str = ""):
    """A fresh browser session on one page of the dashboard, once its heading is there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}{path}")
        page.get_by_role("heading", name=heading, level=1).wait_for()
        try:
            yield page
        finally:
            browser.close()


def test_a_site_profile_made_on_evaluate_sets_the_threshold_demo_calls_at(server):
    from playwright.sync_api import expect

    url, runs = server
    starter = _starter(runs)
    with _page(url, "Evaluate", "/evaluate") as page:
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
    assert profile["n"] == 80 and profile["cross_fitted"]["n_splits"] == 20


def test_a_shift_report_on_a_folder_from_the_data_page(server, restaged_data):
    from playwright.sync_api import expect

    url, runs = server  # the starter's training films are the restaged Kaggle copy: restaged_data builds it if missing
    starter = _starter(runs)
    with _page(url, "Data") as page:
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



def _table(page, row_name: str) -> dict[str, str]:
    """One row of the page's st.table, by its first cell, as {column: text}."""
    table = page.locator("[data-testid='stTable'] table").first
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    cells = [c.strip() for c in table.locator("tbody tr").filter(has_text=row_name).first.locator("th, td").all_inner_texts()]
    return dict(zip(headers, cells))


def test_a_scripted_ten_film_reading_in_demo_shows_the_figures_counted_by_hand(server):
    from playwright.sync_api import expect

    url, runs = server
    starter = _starter(runs)
    with _page(url, "Demo", "/demo") as page:
        expect(page.get_by_text("Case 1 of").first).to_be_visible(timeout=90_000)
        page.wait_for_function(PLOTS_DRAWN)
        page.locator(".st-key-demo_view").get_by_role("radio", name="Reader study").click()
        name = page.get_by_role("textbox", name="Reader name")
        name.wait_for(timeout=60_000)
        name.fill("Dr Browser")
        name.press("Enter")
        start = page.get_by_role("button", name="Start reading")
        expect(start).to_be_enabled()  # the name's rerun is over: it cannot overwrite the number typed next
        films_to_read = page.get_by_role("spinbutton", name="Films to read")
        films_to_read.fill("10")
        films_to_read.press("Enter")
        expect(films_to_read).to_have_value("10")
        page.wait_for_function(PLOTS_DRAWN)
        start.click()
        expect(page.get_by_text("Film 1 of 10")).to_be_visible()
        _shoot(page, "reader-reading")
        [path] = (starter.path / "readers").glob("dr-browser-*.json")
        films = json.loads(path.read_text())["films"]
        assert sorted(f["label"] for f in films) == [0] * 5 + [1] * 5
        page.evaluate("document.activeElement && document.activeElement.blur()")  # keys go to the buttons, not a field
        # The scripted reader, by keyboard: right except on the 2nd, 5th and 9th films, confidence 1, 2, … 5, 1, …
        script = [(f["label"] if i not in (1, 4, 8) else 1 - f["label"], 1 + i % 5) for i, f in enumerate(films)]
        for i, (call, confidence) in enumerate(script):
            page.wait_for_function(PLOTS_DRAWN)
            page.keyboard.press("NP"[call])
            expect(page.get_by_text("now the other half of the answer")).to_be_visible()
            page.wait_for_function(PLOTS_DRAWN)
            page.keyboard.press(str(confidence))
            if i + 1 < len(script):
                expect(page.get_by_text(f"Film {i + 2} of 10")).to_be_visible()
        expect(page.get_by_text("κ with the model").first).to_be_visible(timeout=90_000)
        session = json.loads(path.read_text())
        assert [(int(a["call"] == "PNEUMONIA"), a["confidence"]) for a in session["answers"]] == script

        # By hand, from the starter's own metrics.json and validation threshold.
        probability = {Path(q["file"]).name: q["probability"] for q in starter.metrics()["predictions"]}
        truth = [f["label"] for f in films]
        reader = [call for call, _ in script]
        model = [int(probability[Path(f["film"]).name] >= starter.threshold()) for f in films]
        sensitivity = sum(y == 1 and c == 1 for y, c in zip(truth, reader)) / 5
        specificity = sum(y == 0 and c == 0 for y, c in zip(truth, reader)) / 5
        observed = sum(a == b for a, b in zip(reader, model)) / 10
        chance = sum(reader) / 10 * sum(model) / 10 + (1 - sum(reader) / 10) * (1 - sum(model) / 10)
        kappa = (observed - chance) / (1 - chance)
        row = _table(page, session["name"])
        assert row["Films"] == "10"
        assert row["Sensitivity"] == f"{100 * sensitivity:.1f} %"
        assert row["Specificity"] == f"{100 * specificity:.1f} %"
        assert row["κ with the model"] == f"{kappa:.3f}"
        page.get_by_text("Reader study").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        _shoot(page, "reader")
