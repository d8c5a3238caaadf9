"""Debian's Chromium driven by Playwright, for the console's tests and benchmark.

Playwright's own browser download cannot work here (and is not needed): it
drives the system's ``/usr/bin/chromium`` (``scripts/bootstrap.sh test``
installs it) through ``executable_path``.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}


def launch(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: run scripts/bootstrap.sh test (it installs Debian's chromium)"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)


def new_context(browser: Browser, *, color_scheme: str = "light", width: int = 1280) -> BrowserContext:
    return browser.new_context(
        viewport={"width": width, "height": VIEWPORT["height"]},
        color_scheme="dark" if color_scheme == "dark" else "light",
    )


def log_in(context: BrowserContext, base_url: str, token: str, *, with_form: bool = True) -> Page:
    """A page logged in with ``token`` (typed into the login form, as a person would)."""
    page = context.new_page()
    # Every confirm() of an action button is answered yes: the tests press buttons on purpose.
    page.on("dialog", lambda dialog: dialog.accept())
    if with_form:
        page.goto(f"{base_url}/login")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(rf"^{re.escape(base_url)}/(\?.*)?$"))
    else:
        page.goto(f"{base_url}/login?token={token}")
    return page


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
