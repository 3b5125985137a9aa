"""Home's uploads: caption each uploaded file, keep a display-sized copy, and say which could not be read."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from captioning.config import DecodeConfig
from captioning.data import IMAGE_FORMATS, IMAGE_TYPES, ImageLoadError, load_image
from captioning.inference import Caption, Captioner

THUMBNAIL = 1024  # longest side of the copy an upload keeps for display (a 40-megapixel decode is 120 MB)
IMAGE_MIME_TYPES = tuple(f"image/{f.lower()}" for f in IMAGE_FORMATS)
# With a MIME type in its list, Streamlit leaves the check of an upload's name to the page (the browser still
# filters the file dialog), so a misnamed file gets our message (load_image reads the content) and no exception.
IMAGE_UPLOADS = [*IMAGE_TYPES, *IMAGE_MIME_TYPES]


@dataclass
class UploadResult:
    """One uploaded file: a display-sized copy of its image and its caption, or why it could not be captioned."""

    name: str
    image: Image.Image | None = None
    caption: Caption | None = None
    error: str | None = None


def caption_files(
    captioner: Captioner, files: list[tuple[str, bytes]], decoding: DecodeConfig = DecodeConfig()
) -> list[UploadResult]:
    """Caption each file; one that cannot be read gets its own error message and the others still caption.

    Files are decoded one at a time and only a display-sized copy is kept, so memory does not grow with the
    number or size of the uploads.
    """
    results = []
    for name, data in files:
        try:
            image = load_image(data, name=name)
        except ImageLoadError as exc:
            results.append(UploadResult(name, error=str(exc)))
            continue
        caption = captioner.caption([image], decoding)[0]
        image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
        results.append(UploadResult(name, image=image, caption=caption))
    return results
