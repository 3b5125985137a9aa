"""Hostile and malformed files through the library and the CLI: a clear message each, bounded memory, no
server file read or shown, and the good inputs beside them still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from adversarial import (
    BAD_IDS,
    BAD_METRICS_LINES,
    BROKEN_ANNOTATIONS,
    IMAGES,
    SEED_LOGS,
    annotation_cases,
    good_metrics_lines,
)
from app_fixtures import image_bytes
from conftest import REPO

from app import catalog
from app.seedlog import parse_seed_log
from app.uploads import THUMBNAIL, caption_files
from captioning.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from captioning.config import DecodeConfig
from captioning.data import (
    CocoSplit,
    DatasetError,
    ImageLoadError,
    SkippedImagesWarning,
    load_image,
    parse_ids,
    read_ids_file,
)
from captioning.inference import Captioner
from captioning.rundir import read_log

PASSWD = "root:x:0:0"  # how /etc/passwd begins: it must never reach a message


@pytest.fixture(scope="module")
def captioner(tiny_checkpoint) -> Captioner:
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


def test_each_hostile_image_gets_its_own_message_and_the_others_still_caption(captioner):
    files = [(name, data) for name, (data, _) in IMAGES.items()] + [("good.png", image_bytes())]
    results = caption_files(captioner, files, DecodeConfig(method="greedy"))
    assert [r.name for r in results] == [name for name, _ in files]
    for r in results:
        if IMAGES.get(r.name, (b"", True))[1]:
            assert r.caption is not None and r.caption.words and r.error is None, (r.name, r.error)
            assert max(r.image.size) <= THUMBNAIL  # what the session keeps is a display copy
        else:
            assert r.caption is None and r.image is None and r.error.startswith(r.name), r.name
    errors = {r.name: r.error for r in results}
    assert "too large to decode safely" in errors["bomb.png"]
    assert "not an image this app can read" in errors["eps-renamed.jpg"]  # never handed to Ghostscript
    assert "empty (0 bytes)" in errors["empty.jpg"] and "corrupt or truncated" in errors["truncated.jpg"]


def test_special_files_are_refused_without_being_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # reading it would block for ever
    for path, message in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                          (tmp_path, "not a regular file"), (tmp_path / "none.jpg", "does not exist")):  # fmt: skip
        with pytest.raises(ImageLoadError, match=message):
            load_image(path)


def _caption_rss(checkpoint, image) -> tuple[int, str]:
    """(peak RSS in MB, output) of `python -m captioning caption IMAGE` in a fresh process."""
    code = ("import resource, sys\nfrom captioning.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)\n"
            "sys.exit(rc)")  # fmt: skip
    args = [sys.executable, "-c", code, "caption", str(image), "--checkpoint", str(checkpoint), "--device", "cpu"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rss = int(done.stderr.split("MAXRSS")[-1])
    return rss, done.stdout


@pytest.mark.slow
def test_captioning_a_strip_costs_no_more_memory_than_a_photo(tiny_checkpoint, tmp_path):
    (tmp_path / "photo.png").write_bytes(image_bytes())
    baseline, _ = _caption_rss(tiny_checkpoint, tmp_path / "photo.png")
    for name in ("wide-strip.png", "tall-strip.png", "very-wide-strip.png"):
        (tmp_path / name).write_bytes(IMAGES[name][0])
        rss, out = _caption_rss(tiny_checkpoint, tmp_path / name)
        assert rss < baseline + 200, f"{name}: {rss} MB against {baseline} MB for a photo"  # was 4.8 GB
        assert len(out.split()) >= 2  # it was captioned


def test_ids_sources_that_are_not_ids_files_give_a_clear_error(tmp_path):
    for name, data in BAD_IDS.items():
        with pytest.raises(DatasetError, match="ids"):
            parse_ids(data, name)
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(20_000_000)  # sparse: no time or disk to make
    cases = {"/etc/passwd": "image ids", "/dev/zero": "not a regular file", str(fifo): "not a regular file",
             str(big): "too large", str(tmp_path / "none.txt"): "cannot read"}  # fmt: skip
    for path, message in cases.items():
        done = threading.Event()
        errors: list[Exception] = []

        def read(path=path, errors=errors, done=done):
            try:
                read_ids_file(path)
            except DatasetError as exc:
                errors.append(exc)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(5), f"reading {path} blocked"
        assert errors and message in str(errors[0]) and PASSWD not in str(errors[0]), (path, errors)


@pytest.mark.parametrize("ids", ["/etc/passwd", "/dev/zero"])
def test_the_cli_names_a_bad_ids_file_in_one_line(ids, tiny_coco, tmp_path):
    command = [sys.executable, "-m", "captioning", "train", "--coco-root", str(tiny_coco), "--out", str(tmp_path / "r"),
               "--train-ids", ids]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert PASSWD not in done.stderr and "Traceback" not in done.stderr


def test_malformed_annotation_records_are_skipped_and_counted(tiny_coco, tmp_path):
    name = sorted(p.name for p in (tiny_coco / "val").iterdir())[0]
    for case, data in annotation_cases(name).items():
        root = tmp_path / case
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "captions_val.json").write_text(json.dumps(data))
        (root / "val").mkdir()
        (root / "val" / name).write_bytes((tiny_coco / "val" / name).read_bytes())
        with pytest.warns(SkippedImagesWarning, match="skipped 1 malformed image record|malformed or orphan"):
            split = CocoSplit.load(root, "val")
        assert split.ids == [1] and split.captions[1] == ["a red circle on white."], case
        assert all(p.parent == root / "val" for p in split.files.values())  # nothing outside the image folder
    for case, text in BROKEN_ANNOTATIONS.items():
        root = tmp_path / f"broken-{case}"
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "captions_val.json").write_text(text)
        with pytest.raises(DatasetError, match="not a COCO captions file"):
            CocoSplit.load(root, "val")


def _mutated(checkpoint, tmp_path, name, change) -> str:
    ckpt = torch.load(checkpoint, weights_only=True)
    change(ckpt)
    path = tmp_path / f"{name}.pt"
    torch.save(ckpt, path)
    return path


CHECKPOINT_MUTATIONS = {
    "vocab-of-numbers": lambda c: c["vocab"].update(itos=list(range(len(c["vocab"]["itos"])))),
    "hidden-size-text": lambda c: c["model_config"].update(hidden_size="big"),
    "dropout-list": lambda c: c["model_config"].update(dropout=[0.5]),
    "metrics-list": lambda c: c.update(metrics=[1, 2]),
    "decoder-state-list": lambda c: c.update(decoder_state=[1, 2]),
    "model-config-list": lambda c: c.update(model_config=["showtell"]),
    "wrong-shapes": lambda c: c["decoder_state"].update({k: torch.zeros(3) for k in list(c["decoder_state"])[:2]}),
}


def test_checkpoints_with_fields_of_the_wrong_type_give_a_clear_error(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_RUNS_DIR", str(tmp_path / "runs"))
    for name, change in CHECKPOINT_MUTATIONS.items():
        path = _mutated(tiny_checkpoint, tmp_path, name, change)
        with pytest.raises(CheckpointError):
            model_from_checkpoint(load_checkpoint(path), source=str(path))
        monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(path))
        catalog.list_checkpoints()  # lists it (perhaps without a score) rather than raising


def test_malformed_logs_keep_their_good_records_and_count_the_rest(tmp_path):
    for name, text in SEED_LOGS.items():
        log = parse_seed_log(text)
        assert [r["step"] for r in log.records] == [200] and log.skipped == 1, name
    path = tmp_path / "metrics.jsonl"
    good = good_metrics_lines()
    path.write_text("\n".join(good[:3] + BAD_METRICS_LINES + good[3:]) + "\n")
    log = read_log(path)
    assert len(log.records) == len(good) and log.skipped == len(BAD_METRICS_LINES)


def test_warnings_of_skipped_records_do_not_show_file_contents(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "/etc/passwd"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "x"}],
    }
    (root / "annotations" / "captions_val.json").write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DatasetError, match="no images"):
        warnings.simplefilter("always")
        CocoSplit.load(root, "val")
    assert caught and all(PASSWD not in str(w.message) for w in caught)


# crafted checkpoints (#22) ------------------------------------------------------------------------------------------

PEAK_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))  # a regression fails here, not the machine
from pathlib import Path
from app import catalog
from captioning.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
def kb(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])
for mode, path in json.loads(sys.argv[1]):
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current size
    before = kb("VmRSS")
    try:
        if mode == "catalog":
            catalog.list_checkpoints(Path(path))
        else:
            model_from_checkpoint(load_checkpoint(path), source=path)  # as Captioner.from_checkpoint calls it
        message = "ok"
    except CheckpointError as exc:
        message = str(exc)
    print(json.dumps([path, message, (kb("VmHWM") - before) // 1024]), flush=True)
"""


