"""Streamlit pieces shared by the pages: cached model / dataset / job manager, the sidebar model picker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import streamlit as st

from app import catalog
from app.jobs import JobManager
from captioning.checkpoint import CheckpointError
from captioning.data import DOWNLOAD_HINT, CocoSplit, DatasetError, available_splits
from captioning.decoding import METHODS
from captioning.inference import Captioner, caption_files

COCO_HINT = DOWNLOAD_HINT.format(root="data/coco") + " --limit 500"


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def _captioner(path: str, mtime_ns: int) -> Captioner:  # mtime in the key: a retrained best.pt reloads
    return Captioner.from_checkpoint(path, device="auto")


@st.cache_resource(show_spinner="Reading the dataset...", max_entries=4)
def load_split(root: str, split: str) -> CocoSplit:
    return CocoSplit.load(Path(root), split)


@st.cache_resource
def job_manager(runs: str) -> JobManager:
    """One manager per runs directory per server process, shared by every session and tab."""
    cache = os.environ.get("CAPTIONING_CACHE_DIR")
    return JobManager(Path(runs), cache_dir=Path(cache) if cache else None)


def captioner(path: Path) -> Captioner:
    """The cached model for `path`; a clear error (and stop) for a file that is not a usable checkpoint."""
    try:
        return _captioner(str(path), path.stat().st_mtime_ns)
    except (CheckpointError, OSError, ValueError) as exc:
        st.error(f"Could not load the model: {exc}")
        st.stop()
    except Exception as exc:  # anything else a damaged file can raise: still a message, not a traceback
        st.error(f"Could not load the model {path}: {type(exc).__name__}: {exc}")
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
    label = st.sidebar.selectbox("Checkpoint", labels, help="The shipped model and every finished run")
    if len(label) > SIDEBAR_CHARS:  # the narrow sidebar cuts it off in the box: say it whole
        st.sidebar.caption(label)
    return entries[labels.index(label)]


def decoding_controls() -> dict:
    """Sidebar decoding method, beam size and maximum length, as Captioner.caption keyword arguments."""
    method = st.sidebar.radio(
        "Decoding", METHODS, index=1, horizontal=True, help="beam search keeps several candidates"
    )
    beam = st.sidebar.slider("Beam size", 1, 10, 3, disabled=method != "beam")
    max_len = st.sidebar.slider("Maximum length (words)", 5, 40, 20)
    block = st.sidebar.checkbox(
        "Block repeated phrases",
        value=True,
        help="never say the same three words twice ('a man holding a cell phone on a cell phone') or bring back "
        "a thing already named ('a cat sitting on a table with a table')",
    )
    return {"method": method, "beam_size": beam, "max_len": max_len, "block_repeats": block}


def coco_picker(prefer: str = "val", label: str = "Split") -> tuple[str, str]:
    """Sidebar COCO root and split; a plain message (and stop) when there is no data."""
    root = st.sidebar.text_input(
        "COCO root", os.environ.get("COCO_ROOT") or "data/coco", help="a folder with annotations/captions_SPLIT.json"
    )
    splits = available_splits(Path(root)) if Path(root).is_dir() else []
    if not splits:
        st.info(f"No COCO captions found under `{root}`. Download a sample with:\n\n```\n{COCO_HINT}\n```")
        st.stop()
    default = splits.index(prefer) if prefer in splits else 0
    return root, st.sidebar.selectbox(label, splits, index=default)


def split_or_stop(root: str, split: str) -> CocoSplit:
    try:
        return load_split(root, split)
    except DatasetError as exc:
        st.error(str(exc))
        st.stop()


def caption_uploads(model: Captioner, path: Path, uploads: list[tuple[str, bytes]], decoding: dict) -> list:
    """caption_files, remembered per session so moving a slider does not caption everything again."""
    memo = st.session_state.setdefault("caption_memo", {})
    setting = (str(path), tuple(sorted(decoding.items())))
    keys = [(setting, name, hashlib.sha1(data).hexdigest()) for name, data in uploads]
    todo = [(k, u) for k, u in zip(keys, uploads, strict=True) if k not in memo]
    if todo:
        with st.spinner(f"Captioning {len(todo)} image(s)..."):
            for (key, _), result in zip(todo, caption_files(model, [u for _, u in todo], **decoding), strict=True):
                memo[key] = result
    st.session_state["caption_memo"] = {k: memo[k] for k in keys}  # forget images no longer uploaded
    return [memo[k] for k in keys]
