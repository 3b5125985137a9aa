"""Streamlit pieces shared by the pages: cached model / dataset / job manager, the sidebar model picker."""

from __future__ import annotations

import hashlib
import os
from dataclasses import fields, replace
from pathlib import Path

import streamlit as st

from app import catalog, downloads
from app.jobs import JobManager
from app.render import plain
from app.uploads import MAX_FILES, UploadResult, caption_files, thumbnail_jpeg
from captioning import formats, rundir
from captioning.checkpoint import CheckpointError
from captioning.config import CONSTRAIN_THRESHOLD, METHODS, DecodeConfig
from captioning.data import DOWNLOAD_HINT, CocoSplit, DatasetError, ImageLoadError, load_image, parse_ids, split_paths
from captioning.decodebudget import DECODES
from captioning.inference import Captioner

COCO_HINT = DOWNLOAD_HINT.format(root="data/coco") + " --limit 500"
TEXT_UPLOADS = ["txt", "json", "log", "text/plain"]
DECODE_FIELDS = {f.name: f for f in fields(DecodeConfig)}


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def _captioner(path: str, mtime_ns: int) -> Captioner:  # mtime in the key: a retrained best.pt reloads
    return Captioner.from_checkpoint(path, device="auto")


@st.cache_resource(show_spinner="Reading the dataset...", max_entries=4)
def _load_split(path: str, fmt: str, split: str, stamp: tuple) -> CocoSplit:  # a new stamp: read again
    return formats.open_split(Path(path), split, fmt)


def load_split(dataset: catalog.DatasetEntry, split: str) -> CocoSplit:
    """The split, read again when its caption file is rewritten or images arrive in (or leave) its folder."""
    try:
        if dataset.format == "coco":  # the folder's entry count too: images can arrive within one tick of its mtime
            ann, folder = split_paths(dataset.path, split)
            info = ann.stat()
            stamp = (info.st_mtime_ns, info.st_size, folder.stat().st_mtime_ns, len(os.listdir(folder)))
        else:  # the caption file, and the folders its images are in
            path = dataset.path
            stamp = (catalog.listing_stamp(path), path.is_file() and catalog.listing_stamp(path.parent))
    except OSError:
        stamp = ()
    return _load_split(str(dataset.path), dataset.format, split, stamp)


def split_names(dataset: catalog.DatasetEntry) -> list[str]:
    """The dataset's splits; none where it cannot be read (opening a split says why)."""
    try:
        return formats.split_names(dataset.path, dataset.format)
    except (DatasetError, OSError):
        return []


@st.cache_resource
def job_manager(runs: str) -> JobManager:
    """One manager per runs directory per server process, shared by every session and tab."""
    cache = os.environ.get("CAPTIONING_CACHE_DIR")
    return JobManager(Path(runs), cache_dir=Path(cache) if cache else None, roots=catalog.dataset_paths)


def model_key(path: Path) -> tuple[str, int]:
    """What a cached caption or score of a model depends on: its path and when it was last written."""
    try:
        return str(path), path.stat().st_mtime_ns
    except OSError:
        return str(path), 0


def captioner(path: Path) -> Captioner:
    """The cached model for `path`; a clear error (and stop) for a file that is not a usable checkpoint."""
    try:
        return _captioner(str(path), path.stat().st_mtime_ns)
    except (CheckpointError, OSError, ValueError) as exc:
        st.error(f"Could not load the model: {plain(str(exc), 300)}")
        st.stop()
    except Exception as exc:  # anything else a damaged file can raise: still a message, not a traceback
        st.error(f"Could not load the model {plain(path.name, 80)}: {type(exc).__name__}: {plain(str(exc), 300)}")
        st.stop()


SIDEBAR_CHARS = 26  # about what the sidebar's select box shows before cutting a label short


