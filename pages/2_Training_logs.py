"""Training logs: loss, perplexity and validation scores of runs (overlaid), or of an uploaded seed-project log."""

import streamlit as st

from app import catalog, ui
from app.charts import epochs_frame, line_chart, rewards_frame, runs_summary, steps_frame
from app.seedlog import parse_seed_log

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
    right.altair_chart(line_chart(steps, "step", "perplexity", "Perplexity (log scale)", log_y=True), width="stretch")
rewards = rewards_frame(records, smoothing)
if not rewards.empty:
    st.altair_chart(
        line_chart(rewards, "step", "reward", "Self-critical phase: mean CIDEr-D reward of sampled captions"),
        width="stretch",
    )

epochs = epochs_frame(records)
if epochs.empty:
    st.caption("No validation scores: they are logged at the end of each epoch when the run has a validation split.")
else:
    for col, metric in zip(st.columns(2), ("BLEU-4", "CIDEr"), strict=True):
        df = epochs[epochs.metric == metric].rename(columns={"value": metric})
        col.altair_chart(line_chart(df, "epoch", metric, f"Validation {metric}", points=True), width="stretch")

st.dataframe(runs_summary(records), hide_index=True)
downloads = st.columns(max(len(chosen), 1))
for col, label in zip(downloads, chosen):  # the raw records, every point: the charts draw at most 2,000 a run
    run = runs[label]
    col.download_button(f"{ui.plain(run.name)}: metrics.jsonl", data=lambda path=run.metrics: path.read_bytes(),
                        file_name=f"{run.name}-metrics.jsonl", mime="application/x-ndjson", on_click="ignore",
                        key=f"raw-{run.name}")  # fmt: skip
