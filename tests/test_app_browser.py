"""The web UI end to end in headless Chromium: type a prompt, click Generate, see the image; open the other tabs.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and Playwright's Python package (``pip install
playwright``, part of the ``test`` extra); no ``playwright install``: the test drives the system's Chromium. Missing
either is a failure, not a skip. ``LINFUSE_CHROMIUM`` names another Chromium binary. With
``LINFUSE_SAVE_SCREENSHOT=1`` the screenshot is written to assets/ui_screenshot.png (the README's picture).
"""

import os
import shutil
from contextlib import contextmanager

import app_server
import pytest
from PIL import Image

INSTALL = ("CI installs both with the README's test command: apt-get install -y chromium && pip install -e '.[test]'")
IMAGE_LOADED = """() => {
    const image = document.querySelector('#generate-output img');
    return image !== null && image.complete && image.naturalWidth > 0;
}"""
TIMEOUT_MS = 120_000
NEW_TABS = [("High-res", "#highres-button"), ("Img2Img", "#img2img-button"), ("Upscale", "#upscale-button"),
            ("Inspect", "#inspect-gradcam-button")]


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    yield app_server.shared(tmp_path_factory).url
    app_server.stop_shared()


def chromium_path() -> str:
    path = os.environ.get("LINFUSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed (no `chromium` on PATH): apt-get install -y chromium "
                    f"(or set LINFUSE_CHROMIUM to a Chromium binary). {INSTALL}", pytrace=False)
    return path


def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail("Playwright's Python package is missing: pip install playwright (no `playwright install` "
                    f"needed: the test uses Debian's chromium). {INSTALL}", pytrace=False)
    return start()


@contextmanager
def app_page(url: str):
    """A page of the app in headless Chromium (the system's), closed after the block."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()


def saving_for_readme() -> bool:
    return os.environ.get("LINFUSE_SAVE_SCREENSHOT") == "1"


def screenshot_path(tmp_path):
    return app_server.ROOT / "assets" / "ui_screenshot.png" if saving_for_readme() else tmp_path / "ui_screenshot.png"


def test_type_prompt_click_generate_see_image(app_url, tmp_path):
    shot = screenshot_path(tmp_path)
    with app_page(app_url) as page:
        page.locator("#generate-prompt textarea").fill("dog face on a yellow background")
        page.locator("#generate-steps input").fill("25" if saving_for_readme() else "4")  # 4: fast
        page.locator("#generate-seed input").fill("3")
        page.wait_for_function("() => document.querySelector('#generate-preflight')?.innerText.includes('MiB')")
        page.locator("#generate-button").click()
        page.wait_for_function(IMAGE_LOADED)
        natural_width = page.locator("#generate-output img").evaluate("image => image.naturalWidth")
        page.locator("#gallery img").first.wait_for()
        page.screenshot(path=str(shot), full_page=True)
        shown = []
        for tab, button in NEW_TABS:  # the other tabs render with their forms
            page.get_by_role("tab", name=tab, exact=True).click()
            page.locator(button).wait_for(state="visible")
            shown.append(tab)
    assert natural_width == 64
    assert shown == [tab for tab, _ in NEW_TABS]
    assert shot.exists() and shot.stat().st_size > 0
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width > 0 and picture.height > 0
        picture.verify()


def test_pick_the_bundled_dit_and_generate(app_url):
    """The model radio's DiT student fills the model box; the image comes back at 128 px and names CLEAR."""
    with app_page(app_url) as page:
        page.locator("#generate-model-choice").get_by_label("bundled DiT student").check()
        page.wait_for_function("() => document.querySelector('#generate-model textarea, #generate-model input')"
                               "?.value === 'dit-student'")
        for side in ("#generate-width input", "#generate-height input"):
            page.locator(side).fill("128")
        page.locator("#generate-steps input").fill("4")
        page.locator("#generate-button").click()
        page.wait_for_function("() => (document.querySelector('#generate-parameters textarea')?.value ?? '')"
                               ".includes('dit-student')")
        page.wait_for_function(IMAGE_LOADED)
        natural_width = page.locator("#generate-output img").evaluate("image => image.naturalWidth")
        parameters = page.locator("#generate-parameters textarea").input_value()
    assert natural_width == 128
    assert "Linear attention: clear" in parameters and "Model: dit-student" in parameters