def model_picker(required: bool = True) -> catalog.ModelEntry | None:
    """Sidebar checkpoint selector (shipped default + every run with best.pt)."""
    entries = catalog.list_checkpoints()
    if not entries:
        message = f"No model yet: there is no `{catalog.default_checkpoint()}` and no run with `best.pt`. "
        if required:
            st.info(message + catalog.GET_A_MODEL)
            st.stop()
        st.sidebar.info(message + "Captions and scores need one; see the Home page.")
        return None
    if entries[0].run is not None:
        st.sidebar.caption(f"The shipped model `{catalog.default_checkpoint()}` is not there; your runs are listed.")
    labels = [e.label for e in entries]
    label = st.sidebar.selectbox(
        "Checkpoint", labels, help="The shipped model and every finished run; scores name their images and decoding"
    )
    entry = entries[labels.index(label)]
    said = [plain(label, 200)] if len(label) > SIDEBAR_CHARS else []  # the narrow box cuts a long name: say it whole
    said += [entry.score] if entry.score else []
    if said:
        st.sidebar.caption(": ".join(said) if len(said) == 2 else said[0])
    return entry


def _help(name: str) -> str:
    return DECODE_FIELDS[name].metadata["help"]


def decoding_controls() -> DecodeConfig:
    """Sidebar decoding settings; every default and help text is DecodeConfig's, as the CLI's are."""
    base = DecodeConfig()
    method = st.sidebar.radio(
        "Decoding", METHODS, index=METHODS.index(base.method), horizontal=True, help=_help("method")
    )
    beam = st.sidebar.slider("Beam size", 1, 10, base.beam_size, disabled=method != "beam", help=_help("beam_size"))
    max_len = st.sidebar.slider("Maximum length (words)", 5, 40, base.max_len, help=_help("max_len"))
    block = st.sidebar.checkbox("Block repeated phrases", value=base.block_repeats, help=_help("block_repeats"))
    novel = st.sidebar.checkbox("Name what the vocabulary lacks", value=base.name_novel, help=_help("name_novel"))
    sure = st.sidebar.checkbox("Say what the encoder is sure of", value=bool(base.constrain), help=_help("constrain"))
    constrain = (base.constrain or CONSTRAIN_THRESHOLD) if sure else 0.0
    return replace(
        base, method=method, beam_size=beam, max_len=max_len, block_repeats=block, name_novel=novel, constrain=constrain
    )


def dataset_picker(prefer: str = "val", label: str = "Split") -> tuple[catalog.DatasetEntry, str]:
    """Sidebar dataset (one the app lists, of any format) and split; a plain message (and stop) without data."""
    found = catalog.datasets()
    if not found:
        st.info(
            f"No caption dataset found under `{catalog.data_dir()}` (or `$COCO_ROOT`): put one there (COCO, Flickr8k, "
            f"a CSV... see README: Your own data), or download a COCO sample with:\n\n```\n{COCO_HINT}\n```"
        )
        st.stop()
    shown = {str(d.path): d for d in found}
    linked = st.query_params.get("dataset")  # a link from Browse names its dataset and split: only a listed one
    if linked in shown and "dataset" not in st.session_state:
        st.session_state["dataset"] = linked
    if st.session_state.get("dataset") not in shown:
        st.session_state.pop("dataset", None)  # a dataset that went away (or a stale choice): the first one
    chosen = st.sidebar.selectbox(
        "Dataset",
        list(shown),
        key="dataset",
        format_func=lambda key: shown[key].label,
        help=f"Caption datasets in {catalog.data_dir()} (folders or caption files, any format), $COCO_ROOT and the "
        "embedded sample",
    )
    dataset = shown[chosen]
    if catalog.is_sample(dataset.path):
        st.sidebar.caption(
            "The embedded sample: COCO images with free licenses and their official captions, in a train and a val "
            "split (attribution in `captioning/sample/ATTRIBUTION.csv`). For full COCO, download it (Browse offers a "
            f"sample of val2017), or run `{DOWNLOAD_HINT.format(root='data/coco')}` and `--split train2017`."
        )
    try:
        splits = formats.split_names(dataset.path, dataset.format)
    except (DatasetError, OSError) as exc:
        st.error(plain(str(exc), 300))
        st.stop()
    if not splits:
        coco = dataset.format == "coco"
        why = "has annotation files but none with its image folder beside it" if coco else "has no split with captions"
        st.info(f"`{chosen}` {why}.")
        st.stop()
    if st.query_params.get("split") in splits and st.query_params.get("dataset", chosen) == chosen:
        prefer = st.query_params["split"]
    default = splits.index(prefer) if prefer in splits else 0
    return dataset, st.sidebar.selectbox(label, splits, index=default)


