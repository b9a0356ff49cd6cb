"""The report page in a real headless Chromium (Debian's chromium + chromium-driver): offline, no
broken image (the embedded inputs and the scatter included), one table row per trial, sortable, and
no wider than the window."""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")


@needs_browser
def test_report_loads_offline_with_every_image(failing_trial_sweep, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    sweep, r = failing_trial_sweep  # -m style_weight=1e39,1e5
    assert r.returncode == 1  # the 1e39 trial fails; the report still covers both
    completed = next(d.name for d in sweep.iterdir() if d.name.startswith("1_"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1024,768",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get((sweep / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        # grid, curves, the scatter, and the animation of the completed trial
        assert {"grid.png", "curves.png", "scatter.png", f"{completed}/animation.gif"} <= {src for src, _ in images}
        # the content and style images, embedded in the page
        inputs = driver.execute_script("return Array.from(document.images).filter(i => i.src.startsWith('data:'))"
                                       ".map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert sorted(inputs) == [["content: tubingen", True], ["style: starry_night", True]]
        broken = [src for src, ok in images if not ok]
        assert broken == []

        def page_fits():
            return driver.execute_script(
                "const t = document.getElementById('results').getBoundingClientRect();"
                "return [document.documentElement.scrollWidth, window.innerWidth, t.right]")

        scroll, inner, right = page_fits()
        assert scroll <= inner and right <= inner
        driver.find_element(By.CSS_SELECTOR, "details summary").click()  # the folded columns
        assert driver.find_element(By.ID, "more").is_displayed()
        scroll, inner, _ = page_fits()
        assert scroll <= inner
        rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert len(rows) == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.failed")) == 1
        # every resource came from the sweep folder: nothing fetched from elsewhere
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith("file://") for u in urls), urls
        # clicking a header sorts the table by that column
        headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#results th")]
        col = headers.index("status")

        def statuses():
            rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
            return [row.find_elements(By.TAG_NAME, "td")[col].text for row in rows]

        assert statuses() == ["failed", "completed"]  # in job order
        driver.find_elements(By.CSS_SELECTOR, "#results th")[col].click()
        assert statuses() == ["completed", "failed"]
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
