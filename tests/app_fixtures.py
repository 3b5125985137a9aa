"""Helpers for the app tests: point the pages at test data, run a page, read what a user would see."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from fixtures import draw
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
PAGES = {
    "home": None,
    "browse": "pages/1_Browse_dataset.py",
    "logs": "pages/2_Training_logs.py",
    "finetune": "pages/3_Fine_tune.py",
}


def point_app(monkeypatch, tmp_path: Path, checkpoint: Path | None = None, coco: Path | None = None,
              runs: Path | None = None, cache: Path | None = None, sample: bool = False) -> Path:  # fmt: skip
    """Set the environment the pages read; a missing checkpoint or COCO root points at nothing, and so does the
    embedded sample unless `sample`. Returns runs."""
    runs = runs or tmp_path / "runs"
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(checkpoint or tmp_path / "no-model" / "default.pt"))
    monkeypatch.setenv("CAPTIONING_RUNS_DIR", str(runs))
    monkeypatch.setenv("COCO_ROOT", str(coco or tmp_path / "no-coco"))
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(tmp_path / "no-data"))  # no other root than COCO_ROOT
    if sample:
        monkeypatch.delenv("CAPTIONING_SAMPLE_DIR", raising=False)
    else:
        monkeypatch.setenv("CAPTIONING_SAMPLE_DIR", str(tmp_path / "no-sample"))
    if cache is not None:
        monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(cache))
    return runs


def open_page(name: str, timeout: float = 60) -> AppTest:
    """Run a page the way `streamlit run Home.py` serves it (the main script's folder on sys.path)."""
    at = AppTest.from_file(str(REPO / "Home.py"), default_timeout=timeout)
    if PAGES[name]:
        at.switch_page(PAGES[name])
    return at.run()


def nodes(at: AppTest) -> list:
    """Every element on the page (main area and sidebar), depth first."""
    out, todo = [], [at._tree]
    while todo:
        node = todo.pop(0)
        children = list(getattr(node, "children", {}).values())
        out += children
        todo = children + todo
    return out


def of_type(at: AppTest, kind: str) -> list:
    return [n for n in nodes(at) if n.type == kind]


def text(at: AppTest) -> str:
    """All the text a user could read: headings, markdown, alerts, captions, metrics, HTML and widget labels."""
    parts = []
    for node in nodes(at):
        for attr in ("label", "value", "body"):
            try:
                value = getattr(node, attr)
            except Exception:  # some elements have no such property
                continue
            if isinstance(value, str):
                parts.append(value)
        if node.type == "html":
            parts.append(node.proto.body)
    return "\n".join(parts)


def chart_specs(at: AppTest) -> list[dict]:
    """The Vega-Lite specs of the altair charts on the page."""
    return [json.loads(n.proto.spec) for n in of_type(at, "vega_lite_chart")]


def chart_data(node) -> list:
    """The rows behind an altair chart, as DataFrames (one per dataset)."""
    import pyarrow as pa

    return [pa.ipc.open_stream(d.data.data).read_pandas() for d in node.proto.datasets]


def image_bytes(colour: str = "red", shape: str = "circle", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    draw(colour, shape).save(buf, fmt)
    return buf.getvalue()


def fake_python(folder: Path, script: str) -> str:
    """An executable stand-in for `python` that runs `script` (a fake trainer) whatever it is asked to run."""
    path = folder / "fake-python"
    path.write_text(script)
    path.chmod(0o755)
    return str(path)


def wait_for(manager, done, timeout: float = 20.0):
    """The manager's status once `done(status)` holds; AssertionError after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = manager.status()
        if done(status):
            return status
        time.sleep(0.05)
    status = manager.status()
    raise AssertionError(f"not there after {timeout} s: {status}; log:\n{getattr(status, 'log_tail', '')}")
