"""The explorer in a real browser: Debian's headless chromium driven by selenium through chromedriver.

No console errors, every image resolves, and overview → head → component navigation works. Also
takes a screenshot of a head page (docs/explorer_head.png is one of the full demo's, docs/results/demo.md)."""

from __future__ import annotations

import shutil
import pytest

from resi_dual.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian chromium and chromium-driver are not "
                                 "installed (`make data` installs them)")]


@pytest.fixture(scope="module")
def browser():
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1300"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    assert selenium.__version__
    yield driver
    driver.quit()


def _images_ok(driver) -> tuple[int, list[str]]:
    """(number of images, sources that did not decode), after every image has settled (loaded or failed)."""
    import time

    for _ in range(100):
        imgs = driver.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth > 0]);")
        if all(done for _src, done, _ok in imgs):
            break
        time.sleep(0.1)
    return len(imgs), [src for src, done, ok in imgs if not (done and ok)]


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_overview_head_component_navigation(folder_store, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    site = tmp_path / "site"
    assert main(["explore", str(folder_store[2]), "--out", str(site), "--units", "all", "--pcs", "3",
                 "--images", "4", "--no-progress"]) == 0
    d = browser
    d.get((site / "index.html").as_uri())
    assert d.title == "resi-dual explorer"
    cells = d.find_elements(By.CSS_SELECTOR, "td[data-unit]")
    assert len(cells) == 36
    colours = "return [...document.querySelectorAll('td[data-unit]')].map(td => td.style.background);"
    before = d.execute_script(colours)
    sel = Select(d.find_element(By.ID, "measure"))
    options = [o.text for o in sel.options]
    assert {"total variance", "PC1 share"} <= set(options)
    sel.select_by_visible_text("total variance" if sel.first_selected_option.text != "total variance" else "PC1 share")
    after = d.execute_script(colours)
    assert before != after  # the picker recolours the grid
    assert not _errors(d)
    # overview -> head
    d.find_element(By.CSS_SELECTOR, "td[data-unit=L4H3] a").click()
    assert d.find_element(By.TAG_NAME, "h1").text == "L4H3"
    n, broken = _images_ok(d)
    assert n == 3 * 4 and not broken  # four previews per PC
    assert d.find_elements(By.CSS_SELECTOR, "svg[aria-label=spectrum] rect")
    shot = tmp_path / "explorer_head.png"  # docs/explorer_head.png: a head page of the full demo's site
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 5_000
    # head -> component -> next component -> back to the head
    d.find_element(By.LINK_TEXT, "PC2").click()
    assert d.find_element(By.TAG_NAME, "h1").text == "L4H3 · PC2"
    n, broken = _images_ok(d)
    assert n == 8 and not broken
    assert len(d.find_elements(By.CSS_SELECTOR, "#top img")) == 4 == len(d.find_elements(By.CSS_SELECTOR, "#bottom img"))
    d.find_element(By.LINK_TEXT, "PC3 →").click()
    assert d.find_element(By.TAG_NAME, "h1").text == "L4H3 · PC3"
    d.find_element(By.LINK_TEXT, "L4H3").click()
    assert d.find_element(By.TAG_NAME, "h1").text == "L4H3"
    # every page of the site: no console errors, every image resolves
    for page in sorted(site.rglob("*.html")):
        d.get(page.as_uri())
        n, broken = _images_ok(d)
        assert not broken, (page.name, broken[:3])
        assert not _errors(d), page.name
