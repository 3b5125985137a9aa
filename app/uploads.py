"""Home's uploads: caption each uploaded file, keep a small display copy, and say which could not be read."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

from captioning.config import DecodeConfig
from captioning.data import IMAGE_FORMATS, IMAGE_TYPES, ImageLoadError, load_image
from captioning.decodebudget import DECODES
from captioning.inference import Caption, Captioner

MAX_FILES = 20  # files captioned per upload: at most ~20 decodes of up to 40 Mpixels queue behind one click
THUMBNAIL = 768  # longest side of the copy a session keeps: sharp in Home's column (a 40-Mpixel decode is 120 MB)
THUMBNAIL_QUALITY = 85  # kept as JPEG bytes: ~50-150 KB a photo, where the pixels of a 1024-px copy are 3 MB
IMAGE_MIME_TYPES = tuple(f"image/{f.lower()}" for f in IMAGE_FORMATS)
# With a MIME type in its list, Streamlit leaves the check of an upload's name to the page (the browser still
# filters the file dialog), so a misnamed file gets our message (load_image reads the content) and no exception.
IMAGE_UPLOADS = [*IMAGE_TYPES, *IMAGE_MIME_TYPES]


@dataclass
class UploadResult:
    """One uploaded file: a display copy of its image (JPEG bytes) and its caption, or why it was not captioned."""

    name: str
    thumbnail: bytes | None = None
    caption: Caption | None = None
    error: str | None = None

    @property
    def image(self) -> Image.Image | None:
        """The display copy as pixels, decoded again (a few ms) where a page needs them: the attention overlay."""
        if self.thumbnail is None:
            return None
        with Image.open(io.BytesIO(self.thumbnail)) as image:
            return image.convert("RGB")


def thumbnail_jpeg(image: Image.Image, side: int, square: bool = False) -> bytes:
    """A display copy of `image`, at most `side` px (a centre crop of side x side if `square`), as JPEG bytes."""
    if square:
        image = ImageOps.fit(image, (side, side), Image.Resampling.LANCZOS)
    elif max(image.size) > side:  # a resized copy, never a full-size one (120 MB at 40 Mpixels)
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()


def caption_files(
    captioner: Captioner, files: list[tuple[str, bytes]], decoding: DecodeConfig = DecodeConfig()
) -> list[UploadResult]:
    """Caption each file; one that cannot be read gets its own error message and the others still caption.

    Files are decoded one at a time, each counted in the process's decode budget until it is captioned and shrunk,
    and only a compressed display copy is kept, so memory does not grow with the number or size of the uploads.
    """
    results = []
    for name, data in files:
        try:
            with DECODES.scope():
                image = load_image(data, name=name)
                caption = captioner.caption([image], decoding)[0]
                thumbnail = thumbnail_jpeg(image, THUMBNAIL)
                del image  # before the next file's decode, not after
        except ImageLoadError as exc:
            results.append(UploadResult(name, error=str(exc)))
            continue
        results.append(UploadResult(name, thumbnail=thumbnail, caption=caption))
    return results
