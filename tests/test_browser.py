"""The app in a real browser: `streamlit run Home.py` driven by Chromium through Playwright.

Uploads an image, reads the caption off the page, visits every page and saves screenshots to test-artifacts/.
Needs /usr/bin/chromium (`apt-get install -y chromium`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
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
from fixtures import COLOURS, SHAPES, draw

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
    yield from _serve(tmp, {"CAPTIONING_CHECKPOINT": str(tiny_checkpoint), "CAPTIONING_RUNS_DIR": str(tmp / "runs"),
                            "COCO_ROOT": str(tiny_coco), "CAPTIONING_CACHE_DIR": str(tiny_cache_dir),
                            "CAPTIONING_DATA_DIR": str(tmp / "data")})  # fmt: skip


@pytest.fixture(scope="module")
def first_run_server(tmp_path_factory):
    """A server as a fresh clone runs it: the shipped model, no dataset but the embedded sample, no runs."""
    tmp = tmp_path_factory.mktemp("first-run")
    env = {"CAPTIONING_RUNS_DIR": str(tmp / "runs"), "CAPTIONING_DATA_DIR": str(tmp / "data"),
           "CAPTIONING_CACHE_DIR": str(tmp / "cache")}  # fmt: skip
    yield from _serve(tmp, env, drop=("COCO_ROOT", "CAPTIONING_CHECKPOINT", "CAPTIONING_SAMPLE_DIR"))


def _serve(tmp: Path, settings: dict, drop: tuple[str, ...] = ()):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in drop} | settings
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
    cap = Captioner.from_checkpoint(tiny_checkpoint).caption([load_image(good)])[0]
    expected = cap.text + (" \u2026" if cap.cut else "")

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
        expect(page.get_by_role("tab", name="Alternatives")).to_be_visible()
        expect(page.get_by_text("unsure: ").first).to_be_visible()  # a flat drawing is no photo: the page says so
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
        expect(page).to_have_url(re.compile(r"[?&]split=val"))  # with its split: the link finds it again
        settle(page)
        page.screenshot(path=ARTIFACTS / "browse-image.png", full_page=True)

        page.get_by_role("link", name="Training logs").click()
        expect(page.get_by_role("heading", name="Training logs")).to_be_visible()
        expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(4)
        settle(page, 1500)
        page.screenshot(path=ARTIFACTS / "training-logs.png", full_page=True)
        page.get_by_text("Score the chosen runs on the same images").click()
        page.get_by_role("button", name="Score on the same images").click()
        expect(page.get_by_text("the same draws of images for both")).to_be_visible()  # the table's explanation
        settle(page, 1000)
        page.screenshot(path=ARTIFACTS / "training-logs-compared.png", full_page=True)

        page.get_by_role("link", name="Fine tune").click()
        expect(page.get_by_role("heading", name="Fine-tune a model")).to_be_visible()
        expect(page.get_by_role("button", name="Fine-tune on train")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "fine-tune.png", full_page=True)
        browser.close()


def test_a_first_run_clicks_an_example_on_home_and_browses_the_sample(first_run_server):
    from playwright.sync_api import expect, sync_playwright

    url, _ = first_run_server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(url)
        expect(page.get_by_text("Or try an example")).to_be_visible()
        page.get_by_role("button", name="Caption", exact=True).first.click()
        expect(page.locator("h3")).to_have_count(1)
        expect(page.get_by_text("Reference captions")).to_be_visible()
        assert len(page.locator("h3").inner_text().split()) >= 3
        settle(page, 1000)
        page.screenshot(path=ARTIFACTS / "home-example.png")
        docs = REPO / "docs" / "home.png"
        if os.environ.get("CAPTIONING_UPDATE_DOCS") or not docs.is_file():  # the README's screenshot
            docs.parent.mkdir(exist_ok=True)
            shutil.copyfile(ARTIFACTS / "home-example.png", docs)
        # a report's screenshot of text: the shipped model captions it as a photo, and the page says to doubt it
        report = ARTIFACTS / "report.png"
        report.write_bytes(_text_screenshot())
        page.locator('input[type="file"]').set_input_files(str(report))
        warning = page.get_by_test_id("stAlertContentWarning")
        expect(warning.get_by_text("unsure: the image looks like a screenshot, text or a drawing")).to_be_visible()
        settle(page, 1000)
        page.screenshot(path=ARTIFACTS / "home-doubtful.png")

        page.get_by_role("link", name="Browse dataset").click()
        expect(page.get_by_role("heading", name="Browse the dataset")).to_be_visible()
        expect(page.get_by_text("60 of 60 images in val match")).to_be_visible()
        expect(page.get_by_text("No COCO captions")).to_have_count(0)
        settle(page)
        page.screenshot(path=ARTIFACTS / "browse-sample.png", full_page=True)
        browser.close()


def _text_screenshot() -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (800, 500), "white")
    draw = ImageDraw.Draw(image)
    for row in range(14):
        draw.text((24, 20 + 34 * row), "Quarterly report: revenue grew 4% over the last quarter", fill="black")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _dataset_zip(path: Path) -> None:
    """A CSV dataset of 16 drawings whose captions all say "zorblat", a word the tiny model lacks."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        rows = ["image,caption"]
        for k in range(16):
            colour, shape = list(COLOURS)[k % 4], SHAPES[(k // 4) % 2]
            buf = io.BytesIO()
            draw(colour, shape, jitter=k).save(buf, "PNG")
            z.writestr(f"shapes/pics/{k}.png", buf.getvalue())
            rows += [f"pics/{k}.png,a {colour} zorblat {shape}", f"pics/{k}.png,one {colour} {shape} zorblat"]
        z.writestr("shapes/captions.csv", "\n".join(rows) + "\n")


def _choose(page, box: str, option: str) -> None:
    """Pick `option` in the sidebar select box labelled `box`."""
    page.get_by_test_id("stSidebar").get_by_role("combobox", name=box).click()
    page.get_by_role("option", name=option).click()


def test_upload_a_dataset_browse_it_fine_tune_on_it_and_caption_with_the_result(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    archive = tmp / "shapes.zip"
    _dataset_zip(archive)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)
        page.goto(f"{url}/Fine_tune")
        expect(page.get_by_role("heading", name="Fine-tune a model")).to_be_visible()
        page.get_by_text("Add your own dataset").click()
        page.get_by_test_id("stExpander").locator('input[type="file"]').set_input_files(str(archive))
        page.get_by_role("textbox", name="Dataset name").fill("my shapes")
        page.get_by_role("button", name="Add dataset").click()
        expect(page.get_by_text("Stored as my-shapes (csv format)")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "fine-tune-dataset-added.png", full_page=True)

        page.get_by_role("link", name="Browse dataset").click()
        expect(page.get_by_role("heading", name="Browse the dataset")).to_be_visible()
        _choose(page, "Dataset", "my-shapes (csv)")
        _choose(page, "Split", "train")
        expect(page.get_by_text(re.compile(r"\d+ of \d+ images in train match"))).to_be_visible()
        expect(page.get_by_text("zorblat").first).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "browse-own-dataset.png", full_page=True)

        page.get_by_role("link", name="Fine tune").click()
        _choose(page, "Dataset", "my-shapes (csv)")
        page.get_by_role("textbox", name="Run name").fill("shapes-run")
        page.get_by_role("spinbutton", name="How many").fill("12")
        page.get_by_role("button", name="Fine-tune on train").click()
        expect(page.get_by_text("Run shapes-run finished")).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "fine-tune-own-dataset.png", full_page=True)

        grown = Captioner.from_checkpoint(tmp / "runs" / "shapes-run" / "best.pt", device="cpu")
        assert "zorblat" in grown.vocab.stoi  # the new word was learned into the vocabulary
        photo = tmp / "blue-square.png"
        photo.write_bytes(image_bytes("blue", "square"))
        expected = grown.caption([load_image(photo)])[0].text
        page.get_by_role("link", name="Home").click()
        _choose(page, "Checkpoint", re.compile("shapes-run"))
        settle(page)  # the rerun for the new model is over before the upload
        page.locator('input[type="file"]').set_input_files(str(photo))
        expect(page.locator("h3", has_text=expected)).to_be_visible()
        settle(page)
        page.screenshot(path=ARTIFACTS / "home-own-model.png", full_page=True)
        browser.close()
