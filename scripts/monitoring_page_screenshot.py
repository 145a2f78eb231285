"""Regenerates docs/monitoring-page.png: runs `sidecar demo`, opens its monitoring page in headless Chromium
(Debian `chromium`, `chromium-driver`; PyPI `selenium`) while the traffic flows, and saves the page near the
end of the traffic. Usage: python scripts/monitoring_page_screenshot.py [--out docs/monitoring-page.png]"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/monitoring-page.png")
    parser.add_argument("--traffic", type=float, default=60.0, help="seconds of demo traffic")
    args = parser.parse_args()
    demo = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo", "--traffic", str(args.traffic), "--duration", str(args.traffic + 60),
         "--listen-rest", "127.0.0.1:0", "--listen-grpc", "127.0.0.1:0", "--listen-admin", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True)
    assert demo.stdout is not None
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1660"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        for line in demo.stdout:
            print(line, end="", flush=True)
            if line.startswith("monitoring page: "):
                driver.get(line.split()[2] + "?interval=2")
            elapsed = line[1:line.find("s]")].strip() if line.startswith("[") else ""
            if elapsed and float(elapsed) >= args.traffic - 4:  # traffic still flowing: rates on the cards
                time.sleep(2)  # a last poll
                driver.save_screenshot(args.out)
                print(f"saved {args.out}")
                break
    finally:
        driver.quit()
        demo.terminate()
        demo.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
