"""A fake COCO mirror on 127.0.0.1 for the download tests: the annotations zip and the images, with failures on
request."""

from __future__ import annotations

import io
import json
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from captioning.download import ANNOTATIONS_ZIP, download_coco

IMAGE_IDS = [42, 7, 19, 3, 88]  # unsorted on purpose: limit takes the lowest ids
ZIP_PATH = "/" + ANNOTATIONS_ZIP
MEMBER = "annotations/captions_val2017.json"


def _file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def _image_path(image_id: int) -> str:
    return f"/val2017/{_file_name(image_id)}"


@dataclass
class Mirror:
    """A fake images.cocodataset.org: files under root, plus knobs to misbehave."""

    root: Path
    url: str = ""
    # (path, Range header) of every GET, in order
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    # path -> how many 500s to answer before serving it
    fail: dict[str, int] = field(default_factory=dict)
    # path -> bytes to send before hanging up (once)
    cut: dict[str, int] = field(default_factory=dict)
    # False: ignore Range and answer 200 with the whole file
    ranges: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def data(self, path: str) -> bytes:
        return (self.root / path.lstrip("/")).read_bytes()

    def gets(self, path: str) -> list[str | None]:
        """Range headers of the requests for path, in order."""
        return [rng for p, rng in self.requests if p == path]

    def image_gets(self) -> list[str]:
        return sorted(p for p, _ in self.requests if p.startswith("/val2017/"))


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        mirror: Mirror = self.server.mirror
        rng = self.headers.get("Range")
        with mirror.lock:
            mirror.requests.append((self.path, rng))
            failing = mirror.fail.get(self.path, 0)
            if failing:
                mirror.fail[self.path] = failing - 1
            cut = mirror.cut.pop(self.path, None)
        if failing:
            self.send_error(500)
            return
        file = mirror.root / self.path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng and mirror.ranges else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.close_connection = True  # hang up with the body unfinished
        else:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # keep pytest output clean


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (seed * 37 % 256, seed * 91 % 256, 128)).save(buf, "JPEG")
    return buf.getvalue()


def _captions_json() -> dict:
    images = [
        {
            "id": i,
            "file_name": _file_name(i),
            "coco_url": f"http://images.cocodataset.org/val2017/{_file_name(i)}",
            "width": 32,
            "height": 24,
        }
        for i in IMAGE_IDS
    ]
    annotations = [
        {"image_id": i, "id": i * 10 + k, "caption": f"caption {k} of image {i}"} for i in IMAGE_IDS for k in range(5)
    ]
    info = {"description": "COCO 2017 Dataset"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations}


def _annotations_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:  # deflated, as COCO's is
        archive.writestr(MEMBER, json.dumps(_captions_json()))
        archive.writestr("annotations/instances_val2017.json", "{}")  # ignored
    return buf.getvalue()


def _make_mirror(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / ANNOTATIONS_ZIP).write_bytes(_annotations_zip())
    (root / "val2017").mkdir()
    for i in IMAGE_IDS:
        (root / "val2017" / _file_name(i)).write_bytes(_jpeg(i))


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A proxy from the environment must not intercept 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")
    state = Mirror(root=tmp_path / "mirror")
    _make_mirror(state.root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.mirror = state
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _download(mirror: Mirror, dest: Path, **kwargs):
    kwargs = {"base_url": mirror.url, "timeout": 5, "backoff": 0, **kwargs}
    return download_coco(dest, "val2017", progress=False, **kwargs)


def _dead_url() -> str:
    """A local URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
