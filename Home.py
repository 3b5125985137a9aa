"""Caption your own images. Run the app with `streamlit run Home.py`; the other pages are in pages/."""

import streamlit as st

from app import ui
from app.render import (
    NAMED_HELP,
    SCORE_HELP,
    WORD_PROBS_HELP,
    alternatives_frame,
    attention_overlay,
    captions_csv,
    captions_frame,
    word_confidence_html,
)
from app.uploads import IMAGE_UPLOADS, MAX_FILES

st.set_page_config(page_title="Image captioning", page_icon=":frame_with_picture:", layout="wide")
st.title("Image captioning")
st.caption("Drop images below and the model describes them. Pick the model and decoding in the sidebar.")

entry = ui.model_picker()
decoding = ui.decoding_controls()
model = ui.captioner(entry.path)
cfg = model.info.get("model_config", {})
about = f"{cfg.get('backbone', '?')} + {cfg.get('decoder', '?')} decoder"  # from the checkpoint file: shown as text
st.sidebar.caption(f"Model: {ui.plain(about)}, {len(model.vocab)} words")

drop, gallery = st.columns([3, 2], gap="large")
files = drop.file_uploader(
    "Images",
    type=IMAGE_UPLOADS,
    accept_multiple_files=True,
    help=f"JPG, PNG, WebP, BMP, GIF or TIFF; up to {MAX_FILES} at a time",
)
shot = drop.camera_input("Take a picture") if drop.toggle("Use the camera") else None
example = ui.example_picker(gallery)
uploads = [(f.name, f.getvalue()) for f in files or []] + ([("camera.jpg", shot.getvalue())] if shot else [])
references = {}
if example is not None:
    name = f"COCO {example.image_id} (example)"
    uploads.insert(0, (name, example.path.read_bytes()))
    references[name] = example.references
if not uploads:
    drop.info("Drag and drop one or more images onto the box above (or click **Upload**), or pick an example.")
    st.stop()

results = ui.caption_uploads(model, entry.path, uploads, decoding)
if len(results) > 1:
    st.dataframe(captions_frame(results), hide_index=True)
    st.download_button(
        "Download captions (CSV)", captions_csv(results), "captions.csv", "text/csv", icon=":material/download:"
    )

for k, result in enumerate(results):
    box = st.container(border=True)
    if result.error:
        box.error(ui.plain(result.error, 400), icon=":material/broken_image:")
        continue
    cap = result.caption
    left, right = box.columns([2, 3])
    left.image(result.thumbnail, caption=ui.plain(result.name), width="stretch")
    shown = cap.text + (" \u2026" if cap.cut else "")  # "..." where the maximum length cut the caption
    right.markdown(f"### {ui.plain(shown, 300)}")  # words come from the checkpoint's vocabulary: text, not markup
    if cap.doubts:
        right.warning(ui.plain(cap.unsure, 400), icon=":material/help:")
    if cap.cut:
        right.caption("The caption reached the maximum length before it ended (raise it in the sidebar).")
    right.html(word_confidence_html(cap.words, cap.word_probs, cap.named_at))
    right.caption(WORD_PROBS_HELP + (NAMED_HELP if cap.named else ""))
    if cap.tags:
        seen = " \u00b7 ".join(f"{ui.plain(label, 40)} {100 * p:.0f}%" for label, p in cap.tags)
        right.caption(
            f"What the encoder sees (ImageNet class probabilities): {seen}",
            help="the frozen CNN's own ImageNet classes for this image, with their probabilities",
        )
    if cap.named:
        right.caption(f"The subject is named after the encoder's class *{ui.plain(cap.named[0], 40)}* "
                      f"({100 * cap.named[1]:.0f}%), a word the model's vocabulary lacks.")  # fmt: skip
    if cap.required:
        said = ", ".join(ui.plain(w, 30) for w in cap.required.words[:4])
        right.caption(f"Constrained to say one of *{said}*: the encoder is {100 * cap.required.prob:.0f}% sure of "
                      f"*{ui.plain(cap.required.noun, 40)}*.")  # fmt: skip
    if result.name in references:
        right.markdown("**Reference captions** (written by people for COCO)")
        right.markdown("\n".join(f"- {ui.plain(r, 200)}" for r in references[result.name]))
    tabs = right.tabs(["Alternatives"] + (["Attention"] if cap.attention else []))
    if len(cap.alternatives) > 1 or cap.named:
        tabs[0].dataframe(alternatives_frame(cap), hide_index=True)
        tabs[0].caption(SCORE_HELP)
    else:
        tabs[0].caption("Beam search (beam size 2 or more) gives alternative captions with their scores.")
    if cap.attention:
        i = tabs[1].select_slider(
            "Word",
            range(len(cap.words)),
            format_func=lambda j, words=cap.words: f"{j + 1}. {words[j]}",
            key=f"attention-{k}-{result.name}",
        )
        tabs[1].image(
            attention_overlay(result.image, cap.attention[i]),
            width=320,
            caption=f"Where the model looked for \u201c{ui.plain(cap.words[i], 40)}\u201d (centre crop it sees)",
        )
