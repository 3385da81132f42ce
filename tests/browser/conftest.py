"""A headless Chromium driven by Selenium, for tests that open the report like a user.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; override with ``UN_CHROMIUM`` / ``UN_CHROMEDRIVER``) and the
``selenium`` package. Without them the tests are skipped with the reason. The browser is
started with no network features (no sync, updates, QUIC or background requests) and a
throwaway profile; pages are opened from disk with ``file://``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# The fabricated run directory lives with the unit tests of the report.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "report"))

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000")


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for n in names:
        p = shutil.which(n) or (n if Path(n).is_file() else None)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed (pip install selenium)")
    chromium = _find("UN_CHROMIUM", "/usr/bin/chromium", "chromium", "chromium-browser")
    chromedriver = _find("UN_CHROMEDRIVER", "/usr/bin/chromedriver", "chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("needs Chromium and chromedriver (apt-get install chromium chromium-driver); "
                    f"found chromium={chromium}, chromedriver={chromedriver}")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium  # given explicitly, so Selenium Manager never downloads
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