def _peaks(loads: list[tuple[str, object]]) -> dict[str, tuple[str, int]]:
    """Each load in one fresh process, in order: {path: (message or "ok", MB its peak RSS grew by)}."""
    env = {**os.environ, "CAPTIONING_CHECKPOINT": "/nonexistent.pt"}  # the catalog lists the given runs only
    args = [sys.executable, "-c", PEAK_CHILD, json.dumps([[mode, str(path)] for mode, path in loads])]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {path: (message, mb) for path, message, mb in map(json.loads, done.stdout.splitlines())}


def test_crafted_checkpoints_are_refused_in_one_line_before_they_cost_memory(
    tiny_checkpoint, tiny_attention_checkpoint, tmp_path
):
    from adversarial import crafted_checkpoints

    cases = crafted_checkpoints(tiny_checkpoint, tiny_attention_checkpoint, tmp_path)
    peaks = _peaks([("model", path) for path, _ in cases.values()] + [("model", tiny_checkpoint)])
    assert peaks[str(tiny_checkpoint)][0] == "ok"  # a real model passes the same checks
    for name, (path, words) in cases.items():
        message, grew = peaks[str(path)]
        assert str(path) in message and words in message and "\n" not in message, (name, message)
        assert grew < 64, f"{name}: its refusal cost {grew} MB"  # before #22: 95 MB to 1.1 GB, two were loaded


