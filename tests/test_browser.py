"""The app in a real browser: `streamlit run Home.py` driven by Chromium through Playwright.

Uploads an image, reads the caption off the page, visits every page and saves screenshots to test-artifacts/.
Needs /usr/bin/chromium (`apt-get install -y chromium`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_fixtures import REPO, image_bytes

from captioning.data import load_image
from captioning.inference import Captioner

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tiny_run, tiny_coco, tiny_cache_dir, tmp_path_factory):
    """A live server on a free port, pointed at the tiny model, a copy of its run and the tiny dataset."""
    tmp = tmp_path_factory.mktemp("browser")
    shutil.copytree(tiny_run, tmp / "runs" / "tiny-run")
    port = free_port()
    env = {**__import__("os").environ, "CAPTIONING_CHECKPOINT": str(tiny_checkpoint),
           "CAPTIONING_RUNS_DIR": str(tmp / "runs"), "COCO_ROOT": str(tiny_coco),
           "CAPTIONING_CACHE_DIR": str(tiny_cache_dir)}  # fmt: skip
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start: {(tmp / 'server.log').read_text()[-2000:]}")
    yield url, tmp
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def settle(page, extra_ms: int = 500) -> None:
    """Wait until the script run is over (no "Running..." indicator for a while) and charts have drawn."""
    idle = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
    for _ in range(3):  # a rerun may start just after a check: want it idle three times in a row
        page.wait_for_timeout(300)
        page.wait_for_function(idle)
    page.wait_for_timeout(extra_ms)


def test_upload_caption_and_visit_every_page(server, tiny_checkpoint):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    ARTIFACTS.mkdir(exist_ok=True)
    good = tmp / "red-circle.png"
    good.write_bytes(image_bytes("red", "circle"))
    bad = tmp / "not-an-image.jpg"
    bad.write_bytes(b"plain text, not a picture")
    expected = Captioner.from_checkpoint(tiny_checkpoint).caption([load_image(good)], "beam", 3, 20)[0].text

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)  # a cold server loads torch and the model on first use
        expect.set_options(timeout=90_000)
        page.goto(url)
        uploader = page.locator('[data-testid="stFileUploaderDropzone"]')
        expect(uploader).to_be_visible()
        expect(page.get_by_text("Drag and drop one or more images")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "home-empty.png", full_page=True)

        page.locator('input[type="file"]').set_input_files(str(good))
        caption = page.locator("h3", has_text=expected)
        expect(caption).to_be_visible()
        assert caption.inner_text().strip() == expected
        expect(page.get_by_text("Word probabilities")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "home-captioned.png", full_page=True)

        page.locator('input[type="file"]').set_input_files(str(bad))  # added to the first: two files now
        expect(page.get_by_test_id("stAlertContentError")).to_contain_text("not-an-image.jpg is not an image")
        expect(page.get_by_role("button", name="Download captions (CSV)")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "home-several.png", full_page=True)
        expect(page.locator("h3", has_text=expected)).to_have_count(1)

        page.get_by_role("link", name="Browse dataset").click()
        expect(page.get_by_role("heading", name="Browse the dataset")).to_be_visible()
        expect(page.get_by_text("8 of 8 images in val match")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "browse.png", full_page=True)
        expect(page.get_by_role("button", name="Open image")).to_have_count(8)
        page.get_by_role("button", name="Open image").first.click()
        expect(page.get_by_text("Reference captions")).to_be_visible()
        expect(page.get_by_text("CIDEr")).to_be_visible()
        expect(page).to_have_url(re.compile(r"[?&]image=\d+"))  # a link to this image (the URL may lag the page)
        settle(page)
        page.screenshot(path=ARTIFACTS / "browse-image.png", full_page=True)

        page.get_by_role("link", name="Training logs").click()
        expect(page.get_by_role("heading", name="Training logs")).to_be_visible()
        expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(4)
        settle(page, 1500)
        page.screenshot(path=ARTIFACTS / "training-logs.png", full_page=True)

        page.get_by_role("link", name="Fine tune").click()
        expect(page.get_by_role("heading", name="Fine-tune a model")).to_be_visible()
        expect(page.get_by_role("button", name="Fine-tune on train")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "fine-tune.png", full_page=True)
        browser.close()
