"""Save PNG screenshots of a run's report: front page, one neuron page, its compare view
and the neuron browser searching for a partner name.

usage: python scripts/screenshot_report.py RUN OUT_DIR [MODEL:L.N]

Needs Debian's chromium and chromium-driver and the selenium package (dev extra).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    report = run / "report"
    if len(sys.argv) > 3:
        model, neuron = sys.argv[3].split(":")
        page = report / "neurons" / model / f"{neuron}.html"
    else:
        page = sorted((report / "neurons").glob("*/*.html"))[0]
    opts = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1600",
                 f"--user-data-dir={tempfile.mkdtemp()}"):
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        compare = report / "compare" / page.parent.name / page.name
        browser = report / f"browser-{page.parent.name}.html"
        shots = [(report / "index.html", "report_index.png", ""), (page, "report_neuron.png", ""),
                 (compare, "report_compare.png", ""), (browser, "report_browser.png", "#universal")]
        for url, name, hash_ in shots:
            if not url.is_file():
                print(f"skipped {name}: no {url}")
                continue
            driver.get(url.resolve().as_uri() + hash_)
            driver.execute_script("return document.readyState")
            driver.save_screenshot(str(out / name))
            print(f"saved {out / name} ({url})")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