def ids_in_split(data: bytes, name: str, dataset: catalog.DatasetEntry, split: str) -> list[int]:
    """Image ids from an uploaded file, all of them in the split; DatasetError saying what is wrong."""
    ids = parse_ids(data, plain(name, 40))
    files = load_split(dataset, split).files
    unknown = [i for i in ids if i not in files]
    if unknown:
        raise DatasetError(f"{len(unknown)} id(s) in {plain(name, 40)} are not in split {split}: {unknown[:5]}")
    return ids


def split_or_stop(dataset: catalog.DatasetEntry, split: str) -> CocoSplit:
    try:
        return load_split(dataset, split)
    except DatasetError as exc:
        st.error(plain(str(exc), 300))
        st.stop()


def caption_uploads(
    model: Captioner, path: Path, uploads: list[tuple[str, bytes]], decoding: DecodeConfig
) -> list[UploadResult]:
    """caption_files of the first MAX_FILES uploads (a warning counts the others), remembered per session so moving
    a slider does not caption everything again. The memo holds only what is uploaded now, as small JPEGs."""
    if len(uploads) > MAX_FILES:
        st.warning(
            f"Only the first {MAX_FILES} of {len(uploads)} images are captioned at a time; upload the other "
            f"{len(uploads) - MAX_FILES} in another batch.",
            icon=":material/filter_list:",
        )
        uploads = uploads[:MAX_FILES]
    memo = st.session_state.setdefault("caption_memo", {})
    setting = (model_key(path), decoding)
    keys = [(setting, name, hashlib.sha1(data).hexdigest()) for name, data in uploads]
    todo = [(k, u) for k, u in zip(keys, uploads, strict=True) if k not in memo]
    if todo:
        with st.spinner(f"Captioning {len(todo)} image(s)..."):
            for (key, _), result in zip(todo, caption_files(model, [u for _, u in todo], decoding), strict=True):
                memo[key] = result
    st.session_state["caption_memo"] = {k: memo[k] for k in keys}  # forget images no longer uploaded
    return [memo[k] for k in keys]


def run_log(path: Path) -> rundir.LogRead:
    """A run's parsed metrics.jsonl, parsed again only when the file's size or modification time changes."""
    try:
        info = path.stat()
    except OSError:
        return rundir.LogRead()
    return _run_log(str(path), info.st_size, info.st_mtime_ns)


@st.cache_resource(max_entries=32, show_spinner=False)  # shared, not unpickled again on every rerun (read only)
def _run_log(path: str, size: int, mtime_ns: int) -> rundir.LogRead:
    return rundir.read_log(Path(path))


@st.cache_data(show_spinner=False)
def _examples(sample: str) -> list[catalog.Example]:  # keyed by the sample's folder
    return catalog.examples()


@st.cache_data(show_spinner=False, max_entries=256)  # ~15-150 KB each, shared by every session
def _thumbnail(path: str, mtime_ns: int, side: int, square: bool) -> bytes:  # mtime in the key: a new file is read
    with DECODES.scope():  # the decode counts in the process's budget until it is shrunk
        return thumbnail_jpeg(load_image(Path(path), name=Path(path).name), side, square)  # ImageLoadError: not cached


