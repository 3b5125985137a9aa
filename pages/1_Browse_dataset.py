"""Browse a split of any caption dataset: search and page through images, open one (?image=ID), score captions."""

import math
from pathlib import Path

import streamlit as st

from app import catalog, ui
from app.render import METRIC_HELP, order_ids, plain, search_captions, tile_text
from captioning.data import DatasetError
from captioning.evaluate import iter_scores

PER_PAGE = 12
ORDERS = {"Image id": None, "CIDEr, worst first": "CIDEr", "BLEU-4, worst first": "BLEU-4"}

st.set_page_config(page_title="Browse dataset", page_icon=":frame_with_picture:", layout="wide")
st.title("Browse the dataset")
dataset, split_name = ui.dataset_picker()
root = dataset.path
if catalog.is_sample(root) or not (coco := catalog.data_dir() / "coco").is_dir() or coco.samefile(root):
    ui.download_panel(expanded=False)
split = ui.split_or_stop(dataset, split_name)
entry = ui.model_picker(required=False)
decoding = ui.decoding_controls() if entry else None
model = ui.captioner(entry.path) if entry else None
setting = (str(root), dataset.format, split_name, ui.model_key(entry.path) if entry else "", decoding)
scores = st.session_state.setdefault("scores", {}).setdefault(setting, {})  # image id -> caption, BLEU-4, CIDEr


def score(ids: list[int]) -> None:
    """Caption and score `ids` a chunk at a time, keeping each chunk's scores at once: a click elsewhere
    interrupts the script, and what was scored by then stays."""
    bar = st.progress(0.0, text=f"Captioning and scoring {len(ids)} images...")
    for part, done in iter_scores(model, split, ids, decoding):
        scores.update(part)
        bar.progress(done / len(ids), f"Scored {done}/{len(ids)} (scores so far are kept if you click away)")
    bar.empty()


def matches_in(name: str) -> int:
    """How many images of another split the search finds (0 where that split cannot be read)."""
    try:
        return len(search_captions(ui.load_split(dataset, name), query))
    except (DatasetError, OSError):
        return 0


if "image" in st.query_params:
    raw = st.query_params["image"]
    if st.button("Back to all images", icon=":material/arrow_back:"):
        del st.query_params["image"]
        st.rerun()
    image_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 16 else None  # others' ids: 48-bit
    if image_id not in split.files:
        st.warning(f"There is no image with id \u201c{plain(raw, 24)}\u201d in split {plain(split_name)}.")
        st.stop()
    left, right = st.columns(2)
    name = f"COCO image {image_id}" if dataset.format == "coco" else plain(split.files[image_id].name, 120)
    ui.show_image(left, split.files[image_id], 1024, caption=f"{name} (link: ?image={image_id})")
    right.subheader("Reference captions")
    right.markdown("\n".join(f"- {plain(c, 300)}" for c in split.captions[image_id]))  # from the file: as text
    if model is None:
        right.info("Choose a model in the sidebar to compare its caption.")
        st.stop()
    if image_id not in scores:
        score([image_id])
    if image_id not in scores:
        right.warning(f"{plain(split.files[image_id].name)} could not be read, so it has no model caption.")
        st.stop()
    right.subheader("Model caption")
    right.markdown(f"**{plain(scores[image_id]['caption'], 300)}**")
    a, b = right.columns(2)
    a.metric("BLEU-4", f"{scores[image_id]['BLEU-4']:.3f}", help=METRIC_HELP["BLEU-4"])
    b.metric("CIDEr", f"{scores[image_id]['CIDEr']:.3f}",
             help=METRIC_HELP["CIDEr"] + " Document frequencies from the whole split.")  # fmt: skip
    right.caption(METRIC_HELP["BLEU-4"] + " " + METRIC_HELP["CIDEr"])
    st.stop()

search, sort, paging = st.columns([3, 2, 1])
query = search.text_input("Search reference captions", placeholder="e.g. dog frisbee")
key = ORDERS[sort.selectbox("Order", list(ORDERS), help="score images first to sort by score")]
ids = order_ids(search_captions(split, query), scores, key)
pages = max(1, math.ceil(len(ids) / PER_PAGE))
page = paging.number_input(f"Page (of {pages})", 1, pages, 1, key=f"page-{query}-{key}")
shown = ids[(page - 1) * PER_PAGE : page * PER_PAGE]
st.caption(
    f"{len(ids)} of {len(split)} images in {plain(split_name)} match; {len(scores)} scored with the selected model."
)
if model is not None:
    one, everything, _ = st.columns([1, 1, 3])
    if one.button("Score this page", icon=":material/speed:"):
        score([i for i in shown if i not in scores])
        st.rerun()
    if everything.button(f"Score all {len(split)} images", icon=":material/playlist_play:"):
        score([i for i in split.ids if i not in scores])
        st.rerun()
if not ids:
    elsewhere = [(name, matches_in(name)) for name in ui.split_names(dataset) if name != split_name]
    hint = "; ".join(f"{n} in {plain(name)}" for name, n in elsewhere if n)
    st.info(f"No reference caption in {plain(split_name)} contains \u201c{plain(query)}\u201d"
            + (f" (other splits have matches: {hint}; pick one in the sidebar)." if hint else "."))  # fmt: skip
for row in range(0, len(shown), 4):
    for col, i in zip(st.columns(4), shown[row : row + 4], strict=False):
        tile = col.container(border=True)
        ui.show_image(tile, split.files[i], 384)
        label = i if dataset.format == "coco" else Path(split.files[i].name).name
        tile.caption(tile_text(label, split.captions[i], scores.get(i)))
        if tile.button("Open image", key=f"open-{i}"):
            st.query_params.update(image=str(i), split=split_name, dataset=str(root))  # a link that finds it again
            st.rerun()
