"""`app.archive`: a visitor's dataset archive is stored only when it is safe and readable; anything refused gets
one line and leaves the data folder exactly as it was (no half-written dataset, no `.incoming-*` left over)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from fixtures import COLOURS, SHAPES, draw

from app import archive
from app.archive import ArchiveError, dataset_name, store_archive
from captioning import formats

NAMES = [f"img{k}.jpg" for k in range(6)]


def jpeg(k: int = 0) -> bytes:
    buf = io.BytesIO()
    draw(list(COLOURS)[k % 4], SHAPES[(k // 4) % 2]).save(buf, "JPEG")
    return buf.getvalue()


def token_lines(names: list[str]) -> str:
    return "".join(
        f"{n}#{j}\ta {list(COLOURS)[k % 4]} shape number {j}.\n" for k, n in enumerate(names) for j in (0, 1)
    )


def make_zip(files: dict[str, bytes | str], **infos: int) -> bytes:
    """A zip of `files` (name -> content); `infos` sets a member's Unix mode by its name (`name=mode`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in infos:
                info.external_attr = infos[name] << 16
            z.writestr(info, data)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes | str]], mode: str = "w:gz", **kw) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, **kw) as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
            else:
                body = m[1].encode() if isinstance(m[1], str) else m[1]
                info = tarfile.TarInfo(m[0])
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def flickr_files(prefix: str = "") -> dict[str, bytes | str]:
    files = {f"{prefix}Images/{n}": jpeg(k) for k, n in enumerate(NAMES)}
    return {f"{prefix}Flickr8k.token.txt": token_lines(NAMES), **files}


@pytest.fixture
def data(tmp_path) -> Path:
    """A data folder that already holds one dataset, which no upload may touch."""
    folder = tmp_path / "data"
    (folder / "existing").mkdir(parents=True)
    (folder / "existing" / "captions.csv").write_text("image,caption\n")
    return folder


def unchanged(data: Path) -> bool:
    return sorted(os.listdir(data)) == ["existing"] and os.listdir(data / "existing") == ["captions.csv"]


def test_a_zipped_flickr_folder_is_stored_and_counted(data):
    files = flickr_files("flickr8k/")  # as macOS zips a folder: its __MACOSX twin and .DS_Store come along
    files |= {"__MACOSX/flickr8k/._Flickr8k.token.txt": b"\0\5", "flickr8k/.DS_Store": b"\0"}
    report = store_archive(make_zip(files), "My Flickr 8k!", data)

    assert report.name == "my-flickr-8k" and report.format == "flickr" and report.junk == 2
    stored = data / "my-flickr-8k"
    assert (stored / "Flickr8k.token.txt").is_file() and (stored / "Images" / "img0.jpg").is_file()
    assert not (stored / ".DS_Store").exists() and not (stored / "__MACOSX").exists()
    assert formats.detect(stored) == "flickr"
    assert sum(s.images for s in report.splits) == 6 and sum(s.captions for s in report.splits) == 12
    assert report.uncaptioned == report.unreadable == 0
    assert sorted(os.listdir(data)) == ["existing", "my-flickr-8k"]  # no .incoming-* left
    assert report.lines()[0].startswith("Stored as my-flickr-8k (flickr format): 7 files")
    assert any("2 system file(s) left out" in line for line in report.lines())


def test_a_csv_dataset_in_a_tar_gz_with_one_top_folder(data):
    rows = "image,caption\n" + "".join(f"{n},a picture number {k}\n" for k, n in enumerate(NAMES))
    members = [("set/captions.csv", rows.encode())] + [(f"set/images/{n}", jpeg(k)) for k, n in enumerate(NAMES)]
    report = store_archive(io.BytesIO(make_tar(members)), "csv set", data)  # a file object, as Streamlit gives

    assert (report.name, report.format) == ("csv-set", "csv")
    assert (data / "csv-set" / "captions.csv").is_file()  # the top folder `set/` became the dataset's folder
    assert sum(s.images for s in report.splits) == 6 and sum(s.captions for s in report.splits) == 6


def test_the_report_counts_what_is_missing_malformed_or_unreadable(data):
    names = [*NAMES, "ghost.jpg", "broken.jpg"]
    files = flickr_files() | {
        "Flickr8k.token.txt": token_lines(names) + "a line without a tab or an image\n",
        "Images/broken.jpg": jpeg()[:-300],  # cut short: its header reads, its pixels do not
        "Images/lonely.jpg": jpeg(),  # no caption names it
    }
    report = store_archive(make_zip(files), "mixed", data)

    assert report.uncaptioned == 1 and report.uncaptioned_names == ("Images/lonely.jpg",)
    assert sum(s.missing for s in report.splits) == 1
    assert [n for s in report.splits for n in s.missing_names] == ["ghost.jpg"]
    assert sum(s.malformed for s in report.splits) == 1
    assert report.unreadable == 1 and "broken.jpg" in report.unreadable_reasons[0]
    text = "\n".join(report.lines())
    for words in ("1 image(s) without captions: Images/lonely.jpg", "not in the archive: ghost.jpg",
                  "1 malformed caption row(s)", "broken.jpg is corrupt or truncated"):  # fmt: skip
        assert words in text


