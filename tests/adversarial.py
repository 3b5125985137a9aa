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


# what a COCO mirror, a captive portal or a proxy may answer 200 with where an image was asked for: each is refused
NOT_IMAGE_BODIES = {
    **{n: IMAGES[n][0] for n in ("bomb.png", "eps-renamed.jpg", "empty.jpg", "truncated.jpg", "text.png", "html.jpg")},
    "login-page.jpg": b"<!DOCTYPE html><html><body><form action=/login>Sign in to the Wi-Fi</form></body></html>",
    "json-error.jpg": b'{"error": "rate limited", "retry_after": 60}',
    "jpeg-magic-only.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 200,
    "gzip.jpg": b"\x1f\x8b\x08\x00" + b"\x00" * 60,
}


def damaged_zips(data: bytes, member: str) -> dict[str, bytes]:
    """Ways a kept or served zip archive goes bad, each unreadable in its own way: flipped bytes in `member`'s
    compressed data (zlib errors, a CRC mismatch), a cut, a lost end record, a renamed member, an unknown, LZMA or
    bzip2 method on deflated data."""
    import zipfile  # here: the corpus above needs none of it

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    at = info.header_offset
    start = at + 30 + sum(struct.unpack("<HH", data[at + 26 : at + 30]))  # after the local header, name and extra
    name = member.encode()
    central = data.index(b"PK\x01\x02")  # the central directory's records: find the member's
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 4)

    def flip(offset: int) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]

    def method(code: int) -> bytes:
        return data[: central + 10] + struct.pack("<H", code) + data[central + 12 :]

    return {
        "flipped-first-byte": flip(start),
        "flipped-middle-byte": flip(start + info.compress_size // 2),
        "flipped-late-byte": flip(start + info.compress_size - 2),  # the last one may be padding only
        "cut-in-half": data[: len(data) // 2],
        "no-end-record": data[:-22],
        "renamed-member": flip(central + 46 + len(name) - 6),
        "unknown-method": method(99),
        "lzma-method": method(14),
        "bzip2-method": method(12),
        "zeroed": bytes(len(data)),
    }


# Crafted checkpoints (#22): a valid checkpoint `src` changed so that loading it cost far more memory than the file
# holds before it was refused (or, for the views, built that model). Each writes `out`.


def checkpoint_claiming(src, out, stub: bool = True, **sizes) -> None:
    """`src` whose model config claims `sizes` (hidden_size=8192: a 1-3 GB LSTM); with `stub` each weight is one
    number, so the file is little more than its plain data (24 KB for the shipped model)."""
    import torch

    ckpt = torch.load(src, weights_only=True)
    ckpt["model_config"].update(sizes)
    if stub:
        ckpt["decoder_state"] = {k: torch.zeros(1) for k in ckpt["decoder_state"]}
    torch.save(ckpt, out)


def checkpoint_of_views(src, out, **sizes) -> None:
    """`src` claiming `sizes`, its weights of exactly the claimed shapes, each a stride-0 view of one number: a file
    of 40 KB whose model is copied out at full size."""
    import torch

    from captioning.config import ModelConfig
    from captioning.model import CaptionModel

    ckpt = torch.load(src, weights_only=True)
    ckpt["model_config"].update(sizes)
    with torch.device("meta"):
        model = CaptionModel.create(ModelConfig.from_dict(ckpt["model_config"]), pretrained=False, with_backbone=False)
    ckpt["decoder_state"] = {k: torch.zeros(1).expand(v.shape) for k, v in model.decoder.state_dict().items()}
    torch.save(ckpt, out)


def checkpoint_with_backbone_stub(src, out, backbone: str = "resnet152") -> None:
    """`src` claiming a fine-tuned `backbone` whose saved weights are one number: the CNN (60M weights for
    ResNet-152) was built before the mismatch showed."""
    import torch

    ckpt = torch.load(src, weights_only=True)
    ckpt["model_config"].update(backbone=backbone, finetune_cnn=True)
    ckpt["backbone"] = {"name": backbone, "source": "crafted", "state": {"conv1.weight": torch.zeros(1)}}
    torch.save(ckpt, out)


def checkpoint_with_deflated_record(src, out, inflated: int = 1 << 30) -> None:
    """`src` plus a tensor of `inflated` bytes of zeros in a deflated zip record: about 1 MB of file per GiB
    (torch.save stores records as they are; torch.load inflates whatever it finds)."""
    import zipfile

    import torch

    mark = 123_457  # a tensor length found nowhere else in the pickle, rewritten to the claimed one
    buf = io.BytesIO()
    torch.save({**torch.load(src, weights_only=True), "extra": torch.zeros(mark)}, buf)
    old, new = (b"J" + struct.pack("<i", n) for n in (mark, inflated // 4))  # BININT opcodes
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data.pkl"):
                zout.writestr(info, zin.read(info).replace(old, new))
            elif info.file_size == mark * 4:
                with zout.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(inflated >> 24):
                        f.write(bytes(1 << 24))
            else:
                zout.writestr(info, zin.read(info))


def checkpoint_with_lying_record(src, out, claim: int = 1 << 31) -> None:
    """`src` whose largest record declares `claim` bytes in the zip's directory, more than the file holds."""
    import zipfile

    data = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = max(archive.infolist(), key=lambda info: info.file_size).filename.encode()
    entry = end = len(data)
    while data[entry : entry + 4] != b"PK\x01\x02" or struct.unpack_from("<H", data, entry + 28)[0] != len(name):
        end = data.rindex(name, 0, end)  # the directory's copy of the name comes last; its entry is 46 bytes before
        entry = end - 46
    struct.pack_into("<II", data, entry + 20, claim, claim)  # compressed and uncompressed sizes
    open(out, "wb").write(data)


def crafted_checkpoints(showtell, attention, folder) -> dict[str, tuple[object, str]]:
    """Each crafted checkpoint, made in `folder` from a Show-and-Tell and an attention checkpoint, with the words
    its one-line refusal holds. Loading them before #22 cost 0.3-1.1 GB each, or built the model."""
    cases = {
        "hidden-8192-stub.pt": (checkpoint_claiming, showtell, dict(hidden_size=8192), "asks for"),
        "hidden-4096-stub.pt": (checkpoint_claiming, showtell, dict(hidden_size=4096), "weights do not match"),
        "hidden-4096-real.pt": (checkpoint_claiming, showtell, dict(hidden_size=4096, stub=False), "do not match"),
        "embed-32768-stub.pt": (checkpoint_claiming, showtell, dict(embed_size=1 << 15), "weights do not match"),
        "attention-131072.pt": (checkpoint_claiming, attention, dict(attention_size=1 << 17), "do not match"),
        "hidden-4096-views.pt": (checkpoint_of_views, showtell, dict(hidden_size=4096), "bytes behind it"),
        "resnet152-stub.pt": (checkpoint_with_backbone_stub, showtell, {}, "weights do not match"),
        "deflated-256mb.pt": (checkpoint_with_deflated_record, showtell, dict(inflated=1 << 28), "is compressed"),
        "lying-record.pt": (checkpoint_with_lying_record, showtell, {}, "records declare"),
    }
    made = {}
    for name, (build, src, kwargs, words) in cases.items():
        build(src, folder / name, **kwargs)
        made[name] = (folder / name, words)
    return made


# Images whose decode costs far more than their size or pixel count says (#22), and text that must reach a page as
# text. Each builder is quick and makes a small file.


def _small_jpeg(side: int = 64, **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "JPEG", **save)
    return buf.getvalue()


def rescanned_jpeg(side: int = 2000, repeats: int = 2000, subsampling: int = -1) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` times: 63 KB that took ~16 s to decode (2000 px)."""
    data = _small_jpeg(side, progressive=True, quality=90, subsampling=subsampling)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:last] + data[last:end] * repeats + data[end:]


def jpeg_with_segments(count: int = 100_000) -> bytes:
    """A small JPEG with `count` empty comment segments: PIL reads each in Python (0.4 MB took 0.2 s)."""
    data = _small_jpeg()
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def jpeg_with_fill(count: int = 100_000) -> bytes:
    """`count` fill bytes (0xFF) before a small JPEG's frame: PIL steps over them one at a time."""
    data = _small_jpeg()
    at = 4 + struct.unpack(">H", data[4:6])[0]  # after SOI and APP0
    return data[:at] + b"\xff" * count + data[at:]


def png_with_chunks(count: int = 100_000) -> bytes:
    """A small PNG with `count` empty private chunks after its pixels (PIL reads them all; 2.4 MB took 0.8 s)."""
    data = png(8, 8)
    at = data.rfind(b"IEND") - 4
    return data[:at] + _chunk(b"prVt", b"") * count + data[at:]


def gif_with_blocks(count: int = 100_000) -> bytes:
    """A small GIF whose comment before the first image is `count` one-byte sub-blocks."""
    buf = io.BytesIO()
    Image.new("P", (8, 8), 1).save(buf, "GIF")
    data = buf.getvalue()
    at = data.index(b"\x2c\x00\x00\x00\x00")  # the image descriptor at (0, 0)
    return data[:at] + b"\x21\xfe" + b"\x01x" * count + b"\x00" + data[at:]


def _tiff(entries: list[tuple[int, int, int, int]], tail: bytes) -> bytes:
    """A little-endian TIFF: one IFD of (tag, type, count, value) entries at offset 8, `tail` after it."""
    entries = sorted(entries)
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd + tail


def tiff_with_strips(rows: int = 100_000, width: int = 8) -> bytes:
    """An uncompressed 1-bit TIFF with a strip per row: PIL makes a Python tile of each (200,000 took 1.6 s)."""
    at = 8 + 2 + 9 * 12 + 4  # after the header and the IFD
    data, row = at + 8 * rows, (width + 7) // 8
    offsets = struct.pack(f"<{rows}I", *range(data, data + row * rows, row))
    entries = [(256, 4, 1, width), (257, 4, 1, rows), (258, 3, 1, 1), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, rows, at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, rows, at + 4 * rows)]  # fmt: skip
    return _tiff(entries, offsets + struct.pack("<I", row) * rows + b"\xff" * (row * rows))


def tiff_of_rescanned_jpegs(side: int = 1000, strips: int = 40, repeats: int = 89) -> bytes:
    """A JPEG-compressed TIFF of `strips` progressive strips with 99 scans each: under libtiff's 100-scan limit
    per strip, 40 Mpixels x 99 scans in all."""
    jpeg = rescanned_jpeg(side, repeats, subsampling=0)
    at = 8 + 2 + 10 * 12 + 4
    first = at + 6 + 8 * strips
    entries = [(256, 4, 1, side), (257, 4, 1, side * strips), (258, 3, 3, at), (259, 3, 1, 7), (262, 3, 1, 2),
               (273, 4, strips, at + 6), (277, 3, 1, 3), (278, 4, 1, side), (279, 4, strips, at + 6 + 4 * strips),
               (284, 3, 1, 1)]  # fmt: skip
    offsets = struct.pack(f"<{strips}I", *range(first, first + len(jpeg) * strips, len(jpeg)))
    return _tiff(entries, struct.pack("<3H", 8, 8, 8) + offsets + struct.pack("<I", len(jpeg)) * strips + jpeg * strips)


def bmp_rle_storm(count: int = 2_000_000, side: int = 64) -> bytes:
    """An RLE8 BMP of `count` end-of-line codes: PIL's Python decoder steps through each (4 MB took 0.8 s)."""
    palette, rle = b"\0\0\0\0" * 256, b"\x00\x00" * count + b"\x00\x01"
    header = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
    at = 14 + len(header) + len(palette)
    return b"BM" + struct.pack("<IHHI", at + len(rle), 0, 0, at) + header + palette + rle


def many_frames(frames: int = 20_000) -> dict[str, bytes]:
    """An 8x8 GIF, APNG, TIFF and WebP of `frames` frames each, made by repeating a frame: only the first is read."""
    two = [Image.new("RGB", (8, 8), (200, 40 * k, 40)) for k in range(2)]
    made = {}
    for fmt in ("GIF", "TIFF", "WEBP"):
        buf = io.BytesIO()
        two[0].save(buf, fmt, save_all=True, append_images=two[1:])
        made[fmt] = buf.getvalue()
    gif = made["GIF"]  # the second frame runs from its graphic control extension to the trailer
    second = gif.rindex(b"\x21\xf9", 0, gif.rindex(b"\x2c"))
    made["GIF"] = gif[:second] + gif[second:-1] * (frames - 1) + b";"
    webp = made["WEBP"]
    anmf = webp.rindex(b"ANMF")
    body = webp[12:] + webp[anmf:] * (frames - 2)
    made["WEBP"] = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    made["TIFF"] = _tiff_pages(made["TIFF"], frames)
    made["APNG"] = _apng(frames)
    return made


def _tiff_pages(tiff: bytes, pages: int) -> bytes:
    """A TIFF whose IFD chain visits its second page `pages - 1` times (PIL counts pages only when asked)."""
    first = struct.unpack_from("<I", tiff, 4)[0]
    count = struct.unpack_from("<H", tiff, first)[0]
    second = struct.unpack_from("<I", tiff, first + 2 + 12 * count)[0]
    n = struct.unpack_from("<H", tiff, second)[0]
    ifd = tiff[second : second + 2 + 12 * n]  # its values point into the file, which is kept as it is
    chain = b"".join(ifd + struct.pack("<I", len(tiff) + (k + 1) * (len(ifd) + 4) if k < pages - 2 else 0)
                     for k in range(pages - 1))  # fmt: skip
    return tiff[: first + 2 + 12 * count] + struct.pack("<I", len(tiff)) + tiff[first + 6 + 12 * count :] + chain


def _apng(frames: int) -> bytes:
    head = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + bytes([200, 40, 40]) * 8 for _ in range(8)))
    control = [struct.pack(">IIIIIHHBB", 2 * k, 8, 8, 0, 0, 1, 10, 0, 0) for k in range(frames)]
    chunks = [_chunk(b"IHDR", head), _chunk(b"acTL", struct.pack(">II", frames, 0)), _chunk(b"fcTL", control[0]),
              _chunk(b"IDAT", pixels)]  # fmt: skip
    for k in range(1, frames):
        chunks += [_chunk(b"fcTL", control[k]), _chunk(b"fdAT", struct.pack(">I", 2 * k + 1) + pixels)]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND", b"")


def png_40mp(mode: str = "RGBA", width: int = 8000, height: int = 5000) -> bytes:
    """A flat PNG of 40 Mpixels in a few hundred KB ("RGBA", 16-bit "I;16" or "L"): 0.4-0.8 GB to decode."""
    depth, colour, channels = {"I;16": (16, 0, 2), "L": (8, 0, 1)}.get(mode, (8, 6, 4))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    pack, row = zlib.compressobj(9), b"\0" + b"\x80" * (width * channels)
    rows = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


# name -> bytes of an image whose decode would run for seconds to hours, refused before decoding; the words its
# message holds
COSTLY_IMAGES: dict[str, tuple[bytes, str]] = {
    "rescanned.jpg": (rescanned_jpeg(), "JPEG scans"),
    "comment-storm.jpg": (jpeg_with_segments(), "too many JPEG markers"),
    "fill-storm.jpg": (jpeg_with_fill(), "too many JPEG markers"),
    "chunk-storm.png": (png_with_chunks(), "too many PNG chunks"),
    "block-storm.gif": (gif_with_blocks(), "too many GIF blocks"),
    "strip-storm.tif": (tiff_with_strips(), "too many TIFF strips"),
    "rescanned-strips.tif": (tiff_of_rescanned_jpegs(), "JPEG scans"),
    "rle-storm.bmp": (bmp_rle_storm(), "run-length-encoded BMP"),
}

# text a caption file, a checkpoint's vocabulary or a file name may hold: a page must show each as the text it is
MARKUP_TEXTS = {
    "link": "[Sign in](https://evil.example/login)",
    "image": "![pixel](https://evil.example/p.png)",
    "autolink": "see www.evil.example or http://evil.example/x",
    "email": "mail admin@evil.example",
    "html": "<img src=x onerror=alert(1)>",
    "emphasis": "**free** _money_ ~~gone~~ `code`",
    "heading": "# Heading",
    "list": "- item",
    "math": "$\\href{https://evil.example}{x}$",
    "directive": ":red[alarm]",
    "entity": "&lt;b&gt;",
    "newline": "one line\n\n# new heading",
}


def checkpoint_with_words(src, out, words: dict[str, str]) -> None:
    """`src` whose vocabulary says each of `words`' values where it said the key (a checkpoint from anywhere)."""
    import torch

    ckpt = torch.load(src, weights_only=True)
    ckpt["vocab"]["itos"] = [words.get(w, w) for w in ckpt["vocab"]["itos"]]
    torch.save(ckpt, out)


def live_markup(body: str) -> list[str]:
    """What of MARKUP_TEXTS markdown would still act on in `body` (a page element's markdown): the patterns left
    once backslash-escaped characters are taken out. GFM links bare URLs and addresses even when escaped."""
    import re

    bare = re.sub(r"\\.", "", body)
    patterns = [r"\]\(", r"!\[", r"(?i)https?://", r"(?i)www\.", r"@evil", r"<img", r"\*\*free", r"_money_", r"~~",
                r"`code", r"\$\\href", r":red\[", r"&lt;", r"(^|\n)# (Heading|new)", r"(^|\n)- item"]  # fmt: skip
    return [p for p in patterns if re.search(p, bare)]