def test_a_page_load_reads_no_checkpoint_weights(tiny_checkpoint, tmp_path):
    heavy = tmp_path / "heavy.pt"  # a 70 MB best.pt, in 3 runs
    torch.save({**torch.load(tiny_checkpoint, weights_only=True), "extra": torch.zeros(16 << 20)}, heavy)
    for i in range(3):
        (tmp_path / "runs" / f"run{i}").mkdir(parents=True)
        os.link(heavy, tmp_path / "runs" / f"run{i}" / "best.pt")
    [(message, grew)] = _peaks([("catalog", tmp_path / "runs")]).values()
    assert message == "ok" and grew < 32, grew  # before #22: each best.pt was loaded whole, 70+ MB


# images that cost far more than their size, and decodes across visitors (#22) -------------------------------------


def test_images_that_cost_far_more_than_their_size_are_refused_before_decoding(captioner, monkeypatch):
    from adversarial import COSTLY_IMAGES, rescanned_jpeg
    from PIL import Image

    from captioning import imagefile

    opened, steps = [], []  # a step: one pass of a walk's Python loop (a gap of stray bytes is one regex search)
    real_open, real_count = Image.open, imagefile._too_many
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    monkeypatch.setattr(imagefile, "_too_many", lambda n, what: steps.append(n) or real_count(n, what))
    progressive = rescanned_jpeg(1000, repeats=0)  # a progressive photo's 10 scans
    files = [(n, data) for n, (data, _) in COSTLY_IMAGES.items()] + [("good.png", image_bytes()),
                                                                      ("progressive.jpg", progressive)]  # fmt: skip
    results = caption_files(captioner, files, DecodeConfig(method="greedy"))
    for r in results[: len(COSTLY_IMAGES)]:
        assert r.caption is None and r.error.startswith(r.name) and COSTLY_IMAGES[r.name][1] in r.error, r.error
        assert "to decode safely" in r.error
    assert [r.error for r in results[len(COSTLY_IMAGES) :]] == [None, None]  # the others of the upload caption
    assert len(opened) == 2  # PIL never saw the costly ones: before, it decoded each for 0.1-5 s (hours at 25 MB)
    assert len(steps) <= len(files) * (imagefile.MAX_SEGMENTS + 1)  # each walk stopped at its bound


def test_only_the_first_frame_of_an_animation_or_page_is_read(monkeypatch):
    from adversarial import many_frames
    from PIL import GifImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

    later, decoded = [], []
    for plugin in (GifImagePlugin.GifImageFile, PngImagePlugin.PngImageFile, TiffImagePlugin.TiffImageFile):
        real = plugin._seek
        monkeypatch.setattr(plugin, "_seek", lambda self, frame, *a, real=real, **k: (frame and later.append(frame))
                            or real(self, frame, *a, **k))  # fmt: skip
    real_next = WebPImagePlugin.WebPImageFile._get_next
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_get_next", lambda self: decoded.append(1) or real_next(self))
    for fmt, data in many_frames(20_000).items():
        assert load_image(data, name=fmt).size == (8, 8), fmt
    assert later == [] and decoded == [1]  # no frame past the first was sought (counting TIFF pages took 3.3 s)