def _bomb() -> bytes:
    return make_zip({"Flickr8k.token.txt": token_lines(NAMES), "Images/zeros.jpg": bytes(3_000_000)})


REFUSED = {
    "traversal": (lambda: make_zip({"../x.jpg": jpeg(), **flickr_files()}), "outside the archive's folder"),
    "absolute": (lambda: make_tar([("/etc/x", b"x"), *flickr_files().items()]), "absolute path"),
    "backslash": (lambda: make_zip({"..\\x.jpg": jpeg()}), "backslash"),
    "drive letter": (lambda: make_zip({"C:/x.jpg": jpeg()}), "drive letter"),
    "zip symlink": (lambda: make_zip({"link": "/etc/passwd"}, link=stat.S_IFLNK | 0o777), "symbolic link"),
    "tar symlink": (lambda: make_tar([special("a.jpg", tarfile.SYMTYPE, "/etc/passwd")]), "symbolic link"),
    "hardlink": (lambda: make_tar([("b.txt", b"x"), special("a.txt", tarfile.LNKTYPE, "b.txt")]), "hard link"),
    "device": (lambda: make_tar([special("dev", tarfile.CHRTYPE)], mode="w"), "a device"),
    "fifo": (lambda: make_tar([special("pipe", tarfile.FIFOTYPE)]), "FIFO"),
    "duplicate": (lambda: make_tar([("a.txt", b"x"), ("./a.txt", b"y")]), "appears twice"),
    "file and folder": (lambda: make_tar([("a", b"x"), ("a/b.txt", b"y")]), "both a file and a folder"),
    "not utf-8": (lambda: make_tar([("caf\udce9.jpg", b"x")], format=tarfile.GNU_FORMAT), "not UTF-8"),
    "not an archive": (lambda: b"image,caption\nx.jpg,a cat\n" * 40, "not a zip, tar or tar.gz archive"),
    "damaged zip": (lambda: make_zip(flickr_files())[:3000], "zip archive is damaged"),
    "cut tar.gz": (lambda: make_tar(list(flickr_files().items()))[:-2000], "damaged"),
    "no captions": (lambda: make_zip({f"Images/{n}": jpeg() for n in NAMES}), "not a caption dataset"),
    "captions of no image": (lambda: make_zip({"Flickr8k.token.txt": token_lines(NAMES)}), "no split with images"),
    "all unreadable": (lambda: make_zip(flickr_files() | {f"Images/{n}": b"GIF89a" for n in NAMES}), "none of the"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_unsafe_or_unreadable_archive_is_refused_and_leaves_nothing(data, case):
    build, message = REFUSED[case]
    with pytest.raises(ArchiveError, match=message) as refused:
        store_archive(build(), "upload", data)
    assert "\n" not in str(refused.value)
    assert unchanged(data)


@pytest.mark.parametrize(
    ("limit", "value", "upload", "message"),
    [
        ("MAX_MEMBERS", 3, lambda: make_zip(flickr_files()), "more than 3 files and folders"),
        ("MAX_ARCHIVE_BYTES", 1000, lambda: make_zip(flickr_files()), "larger than 1,000 bytes"),
        ("MAX_MEMBER_BYTES", 500, lambda: make_zip(flickr_files()), "larger than 500 bytes"),
        ("MAX_TOTAL_BYTES", 3000, lambda: make_tar(list(flickr_files().items())), "more than 3,000 bytes"),
        ("MAX_DEPTH", 0, lambda: make_zip(flickr_files()), "deeper than 0 folders"),
        ("RATIO_FLOOR", 100_000, _bomb, "over 100 times its packed size"),  # a zip bomb
        ("RATIO_FLOOR", 100_000, lambda: make_tar([("zeros.bin", bytes(3_000_000))]), "over 100 times its size"),
    ],
)
def test_each_limit_is_named_when_passed(data, monkeypatch, limit, value, upload, message):
    monkeypatch.setattr(archive, limit, value)
    with pytest.raises(ArchiveError, match=message):
        store_archive(upload(), "upload", data)
    assert unchanged(data)


def test_a_zip_whose_headers_understate_a_member_is_refused(data, monkeypatch):
    """A member declared small (inside the limits) that inflates to more: the copy stops at the declared size,
    which its checksum then refuses; nothing past the limits is ever written."""
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 100_000)
    body = make_zip({"Flickr8k.token.txt": token_lines(NAMES), "big.bin": os.urandom(150_000)})
    small = (150_000).to_bytes(4, "little")
    lied = body.replace(small, (1000).to_bytes(4, "little"))  # file_size, in both headers
    with pytest.raises(ArchiveError):
        store_archive(lied, "upload", data)
    assert unchanged(data)


def test_names_are_made_safe_and_existing_datasets_are_kept(data):
    assert dataset_name("  Flickr 8k (mine) ") == "flickr-8k-mine" and dataset_name("Café") == "cafe"
    assert len(dataset_name("x" * 100)) == 40
    for bad in ("", "!!!", "..", "日本語"):
        with pytest.raises(ArchiveError, match="name the dataset"):
            store_archive(make_zip(flickr_files()), bad, data)
    with pytest.raises(ArchiveError, match="exists already"):
        store_archive(make_zip(flickr_files()), "Existing", data)
    assert unchanged(data)
