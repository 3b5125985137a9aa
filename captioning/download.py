"""Download MS COCO 2017 caption annotations and images from the official COCO site; a download only adds.

Run: python -m captioning download --dest data/coco --split val2017 --limit 500
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit

from captioning.download_files import NETWORK_ERRORS, Client, DownloadError, Progress, fetch_images, image_problem
from captioning.io import atomic_write, file_lock, read_json

DEFAULT_BASE_URL = "http://images.cocodataset.org"
ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"
SPLITS = ("train2017", "val2017")
MAX_CAPTIONS_BYTES = 1 << 30  # train2017's captions file is 91 MB: a member claiming more is not it


@dataclass(frozen=True)
class DownloadSummary:
    """What a download run did: where things are, how many images it fetched, what the split lists now."""

    split: str
    annotations: Path
    images_dir: Path
    downloaded: int
    skipped: int  # already there, and whole
    failed: list[str]  # file names, sorted
    reasons: dict[str, str] = field(default_factory=dict)  # file name -> why it failed
    listed: int = 0  # images the captions file lists after the run
    added: int = 0  # of those, new to it
    damaged: list[str] = field(default_factory=list)  # kept files that were not whole images: fetched again


class _Damaged(Exception):
    """A kept or fetched annotations zip that cannot give the captions; the message says why."""


def _fetch_required(client: Client, url: str, dest: Path, show: bool, report: Progress) -> None:
    """Fetch a file the run cannot do without; any failure becomes a DownloadError."""
    try:
        client.fetch(url, dest, show, report)
    except HTTPError as err:
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except NETWORK_ERRORS as err:
        raise client.unreachable(err) from err


def _read_captions(client: Client, dest: Path, split: str, show: bool, report: Progress) -> tuple[bytes, dict]:
    """captions_<split>.json from the annotations zip (its bytes, and parsed), fetching the zip if needed.

    A damaged zip, kept or fetched, is discarded and fetched again; the second damaged one fetched is an error."""
    url = f"{client.base_url}/{ANNOTATIONS_ZIP}"
    zip_path = dest / Path(ANNOTATIONS_ZIP).name
    fetches = 0
    while True:
        if not zip_path.exists():
            _fetch_required(client, url, zip_path, show, report)
            fetches += 1
        try:
            return _captions_in(zip_path, f"annotations/captions_{split}.json")
        except _Damaged as err:
            zip_path.unlink()
            if fetches >= 2:
                raise DownloadError(
                    f"{url} sent a damaged annotations archive twice ({err}); try again later, or another mirror"
                ) from None


def _captions_in(zip_path: Path, member: str) -> tuple[bytes, dict]:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            info = archive.getinfo(member)
            if info.file_size > MAX_CAPTIONS_BYTES:
                raise _Damaged(f"its {member} claims {info.file_size:,} bytes")
            raw = archive.read(info)  # checks the CRC too
        captions = read_json(raw)
    except _Damaged:
        raise
    except KeyError:
        raise _Damaged(f"it has no {member}: is it COCO 2017?") from None
    except Exception as exc:  # a damaged archive raises many types: BadZipFile, zlib and lzma errors, EOFError...
        raise _Damaged(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not _is_captions(captions):
        raise _Damaged(f"its {member} is not a COCO captions file")
    return raw, captions


def _is_captions(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)


def _existing(path: Path) -> dict | None:
    """The captions file already at `path`, None when there is none; one that cannot be read is a DownloadError
    (a download only adds to it, so it never replaces it)."""
    if not path.exists():
        return None
    reason = "no 'images' and 'annotations' lists"
    try:
        if path.stat().st_size > MAX_CAPTIONS_BYTES:
            raise ValueError(f"over {MAX_CAPTIONS_BYTES >> 20} MB")
        data = read_json(path.read_bytes())
        if isinstance(data, dict) and "annotations" not in data:  # images without captions yet: CocoSplit reads it
            data = {**data, "annotations": []}
    except (OSError, ValueError) as exc:
        data, reason = None, f"{type(exc).__name__}: {str(exc)[:200]}"
    if not _is_captions(data):
        raise DownloadError(
            f"{path} is not a COCO captions file ({reason}); a download only adds to it, so move it away "
            "or repair it, then run again"
        )
    return data


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _id(record: object) -> int | None:
    return _int(record.get("id")) if isinstance(record, dict) else None


def _fetchable(image: object) -> bool:
    name = image.get("file_name") if isinstance(image, dict) else None
    return _id(image) is not None and isinstance(name, str) and Path(name).name not in ("", ".", "..")


def merge_captions(old: dict | None, new: dict, limit: int | None) -> tuple[dict, list[dict], int]:
    """Add `new`'s images (lowest ids first, until the split lists `limit` of new's images) and their captions to
    `old`'s, removing nothing: what `old` holds is kept as it is, and a smaller limit adds nothing.

    Returns:
        (the captions to have: `old` itself when it lacks nothing, `new` itself when that is exactly the result,
        else a merged copy; new's records of the images the result lists; how many images were added).
    """
    images = sorted((im for im in new["images"] if _fetchable(im)), key=_id)
    old_images, old_captions = (old["images"], old["annotations"]) if old else ([], [])
    held = {_id(im) for im in old_images} - {None}
    room = None if limit is None else max(0, limit - sum(im["id"] in held for im in images))
    added = [im for im in images if im["id"] not in held][:room]
    ids = held | {im["id"] for im in added}
    known = {_id(a) for a in old_captions} | {None}  # a new caption without an id could never be told apart again
    captions = [a for a in new["annotations"] if _id(a) not in known and _int(a.get("image_id")) in ids]
    ours = [im for im in images if im["id"] in ids]
    if old is not None and not added and not captions:
        return old, ours, 0
    by_id, caption_by_id = {im["id"]: im for im in images}, {_id(a): a for a in new["annotations"]}
    if (
        len(ours) == len(new["images"])
        and set(old or {}) <= set(new)
        and all(by_id.get(_id(im)) == im for im in old_images)
        and all(caption_by_id.get(_id(a)) == a for a in old_captions)
    ):
        return new, ours, len(added)
    info = dict(new["info"]) if isinstance(new.get("info"), dict) else {}
    note = f"subset: {len(ids)} of {len(images)} images"
    info["description"] = f"{info.get('description', 'COCO 2017 captions')} ({note})"
    merged = sorted(old_images + added, key=lambda im: (0, _id(im)) if _id(im) is not None else (1, 0))
    merged_captions = {**(old or {}), **new, "info": info, "images": merged, "annotations": old_captions + captions}
    return merged_captions, ours, len(added)


def _image_url(image: dict, split: str, base_url: str) -> str:
    # coco_url points at the official host; keep its path, swap the host for base_url.
    official = image.get("coco_url")
    official = official if isinstance(official, str) else f"{DEFAULT_BASE_URL}/{split}/{image['file_name']}"
    return base_url + urlsplit(official).path


def download_coco(
    dest: Path,
    split: str = "val2017",
    limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
    *,
    backoff: float = 0.5,
    on_progress: Progress | None = None,
) -> DownloadSummary:
    """Download COCO 2017 captions and images into dest, in the standard COCO layout, adding to what is there.

    Args:
        dest: folder that gets annotations/captions_<split>.json and <split>/*.jpg.
        split: "train2017" or "val2017".
        limit: the split lists at least `limit` images after the run (the lowest ids not yet there are added);
            never fewer than it listed before. None: all of them.
        base_url: COCO host or a mirror of it.
        retries: extra tries per file after network errors or HTTP 5xx.
        timeout: seconds to wait on a silent connection.
        progress: show tqdm progress bars.
        backoff: first pause between tries in seconds; it doubles each time.
        on_progress: called as on_progress(stage, done, total) while the zip ("annotations", bytes) and the
            images ("images", counting those already there) arrive; `ProgressFile` writes it for another process.

    Returns:
        A DownloadSummary; images that failed (HTTP 404, not an image twice...) are listed with why, not raised.

    Raises:
        DownloadError: the host cannot be reached, or the annotations cannot be had or merged.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of: {', '.join(SPLITS)} (got {split!r})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images (got {limit})")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more (got {retries})")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    client = Client(base_url.rstrip("/"), dest, retries, timeout, backoff)
    on_progress = on_progress or (lambda *_: None)
    annotations, listed, added, images = _write_captions(client, dest, split, limit, progress, on_progress)
    images_dir = dest / split
    images_dir.mkdir(parents=True, exist_ok=True)
    todo, damaged = _missing(images, images_dir, split, client.base_url)
    skipped = len(images) - len(todo)
    downloaded, failed = fetch_images(client, todo, len(images), skipped, split, progress, on_progress)
    return DownloadSummary(
        split, annotations, images_dir, downloaded, skipped, sorted(failed), failed, listed, added, sorted(damaged)
    )


def _missing(images: list[dict], images_dir: Path, split: str, base_url: str) -> tuple[dict[str, Path], list[str]]:
    """({url: file} of the images not there whole, names of the kept files that were not whole images: removed)."""
    todo, damaged = {}, []
    for image in images:
        target = images_dir / Path(image["file_name"]).name  # .name: a file_name must not write outside images_dir
        if target.is_file() and image_problem(target, kept=True) is not None:
            target.unlink()  # what a crash or an older downloader left under an image's name
            damaged.append(target.name)
        if not target.exists():  # final names appear only once complete and checked
            todo[_image_url(image, split, base_url)] = target
    return todo, damaged


def _write_captions(
    client: Client, dest: Path, split: str, limit: int | None, progress: bool, report: Progress
) -> tuple[Path, int, int, list[dict]]:
    """Merge the zip's captions into annotations/captions_<split>.json (`merge_captions`), written only when it
    gains something; (its path, images it lists, images added, the zip's records of its images)."""
    raw, new = _read_captions(client, dest, split, progress, report)
    path = dest / "annotations" / f"captions_{split}.json"
    with file_lock(path.with_name(f".{path.name}.lock")):  # two downloads at once: neither loses the other's
        old = _existing(path)
        merged, images, added = merge_captions(old, new, limit)
        if merged is not old:
            text = raw if merged is new else json.dumps(merged, separators=(",", ":")).encode()
            atomic_write(path, lambda tmp: tmp.write_bytes(text))
    return path, len({_id(im) for im in merged["images"]} - {None}), added, images


def listed_images(dest: Path, split: str = "val2017") -> int:
    """How many images the captions file of `split` under `dest` lists; 0 when there is none or it is unreadable."""
    try:
        captions = _existing(Path(dest) / "annotations" / f"captions_{split}.json")
    except DownloadError:
        return 0
    return len({_id(im) for im in captions["images"]} - {None}) if captions else 0


class ProgressFile:
    """Writes a download's progress as JSON lines for another process to watch, each line flushed at once:
    {"event": "progress", "stage", "done", "total"} (at most one a percent), then one ending record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")  # this run's records only
        self._shown: tuple[str, int] | None = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        step = done * 100 // total if total else done >> 20  # a percent; without a total, a MiB
        if (stage, step) != self._shown:
            self._shown = (stage, step)
            self.write({"event": "progress", "stage": stage, "done": done, "total": total})

    def end(self, event: str, message: str, **fields) -> None:
        """The last record: "finished" or "failed", with a sentence for the user."""
        self.write({"event": event, "message": message, **fields})

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
