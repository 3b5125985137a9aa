"""Training logs: loss, perplexity and validation scores of runs (overlaid), or of an uploaded seed-project log."""

import streamlit as st

from app import catalog, compare, ui
from app.charts import epochs_frame, line_chart, rewards_frame, runs_summary, steps_frame
from app.render import METRIC_HELP
from app.seedlog import parse_seed_log
from captioning import formats
from captioning.data import DatasetError

SEED_EXAMPLE = "Epoch [1/3], Step [100/3236], Loss: 2.9812, Perplexity: 19.7101"

st.set_page_config(page_title="Training logs", page_icon=":chart_with_downwards_trend:", layout="wide")
st.title("Training logs")
st.caption(
    "Loss and perplexity per training step, validation BLEU-4 and CIDEr per epoch. Pick several runs to compare."
)
runs = {f"{r.name} ({r.status.replace('_', ' ')})": r for r in catalog.list_runs()}
pick, upload = st.columns([3, 2])
chosen = pick.multiselect(
    "Runs to compare",
    list(runs),
    default=list(runs)[:1],
    placeholder="Choose one or more runs",
    help=f"runs under {catalog.runs_dir()}",
)
uploaded = upload.file_uploader("Or plot a seed-project log", type=ui.TEXT_UPLOADS, help=f"lines like: {SEED_EXAMPLE}")
smoothing = st.sidebar.slider("Smoothing (EMA)", 0.0, 0.99, 0.6, 0.01, help="0 shows the raw loss")

logs = {runs[label].name: ui.run_log(runs[label].metrics) for label in chosen}
if uploaded is not None:
    name = f"upload: {uploaded.name[:60]}"
    logs[name] = parse_seed_log(uploaded.getvalue().decode("utf-8", errors="replace"))
    if not logs[name].records:
        del logs[name]
        st.warning(f"{ui.plain(uploaded.name)} has no training lines like `{SEED_EXAMPLE}`.")
for name, log in logs.items():
    if log.skipped:
        st.caption(f"{ui.plain(name)}: {log.skipped} malformed line(s) skipped.")
records = {name: log.records for name, log in logs.items()}
if not runs and not records:
    st.info(
        f"No training runs yet (none in `{catalog.runs_dir()}`). Start one on the **Fine-tune** page or with "
        "`python -m captioning train --coco-root data/coco --out runs/NAME`, or upload a seed-project log above."
    )
    st.stop()
if not records:
    st.info("Choose one or more runs above to plot them.")
    st.stop()

steps = steps_frame(records, smoothing)
if steps.empty:
    st.info("No training steps logged yet for the chosen runs.")
else:
    left, right = st.columns(2)
    left.altair_chart(line_chart(steps, "step", "loss", "Training loss"), width="stretch")
    left.caption(METRIC_HELP["loss"])
    right.altair_chart(line_chart(steps, "step", "perplexity", "Perplexity (log scale)", log_y=True), width="stretch")
    right.caption(METRIC_HELP["perplexity"])
rewards = rewards_frame(records, smoothing)
if not rewards.empty:
    st.altair_chart(
        line_chart(rewards, "step", "reward", "Self-critical phase: mean CIDEr-D reward of sampled captions"),
        width="stretch",
    )
    st.caption(METRIC_HELP["reward"])

epochs = epochs_frame(records)
if epochs.empty:
    st.caption("No validation scores: they are logged at the end of each epoch when the run has a validation split.")
else:
    for col, metric in zip(st.columns(2), ("BLEU-4", "CIDEr"), strict=True):
        df = epochs[epochs.metric == metric].rename(columns={"value": metric})
        col.altair_chart(line_chart(df, "epoch", metric, f"Validation {metric}", points=True), width="stretch")
        col.caption(METRIC_HELP[metric])

summary = runs_summary(records)
summary.insert(3, "measured on", [compare.measured_on(r) or "" for r in records.values()])
st.dataframe(summary, hide_index=True)
if (differ := compare.different_measures(records)) is not None:
    st.warning(ui.plain(differ, 600), icon=":material/balance:")


def _is_file(path) -> bool:
    try:
        return path is not None and path.is_file()
    except OSError:
        return False


def score_on_same_images() -> None:
    """Caption and score the chosen runs' models on the same images, with intervals and paired differences."""
    models = {runs[label].name: runs[label].checkpoint for label in chosen if _is_file(runs[label].checkpoint)}
    if not models:
        st.caption("None of the chosen runs has a checkpoint (best.pt) yet.")
        return
    if len(models) > compare.MAX_MODELS:
        st.caption(f"The first {compare.MAX_MODELS} of the chosen models are scored.")
        models = dict(list(models.items())[: compare.MAX_MODELS])
    found = {str(d.path): d for d in catalog.datasets()}
    if not found:
        st.caption(f"No caption dataset to score on: put one in `{catalog.data_dir()}`.")
        return
    where, which, count = st.columns([3, 1, 1])
    key = where.selectbox("Dataset", list(found), format_func=lambda k: found[k].label, key="compare-dataset")
    try:
        splits = formats.split_names(found[key].path, found[key].format)
    except (DatasetError, OSError) as exc:
        st.error(ui.plain(str(exc), 300))
        return
    if not splits:
        st.caption("That dataset has no split with captions.")
        return
    split_name = which.selectbox("Split", splits, index=splits.index("val") if "val" in splits else 0)
    n = count.number_input("Images", 10, compare.MAX_IMAGES, 100, step=10, help="the split's first images")
    decoding = ui.decoding_controls()
    setting = (tuple(ui.model_key(p) for p in models.values()), key, split_name, n, decoding)
    memo = st.session_state.setdefault("compared", {})
    if setting not in memo and st.button("Score on the same images", icon=":material/balance:"):
        split = ui.split_or_stop(found[key], split_name)
        bar = st.progress(0.0, text="Captioning...")
        names = list(models)

        def progress(name: str, done: int, of: int) -> None:
            share = (names.index(name) + done / max(of, 1)) / len(names)
            bar.progress(min(share, 1.0), text=f"{ui.plain(name, 60)}: {done}/{of} images")

        loaded = {name: ui.captioner(path) for name, path in models.items()}
        while len(memo) >= 4:  # a session keeps its last few comparisons
            memo.pop(next(iter(memo)))
        try:
            memo[setting] = compare.comparison_frame(
                compare.score_models(loaded, split, split.ids[: int(n)], decoding, progress)
            )
        except ValueError as exc:
            st.error(ui.plain(str(exc), 300))
        bar.empty()
    if setting in memo:
        st.dataframe(memo[setting], hide_index=True)
        st.caption(compare.SAME_IMAGES_HELP)


with st.expander("Score the chosen runs on the same images", expanded=differ is not None):
    score_on_same_images()
downloads = st.columns(max(len(chosen), 1))
for col, label in zip(downloads, chosen):  # the raw records, every point: the charts draw at most 2,000 a run
    run = runs[label]
    col.download_button(f"{ui.plain(run.name)}: metrics.jsonl", data=lambda path=run.metrics: path.read_bytes(),
                        file_name=f"{run.name}-metrics.jsonl", mime="application/x-ndjson", on_click="ignore",
                        key=f"raw-{run.name}")  # fmt: skip