@st.cache_data(show_spinner=False, max_entries=256)
def _member_thumbnail(member: tuple, side: int, square: bool) -> bytes:
    from captioning.formats.shards import ShardMember

    with DECODES.scope():
        return thumbnail_jpeg(load_image(ShardMember(*member)), side, square)


@st.cache_data(show_spinner=False)
def _placeholder(side: int) -> bytes:
    from PIL import Image

    return thumbnail_jpeg(Image.new("RGB", (side, side), (229, 231, 235)), side)


def show_image(box, path: Path, side: int, square: bool = False, caption: str | None = None) -> bool:
    """A dataset image in `box`: a display copy at most `side` px (a centre square if `square`, so a grid lines
    up), read through the bounded loader; a grey square with the reason when it cannot be read. Whether it could."""
    try:
        if isinstance(path, Path):
            data = _thumbnail(*model_key(path), side, square)
        else:  # an image inside a webdataset shard (formats.shards.ShardMember)
            data = _member_thumbnail(tuple(path), side, square)
    except ImageLoadError as exc:
        box.image(_placeholder(min(side, 256)), caption=f":material/broken_image: {plain(str(exc), 160)}")
        return False
    box.image(data, caption=caption, width="stretch")
    return True


def example_picker(box) -> catalog.Example | None:
    """A grid of the sample's example images in `box`, each with a button that picks it; the picked one."""
    examples = _examples(str(catalog.sample_root()))
    if not examples:
        return None
    box.markdown("**Or try an example** (COCO val images the model was not trained on)")
    for row in range(0, len(examples), 4):
        for col, example in zip(box.columns(4), examples[row : row + 4]):
            show_image(col, example.path, 192, square=True)
            if col.button("Caption", key=f"example-{example.image_id}", width="stretch"):
                st.session_state["example"] = example.image_id
    chosen = next((e for e in examples if e.image_id == st.session_state.get("example")), None)
    if chosen is not None and box.button("Clear the example", icon=":material/close:", type="tertiary"):
        st.session_state.pop("example", None)
        return None
    return chosen


@st.cache_resource
def download_manager(data: str) -> downloads.DownloadManager:
    return downloads.DownloadManager(Path(data), Path(data) / "coco")


def download_panel(expanded: bool) -> None:
    """Browse's offer to add COCO val2017 images (and the annotations) to data/coco, saying what it holds already,
    with a live progress bar; offline, a message saying so. A download only adds: it never removes an image."""
    manager = download_manager(str(catalog.data_dir()))
    status, held = manager.status(), manager.held()
    room = downloads.MAX_IMAGES - held
    running = status is not None and status.running
    if room <= 0 and not running:
        return  # all of val2017 is there: nothing to add
    with st.expander("Add COCO val2017 images to data/coco (needs internet)", expanded=expanded):
        if running:
            _download_progress(manager)
            return
        if status is not None and status.message:
            how = "" if status.state == downloads.FINISHED else f" {status.state}"  # failed, cancelled...
            st.caption(f"Last download{how}: {plain(status.message, 200)}")
        st.caption(f"data/coco holds {held:,} of {downloads.MAX_IMAGES:,} val2017 images; a download adds more.")
        more = st.number_input("Images to add", 1, room, min(500, room), step=100, help="the lowest ids not there yet")
        if st.button("Download", icon=":material/download:"):
            with st.spinner("Checking the connection..."):
                problem = manager.start(int(more))
            if problem:
                st.warning(problem)
            else:
                st.rerun()


@st.fragment(run_every=1)
def _download_progress(manager: downloads.DownloadManager) -> None:
    status = manager.status()
    if status is None or not status.running:
        st.rerun()
    st.progress(status.fraction, text=f"Downloading: {status.progress_text()}")
    if st.button("Cancel download", icon=":material/stop:", disabled=status.state == downloads.STOPPING):
        manager.cancel()  # the images that arrived stay; a new download resumes