def _threads(target, args: list) -> list:
    results = [None] * len(args)

    def run(k: int) -> None:
        try:
            results[k] = target(*args[k])
        except Exception as exc:  # kept, to be asserted on
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_decodes_from_many_threads_stay_within_the_process_budget(monkeypatch):
    import time

    from adversarial import png_40mp

    from captioning import data
    from captioning.decodebudget import DECODE_PIXELS, DECODE_SLOTS, DECODES

    now, most = [0], [0]
    lock, real = threading.Lock(), data.to_rgb

    def counted(image):  # runs inside the decode, with the image in memory
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.2)  # long enough for every thread that may decode now to be decoding
        with lock:
            now[0] -= 1
        return real(image)

    monkeypatch.setattr(data, "to_rgb", counted)
    for size, files in (((4000, 4000), 6), ((1000, 1000), 8)):  # 16 Mpixels: 3 fit in 48; 1 Mpixel: 4 slots
        DECODES.reset_peaks()
        most[0] = 0
        image = png_40mp("L", *size)
        results = _threads(load_image, [(image, f"{k}.png") for k in range(files)])
        assert all(getattr(r, "size", None) == size for r in results), results  # every one decoded, in turn
        assert most[0] <= min(DECODE_SLOTS, DECODE_PIXELS // (size[0] * size[1])), most[0]  # before: all at once
        assert DECODES.peak_pixels <= DECODE_PIXELS and DECODES.peak_running == most[0]


def test_a_decode_with_no_room_says_the_server_is_busy_and_the_next_try_captions(captioner, monkeypatch):
    from captioning.decodebudget import DECODES

    monkeypatch.setattr(DECODES, "wait_s", 0.05)
    taken, release = threading.Event(), threading.Event()

    def occupy():
        with DECODES.hold(DECODES.pixels):  # someone else's 48 Mpixels
            taken.set()
            release.wait(60)

    other = threading.Thread(target=occupy)
    other.start()
    taken.wait(60)
    files = [("red.png", image_bytes()), ("blue.png", image_bytes("blue", "square"))]
    try:
        busy = caption_files(captioner, files, DecodeConfig(method="greedy"))
    finally:
        release.set()
        other.join()
    for r in busy:
        assert r.caption is None and r.error == (
            f"{r.name} was not decoded: the server is busy decoding other images; try again in a moment"
        )
    assert all(r.caption is not None for r in caption_files(captioner, files, DecodeConfig(method="greedy")))


DECODE_PEAKS = """
import json, sys, threading
sys.path.insert(0, "tests")
from adversarial import png_40mp
from captioning.data import load_image
def kb(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])
images = [png_40mp(mode) for mode in ("RGBA", "I;16", "RGBA", "I;16")]
grew = []
for batch in ([images[0]], [images[1]], images):  # each kind alone, then four visitors at once
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current size
    before, done = kb("VmRSS"), []
    threads = [threading.Thread(target=lambda d=d: done.append(load_image(d).size)) for d in batch]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grew.append([len(done), (kb("VmHWM") - before) // 1024])
print(json.dumps(grew))
"""


@pytest.mark.slow
def test_four_visitors_decoding_40_megapixels_cost_the_memory_of_one():
    done = subprocess.run([sys.executable, "-c", DECODE_PEAKS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (_, rgba), (_, grey16), (four, four_mb) = json.loads(done.stdout)
    one_mb = max(rgba, grey16)  # the costlier kind, alone
    assert four == 4  # all decoded: they waited their turn
    assert one_mb > 300 and four_mb < one_mb * 1.25 + 50, (rgba, grey16, four_mb)  # before #22: +3 GB for four


def test_text_from_files_reaches_markdown_and_html_as_text():
    from adversarial import MARKUP_TEXTS, live_markup

    from app.render import plain, tile_text, word_confidence_html

    for name, text in MARKUP_TEXTS.items():
        for shown in (plain(text, 200), tile_text(7, [text], None), tile_text(7, [], {"caption": text, "CIDEr": 1.0,
                                                                                    "BLEU-4": 0.5})):  # fmt: skip
            assert live_markup(shown) == [], (name, shown, live_markup(shown))
        chips = word_confidence_html(text.split(), [0.5] * len(text.split()))
        assert "<img" not in chips and "<a " not in chips and "\n#" not in chips, chips
    assert plain("a red circle on a white background.", 200) == "a red circle on a white background."
