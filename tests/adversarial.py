"""A corpus of hostile and malformed inputs, made by the tests: what a careless user or an attacker sends."""

from __future__ import annotations

import io
import json
import struct
import zlib

from PIL import Image


def png(width: int, height: int, colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 60_000) -> bytes:
    """A few hundred bytes of PNG whose header claims side x side pixels (3.6 gigapixels at 60,000)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    rows = zlib.compress(b"\0" * (1 + side // 8) * 64, 9)  # 64 rows of zeros; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def eps() -> bytes:
    """Encapsulated PostScript: PIL would run Ghostscript on it, where that is installed."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def animated_gif(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (40, 30), (60 * k, 100, 200)) for k in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def animated_png(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (40, 30), (200, 60 * k, 100)) for k in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "PNG", save_all=True, append_images=images[1:], duration=100)
    return buf.getvalue()


def sixteen_bit_png() -> bytes:
    buf = io.BytesIO()
    Image.new("I;16", (64, 48), 40_000).save(buf, "PNG")
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()[:400]


# name -> bytes, and whether a captioner should caption it (True) or refuse it with a message (False)
IMAGES: dict[str, tuple[bytes, bool]] = {
    "wide-strip.png": (png(20_000, 1), True),
    "tall-strip.png": (png(1, 20_000), True),
    "very-wide-strip.png": (png(200_000, 2), True),
    "bomb.png": (png_bomb(), False),
    "eps-renamed.jpg": (eps(), False),
    "animated.gif": (animated_gif(), True),
    "animated.png": (animated_png(), True),
    "sixteen-bit.png": (sixteen_bit_png(), True),
    "empty.jpg": (b"", False),
    "truncated.jpg": (truncated_jpeg(), False),
    "text.png": (b"this is not an image at all\n" * 10, False),
    "html.jpg": (b"<html><script>alert(1)</script></html>", False),
}

# query-string values for Browse's ?image=
QUERY_STRINGS = ["\u00b2", "\uff11\uff12", "[Sign in](https://example.com/login)", "<script>alert(1)</script>",
                 "-1", "1e5", "9" * 200, "", " 25", "25abc", "\u202e52", "**bold** _x_"]  # fmt: skip

# run names typed into the Fine-tune form: what sanitize_name keeps, or None when nothing usable is left
RUN_NAMES = {"../../etc/passwd": "etc-passwd", "\u540d\u524d": None, "\U0001f4a5run": "run", "a" * 500: "a" * 64,
             "<b>bold</b>": "b-bold-b", "run name\nwith newline": "run-name-with-newline"}  # fmt: skip

# seed-style text logs (the Training logs upload); each has one good line among bad ones
SEED_LOGS = {
    "dash.log": "Epoch [1/3], Step [100/3236], Loss: -\nEpoch [1/3], Step [200/3236], Loss: 2.5000\n",
    "two-dots.log": "Epoch [1/3], Step [100/3236], Loss: 2.98.12\nEpoch [1/3], Step [200/3236], Loss: 2.5000\n",
    "huge-ppl.log": "Epoch [1/3], Step [100/3236], Loss: 2.9, Perplexity: 1e999999\n"
    "Epoch [1/3], Step [200/3236], Loss: 2.5000\n",
}

# lines of a run's metrics.jsonl that a reader must skip (the good records around them still count)
BAD_METRICS_LINES = [
    json.dumps({"kind": "epoch", "step": 10, "CIDEr": 0.5}),  # no epoch
    json.dumps({"kind": "epoch", "step": 10, "epoch": 1, "CIDEr": None}),
    json.dumps({"kind": "epoch", "step": 10, "epoch": 1, "CIDEr": "high"}),
    json.dumps({"kind": "step", "step": "ten", "loss": 1.0}),
    json.dumps({"kind": "step", "step": 11}),  # neither loss nor reward
    json.dumps({"kind": "event", "event": 5, "step": 3}),
    json.dumps(["not", "a", "record"]),
    '{"kind": "step", "step": 12, "loss": 1.0',  # half a line
    "\x00\xff garbage",
]


def good_metrics_lines() -> list[str]:
    return (
        [json.dumps({"kind": "event", "event": "start", "step": 0, "epoch": 0, "total_steps": 4})]
        + [
            json.dumps({"kind": "step", "step": s, "epoch": s / 4, "loss": 3.0 - s / 2, "perplexity": 10.0})
            for s in range(1, 5)
        ]
        + [json.dumps({"kind": "epoch", "step": 4, "epoch": 1, "BLEU-4": 0.1, "CIDEr": 0.3, "val_loss": 2.0})]
    )


def annotation_cases(file_name: str) -> dict[str, object]:
    """Captions files with malformed records beside one good image (`file_name`, id 1, one caption)."""
    good_image = {"id": 1, "file_name": file_name}
    good_caption = {"id": 1, "image_id": 1, "caption": "a red circle on white."}
    return {
        "no-file-name": {"images": [good_image, {"id": 2}], "annotations": [good_caption]},
        "null-caption": {"images": [good_image],
                         "annotations": [good_caption, {"id": 2, "image_id": 1, "caption": None}]},
        "escaping-name": {"images": [good_image, {"id": 3, "file_name": "../../../../etc/passwd"}],
                          "annotations": [good_caption, {"id": 3, "image_id": 3, "caption": "a file."}]},
        "string-id": {"images": [good_image, {"id": "4", "file_name": "x.jpg"}], "annotations": [good_caption]},
        "list-image-id": {"images": [good_image], "annotations": [good_caption, {"id": 5, "image_id": [1]}]},
        "no-annotation-id": {"images": [good_image], "annotations": [good_caption, {"image_id": 1, "caption": "x"}]},
    }  # fmt: skip


BROKEN_ANNOTATIONS = {"top-level-list": "[1, 2, 3]", "truncated": '{"images": [{"id": 1, "file_', "empty": "",
                      "no-images": '{"annotations": []}', "binary": "\x00\x01\x02"}  # fmt: skip

# contents of an uploaded or passed image-ids file that are not ids
BAD_IDS = {"null": b"[null]", "float": b"[1.5]", "bool": b"[true]", "object": b'{"a": 1}', "words": b"root:x:0:0",
           "superscript": "\u00b2".encode(), "binary": b"\xff\xfe\x00", "empty": b"", "negative": b"-4"}  # fmt: skip
