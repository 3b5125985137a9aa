"""`captioning serve` (captioning/serve.py): a real server on a free loopback port, driven by an HTTP client."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from captioning.config import DecodeConfig
from captioning.serve import MAX_FILE_BYTES, Batcher

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "captioning", "serve", "--port", str(port), "--checkpoint",
                             str(tiny_checkpoint), "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail(proc.communicate()[0][-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_good_and_one_bad_image_in_one_request(server, tiny_coco):
    good = sorted((tiny_coco / "val").iterdir())[0]
    files = [("image", ("good.jpg", good.read_bytes(), "image/jpeg")),
             ("image", ("bad.jpg", b"\xff\xd8\xff not a jpeg", "image/jpeg"))]  # fmt: skip
    icon = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(icon, "PNG")
    files.append(("image", ("icon.png", icon.getvalue(), "image/png")))
    reply = httpx.post(f"{server}/caption", files=files, data={"details": "true"}, timeout=60)
    assert reply.status_code == 200
    first, second, third = reply.json()
    assert isinstance(first["unsure"], str) and isinstance(first["doubts"], list)
    assert third["file"] == "icon.png" and "tiny (16x16 pixels)" in third["unsure"]
    assert first["file"] == "good.jpg" and len(first["generated_text"].split()) >= 3
    assert first["words"] and len(first["alternatives"]) == DecodeConfig().beam_size
    assert "named" in first and "required" in first  # null, or what naming and constrained decoding did
    assert second["file"] == "bad.jpg" and second["status"] == 400 and "\n" not in second["error"]
    only_bad = httpx.post(f"{server}/caption", files=files[1:2], timeout=60)
    assert only_bad.status_code == 400 and "generated_text" not in only_bad.json()[0]


def test_too_large_uploads_and_bad_options_are_4xx_with_one_line(server):
    big = [("image", ("big.jpg", b"\xff" * (MAX_FILE_BYTES + 1), "image/jpeg"))]
    reply = httpx.post(f"{server}/caption", files=big, timeout=60)
    assert reply.status_code == 413 and "larger than 25 MB" in reply.json()[0]["error"]
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:  # says 10 GB are coming: refused at once
        raw.sendall(b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 10000000000\r\n\r\n--b\r\n")  # fmt: skip
        assert raw.recv(100).startswith(b"HTTP/1.1 413")
    image = [("image", ("x.jpg", b"123", "image/jpeg"))]
    assert httpx.post(f"{server}/caption", files=image, data={"beam_size": "500"}, timeout=60).status_code == 422
    assert httpx.post(f"{server}/caption", files=image, data={"method": "magic"}, timeout=60).status_code == 422
    refused = httpx.post(f"{server}/caption", files=image, data={"constrain": "2"}, timeout=60)
    assert refused.status_code == 422 and "constrain is a probability threshold" in refused.text


def test_health_models_and_docs(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert httpx.get(f"{server}/models").json()[0]["vocabulary"] > 4
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/caption" in httpx.get(f"{server}/openapi.json").json()["paths"]


def test_images_that_arrive_together_are_batched(tiny_checkpoint):
    from captioning.inference import Captioner

    batcher = Batcher(Captioner.from_checkpoint(tiny_checkpoint, device="cpu"), max_batch=8, wait_s=0.2)
    pixels = torch.rand(3, 224, 224)

    async def together():
        return await asyncio.gather(*(batcher.caption(pixels, DecodeConfig()) for _ in range(5)))

    caps = asyncio.run(together())
    assert batcher.batches == [5] and len({c.text for c in caps}) == 1
