"""Every page driven headless with hostile and malformed input: no exception, a clear message, no server file
content, no markup smuggled into the page, and no view stale after its model file changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from adversarial import (
    BAD_IDS,
    BAD_METRICS_LINES,
    IMAGES,
    MARKUP_TEXTS,
    QUERY_STRINGS,
    SEED_LOGS,
    good_metrics_lines,
    live_markup,
)
from app_fixtures import chart_specs, image_bytes, nodes, of_type, open_page, point_app, text

from app import procs
from app.jobs import JobManager
from captioning.data import CocoSplit
from captioning.rundir import read_metrics

PASSWD = "root:x:0:0"


def _clean(at) -> str:
    """The page's text, after checking that nothing raised and no server file leaked into it."""
    assert not at.exception, [e.value for e in at.exception]
    shown = text(at)
    assert PASSWD not in shown and "Traceback" not in shown
    return shown


def test_home_captions_the_good_uploads_beside_hostile_ones(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    files = [(name, data, "image/png") for name, (data, _) in IMAGES.items()] + [
        ("good.png", image_bytes(), "image/png")
    ]
    at.file_uploader[0].set_value(files).run()
    shown = _clean(at)
    refused = [name for name, (_, ok) in IMAGES.items() if not ok]
    assert len(at.error) == len(refused) and all(any(e.value.startswith(n) for e in at.error) for n in refused)
    assert shown.count("### ") >= len(IMAGES) - len(refused) + 1  # a caption heading for each readable image
    memo = at.session_state["caption_memo"]
    assert all(r.image is None or max(r.image.size) <= 1024 for r in memo.values())  # thumbnails, not decodes


def test_home_shows_a_new_model_written_over_the_old_file(tiny_checkpoint, tiny_attention_checkpoint, monkeypatch,
                                                          tmp_path):  # fmt: skip
    model = tmp_path / "model" / "default.pt"
    model.parent.mkdir()
    shutil.copy(tiny_checkpoint, model)
    point_app(monkeypatch, tmp_path, checkpoint=model)
    at = open_page("home")
    at.file_uploader[0].set_value(("red.png", image_bytes(), "image/png")).run()
    assert "showtell decoder" in _clean(at)
    tabs_before = len(at.tabs)
    shutil.copy(tiny_attention_checkpoint, model)  # retrained in place: same path, new file
    os.utime(model, ns=(time.time_ns(), time.time_ns() + 10**9))
    at.run()
    assert "attention decoder" in _clean(at) and len(at.tabs) > tabs_before  # captioned again: an Attention tab


@pytest.mark.parametrize("raw", QUERY_STRINGS)
def test_browse_survives_any_image_link(raw, tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    at = open_page("browse")
    at.query_params["image"] = raw
    at.run()
    _clean(at)
    for warning in at.warning:
        assert not live_markup(warning.value) and "<script>" not in warning.value  # shown as text, not markup


def test_browse_reads_a_dataset_with_malformed_records(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    ann = root / "annotations" / "captions_val.json"
    data = json.loads(ann.read_text())
    data["images"] += [{"id": 900}, {"id": 901, "file_name": "/etc/passwd"}, {"id": "x", "file_name": "a.jpg"}]
    data["annotations"] += [{"id": 9000, "image_id": 1, "caption": None}, {"id": 9001, "image_id": [2]}]
    ann.write_text(json.dumps(data))
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=root)
    shown = _clean(open_page("browse"))
    assert f"of {len(CocoSplit.load(tiny_coco, 'val'))} images in val" in shown


def test_browse_with_an_unreadable_annotations_file_says_so(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    (root / "annotations" / "captions_val.json").write_text('{"images": [1, 2')
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=root)
    at = open_page("browse")
    _clean(at)
    assert any("is not a COCO captions file" in e.value for e in at.error)


def test_no_page_takes_a_server_path(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    for page in ("browse", "finetune"):
        at = open_page(page)
        labels = [t.label.lower() for t in at.text_input]
        assert not [label for label in labels if "root" in label or "file" in label or "path" in label], labels


def _launch(at, ids: tuple[str, bytes] | None, name: str = "from-page"):
    at.text_input(key="run_name").set_value(name)
    if ids is not None:
        next(u for u in at.file_uploader if u.label.startswith("Image ids")).set_value((*ids, "text/plain"))
    next(n for n in at.number_input if n.label == "How many").set_value(2)
    next(b for b in at.button if b.label.startswith("Fine-tune on")).click()
    return at.run()


@pytest.mark.slow
def test_finetune_refuses_bad_ids_uploads_and_keeps_good_ones_in_the_run(tiny_checkpoint, tiny_coco, monkeypatch,
                                                                         tmp_path):  # fmt: skip
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    at = open_page("finetune")
    for name, data in {**BAD_IDS, "passwd.txt": open("/etc/passwd", "rb").read(), "unknown": b"123456"}.items():
        _launch(at, (name, data))
        _clean(at)
        assert at.error and at.error[0].value.startswith("Could not start"), name
    assert not (runs / "from-page").exists() and JobManager(runs).current() is None
    ids = CocoSplit.load(tiny_coco, "train").ids[:3]
    at = open_page("finetune")
    _launch(at, ("ids.json", json.dumps(ids).encode()))
    _clean(at)
    manager = JobManager(runs)
    job = manager.current()
    written = runs / "from-page" / "train_ids.txt"
    assert job is not None and str(written) in job.command and written.read_text().split() == [str(i) for i in ids]
    deadline = time.time() + 240
    while manager.status().running and time.time() < deadline:
        time.sleep(0.5)
    status = manager.status()
    assert status.state == "finished", status.log_tail
    start = next(r for r in read_metrics(runs / "from-page" / "metrics.jsonl") if r.get("event") == "start")
    assert start["images"] == 3  # it trained on the uploaded ids only


def test_logs_plot_the_good_records_of_malformed_logs(monkeypatch, tmp_path):
    runs = point_app(monkeypatch, tmp_path)
    (runs / "damaged").mkdir(parents=True)
    good = good_metrics_lines()
    (runs / "damaged" / "metrics.jsonl").write_text("\n".join(good[:2] + BAD_METRICS_LINES + good[2:]) + "\n")
    at = open_page("logs")
    shown = _clean(at)
    assert f"{len(BAD_METRICS_LINES)} malformed line(s) skipped" in shown
    assert {spec["title"] for spec in chart_specs(at)} >= {"Training loss", "Validation CIDEr"}  # the good ones
    for name, log in SEED_LOGS.items():
        at.file_uploader[0].set_value((name, log.encode(), "text/plain")).run()
        assert "1 malformed line(s) skipped" in _clean(at), name
    at.file_uploader[0].set_value(("binary.log", bytes(range(256)) * 100, "text/plain")).run()
    assert "has no training lines" in _clean(at)


def test_a_stale_job_file_naming_a_stranger_offers_a_new_run_and_cancel_spares_it(tiny_checkpoint, tiny_coco,
                                                                                   monkeypatch, tmp_path):  # fmt: skip
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    stranger = subprocess.Popen(["sleep", "60"])  # took the pid of a job from before a reboot, say
    try:
        real = procs.identify(stranger.pid)
        base = {"pid": stranger.pid, "name": "old", "out": str(runs / "old"), "started": "2026-01-01T00:00:00",
                "command": ["python", "-m", "captioning", "train", "--coco-root", str(tiny_coco)]}  # fmt: skip
        for variant in ({}, {"start_time": real.start_time + 1, "boot_id": real.boot_id},
                        {"start_time": real.start_time, "boot_id": "another-boot"}):  # fmt: skip
            runs.mkdir(parents=True, exist_ok=True)
            (runs / ".active_job.json").write_text(json.dumps({**base, **variant}))
            at = open_page("finetune")
            shown = _clean(at)
            assert any(b.label.startswith("Fine-tune on") for b in at.button), shown  # the form, not "training"
            assert not JobManager(runs).cancel()
            assert stranger.poll() is None  # never signalled
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


# sessions, split images and text from files (#22) ------------------------------------------------------------------


def _rss_mb() -> float:
    """This process's resident memory, once freed memory is handed back (the C heap keeps it otherwise)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) / 1024


def test_home_captions_the_first_files_of_a_large_upload_and_keeps_small_copies(tiny_checkpoint, monkeypatch,
                                                                                tmp_path):  # fmt: skip
    from io import BytesIO

    from PIL import Image

    from app.uploads import MAX_FILES

    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    files = []
    for k in range(30):  # 2 Mpixels each, in small files: a 1024-px copy of each was kept
        buf = BytesIO()
        Image.merge("RGB", [Image.linear_gradient("L").resize((1600, 1200))] * 2 + [Image.new("L", (1600, 1200), 8 * k)]
                    ).save(buf, "PNG")  # fmt: skip
        files.append((f"photo-{k}.png", buf.getvalue(), "image/png"))
    at.file_uploader[0].set_value(files[:1]).run()  # the model's first caption allocates what every later one reuses
    before = _rss_mb()
    at.file_uploader[0].set_value(files).run()
    shown = _clean(at)
    kept = _rss_mb() - before  # before #22: 81 MB here (2-Mpixel photos); 9 MB after
    assert f"Only the first {MAX_FILES} of 30 images are captioned" in shown
    headings = [m.value for m in at.markdown if m.value.startswith("### ")]
    assert len(headings) == MAX_FILES and not at.error  # the first 20 caption; the rest are named, not lost
    memo = at.session_state["caption_memo"]
    assert len(memo) == MAX_FILES and sum(len(r.thumbnail) for r in memo.values()) < MAX_FILES * 150_000
    assert not [k for k in at.session_state if isinstance(at.session_state[k], Image.Image)]
    assert kept < 40, f"the session kept {kept:.0f} MB"


def _broken_split(tiny_coco, tmp_path):
    """A copy of tiny_coco whose first val image is text and second a costly JPEG; (root, bad ids, good id)."""
    from adversarial import rescanned_jpeg

    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    split = CocoSplit.load(root, "val")
    (text_id, costly_id), good = split.ids[:2], split.ids[2]
    split.files[text_id].write_bytes(b"<html>not an image</html>" * 20)
    split.files[costly_id].write_bytes(rescanned_jpeg(1000, 500))
    return root, {text_id: "not an image", costly_id: "JPEG scans"}, good


def test_browse_shows_split_files_it_cannot_read_as_placeholders(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    root, bad, good = _broken_split(tiny_coco, tmp_path)
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=root)
    at = open_page("browse")
    _clean(at)  # before #22: the first tile raised and the grid was gone
    captions = [img.caption for node in of_type(at, "image") for img in node.proto.imgs]
    assert len(captions) == 8 and all(any(words in c for c in captions) for words in bad.values()), captions
    next(b for b in at.button if b.label == "Score this page").click().run()
    assert "6 scored" in _clean(at)  # the others of the split still caption
    for image_id, words in {**bad, good: None}.items():
        at.query_params["image"] = str(image_id)
        at.run()
        shown = _clean(at) + "\n".join(_markdown_shown(at))  # with the image's caption
        if words:
            assert words in shown and "could not be read" in shown, shown
        else:
            assert "Model caption" in shown and len(of_type(at, "image")) == 1


def _markdown_shown(at) -> list[str]:
    """Every string the page renders as markdown: text, alerts, captions, labels and image captions (not st.html)."""
    out = []
    for node in nodes(at):
        if node.type == "image":
            out += [img.caption for img in node.proto.imgs]
        elif node.type != "html":
            out += [v for v in (getattr(node, a, None) for a in ("value", "body", "label")) if isinstance(v, str)][:1]
    return out


def test_browse_shows_captions_from_the_file_as_text(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    ann = root / "annotations" / "captions_val.json"
    data = json.loads(ann.read_text())
    first = min(im["id"] for im in data["images"])
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first] + [
        {"id": 90_000 + k, "image_id": first, "caption": c} for k, c in enumerate(MARKUP_TEXTS.values())
    ]
    ann.write_text(json.dumps(data))
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=root)
    at = open_page("browse")
    shown = _markdown_shown(at)
    assert any("Sign in" in s for s in shown)  # the tile shows the first reference...
    assert [(s, live_markup(s)) for s in shown if live_markup(s)] == []  # ...as text: before #22, a live link
    at.query_params["image"] = str(first)
    at.run()
    shown = _markdown_shown(at)
    assert "\n".join(shown).count("evil") >= 6 and [(s, live_markup(s)) for s in shown if live_markup(s)] == []


def test_home_shows_a_vocabulary_file_names_and_references_with_markup_as_text(tiny_checkpoint, tiny_coco,
                                                                               monkeypatch, tmp_path):  # fmt: skip
    from adversarial import checkpoint_with_words

    words = dict(zip(["red", "blue", "circle", "square", "white", "on", "background", "a"], MARKUP_TEXTS.values()))
    checkpoint_with_words(tiny_checkpoint, tmp_path / "words.pt", words)
    sample = tmp_path / "sample"
    shutil.copytree(tiny_coco, sample)
    ann = sample / "annotations" / "captions_val.json"
    data = json.loads(ann.read_text())
    data["annotations"] += [{"id": 90_000 + k, "image_id": a["image_id"], "caption": c}
                            for k, (a, c) in enumerate(zip(data["annotations"], MARKUP_TEXTS.values()))]  # fmt: skip
    ann.write_text(json.dumps(data))
    point_app(monkeypatch, tmp_path, checkpoint=tmp_path / "words.pt")
    monkeypatch.setenv("CAPTIONING_SAMPLE_DIR", str(sample))
    at = open_page("home")
    uploads = [(MARKUP_TEXTS["link"] + ".png", image_bytes(), "image/png"),
               ("www.evil.example.png", image_bytes("blue", "square"), "image/png"),
               (MARKUP_TEXTS["emphasis"] + ".jpg", b"not an image", "image/jpeg")]  # fmt: skip
    at.file_uploader[0].set_value(uploads).run()
    at.button[0].click().run()  # the first example, with its references
    _clean(at)
    shown = _markdown_shown(at)
    assert sum(s.startswith("### ") for s in shown) == 3 and len(at.error) == 1  # two uploads and the example
    assert "\n".join(shown).count("evil") >= 6 and [(s, live_markup(s)) for s in shown if live_markup(s)] == []
    chips = [n.proto.body for n in of_type(at, "html")]
    assert chips and not [c for c in chips if "<img" in c or "<a " in c]  # words escaped in the chips' HTML
