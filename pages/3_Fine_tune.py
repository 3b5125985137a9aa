"""Fine-tune a model on a split of any caption dataset in the background, watch it live, cancel it cleanly."""

from pathlib import Path

import streamlit as st

from app import archive, catalog, ui
from app.charts import line_chart, rewards_frame, steps_frame
from app.jobs import DEFAULT_MINUTES, MAX_MINUTES, MAX_STEPS, MAX_TRAIN_IMAGES, JobError, default_name

st.set_page_config(page_title="Fine-tune", page_icon=":hammer_and_wrench:", layout="wide")
st.title("Fine-tune a model")
st.caption(
    "Continue training a model on a dataset split in the background, one run at a time. Progress shows here "
    "live, also after a reload or in another tab; a finished run joins Home's checkpoint selector."
)
manager = ui.job_manager(str(catalog.runs_dir()))


@st.fragment(run_every=2)
def live() -> None:
    status = manager.status()
    if status is None or not status.running:
        st.rerun()  # the run ended: show its result and the launch form
    st.subheader(f"Training run {status.job.name}")
    st.progress(status.fraction, text=status.progress_text())
    rewards = rewards_frame({status.job.name: status.steps})
    if not rewards.empty:
        st.altair_chart(
            line_chart(rewards, "step", "reward", "Mean CIDEr-D reward of sampled captions"), width="stretch"
        )
    elif status.steps:
        st.altair_chart(
            line_chart(steps_frame({status.job.name: status.steps}), "step", "loss", "Loss"), width="stretch"
        )
    if st.button(
        "Cancel",
        key="cancel",
        icon=":material/stop:",
        disabled=status.state == "stopping",
        help="stops after the current step and saves a resumable last.pt",
    ):
        manager.cancel()
    with st.expander("Log"):
        st.code(status.log_tail or "(nothing yet)", language=None)


status = manager.status()
if status is not None and status.running:
    live()
    st.stop()
if status is not None:
    level, message = status.summary()
    getattr(st, level)(message)
    if status.steps:  # the curve of the run that ended stays in view
        ended = rewards_frame({status.job.name: status.steps})
        chart = ("reward", "Mean CIDEr-D reward of sampled captions") if not ended.empty else ("loss", "Loss")
        frame = ended if not ended.empty else steps_frame({status.job.name: status.steps})
        st.altair_chart(line_chart(frame, "step", chart[0], f"{chart[1]} of run {status.job.name}"), width="stretch")
    if level == "error":
        st.code(status.message or "(no message)", language=None)  # the trainer's last error line, as text
        with st.expander("Log"):
            st.code(status.log_tail or "(empty log)", language=None)

checkpoints = catalog.list_checkpoints()
if not checkpoints:
    st.info("Fine-tuning starts from a model, and there is none yet. " + catalog.GET_A_MODEL)
    st.stop()
with st.expander(
    "Add your own dataset (a zip or tar of images and captions)", expanded="archive_report" in st.session_state
):
    st.caption(
        "Images with captions in any format the studio reads: COCO JSON, Flickr8k/30k token files, Karpathy's JSON, "
        "a CSV or TSV (image and caption columns), `.txt` sidecars or a Hugging Face imagefolder. At most "
        f"{archive.MAX_ARCHIVE_BYTES // 1_000_000} MB packed, {archive.MAX_MEMBERS:,} files and "
        f"{archive.MAX_TOTAL_BYTES // 1_000_000_000} GB unpacked; it is stored under the data folder and offered "
        "on Browse and here."
    )
    with st.form("add_dataset", clear_on_submit=True):
        upload = st.file_uploader("Archive", type=["zip", "tar", "gz", "tgz"], max_upload_size=200)
        label = st.text_input("Dataset name", help=f"letters, digits, - and _ (at most {archive.MAX_NAME})")
        add = st.form_submit_button("Add dataset", icon=":material/upload:")
    if add:
        try:
            if upload is None:
                raise archive.ArchiveError("choose an archive to upload")
            with st.spinner("Unpacking and checking the dataset..."):
                report = archive.store_archive(upload, label or Path(upload.name).stem, catalog.data_dir())
        except archive.ArchiveError as exc:
            st.error(f"Not added: {ui.plain(str(exc), 300)}")
        else:
            st.session_state["dataset"] = str(report.path)  # the picker opens on it
            st.session_state["archive_report"] = report.lines()
            st.rerun()
    if st.session_state.get("archive_report"):
        first, *rest = st.session_state["archive_report"]
        st.success(ui.plain(first, 300))
        if rest:
            st.text("\n".join(rest))
dataset, split = ui.dataset_picker(prefer="train", label="Training split")
st.session_state.setdefault("run_name", default_name())
with st.form("launch"):
    if catalog.is_sample(dataset.path):
        st.caption(
            "Training on the embedded sample (150 images): a 200-step fine-tune takes 3 to 4 minutes on a 2-core "
            "CPU, feature extraction included. "
            "It is a demonstration of the workflow, not a way to a better model; that needs full COCO."
        )
    bases = {c.label: c.path for c in checkpoints}
    base = st.selectbox(
        "Base checkpoint",
        list(bases),
        help="training continues from this model; words of the new captions it lacks (seen 5 times or more) are added",
    )
    name = st.text_input("Run name", key="run_name", help="letters, digits, - and _; saved under runs/NAME")
    left, right = st.columns(2)
    unit = left.radio("Length in", ["steps", "epochs"], horizontal=True)
    amount = left.number_input("How many", 1, MAX_STEPS, 200, help=f"at most {MAX_STEPS} steps either way")
    lr = right.select_slider("Learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], 1e-4, format_func=lambda v: f"{v:.0e}")
    batch = right.select_slider("Batch size", [8, 16, 32, 64], 32)
    minutes = right.number_input(
        "Time budget (minutes)",
        1,
        MAX_MINUTES,
        DEFAULT_MINUTES,
        help="the whole run, feature extraction included: when it is spent the run validates, saves and ends. "
        f"A larger split is sampled down to {MAX_TRAIN_IMAGES:,} training images.",
    )
    splits = ["(none)"] + ui.split_names(dataset)
    val = left.selectbox("Validation split", splits, index=splits.index("val") if "val" in splits else 0)
    ids = right.file_uploader(
        "Image ids (optional)",
        type=ui.TEXT_UPLOADS,
        help="train only on these: a file of ids, one per line or a JSON list",
    )
    objective = left.radio(
        "Objective",
        ["cross-entropy", "self-critical (CIDEr)"],
        horizontal=True,
        help="self-critical: sample 5 captions per image and reinforce those scoring a higher CIDEr-D than their "
        "siblings (the shipped model's second stage: 5 epochs at 1e-4); batch size counts images",
    )
    go = st.form_submit_button(f"Fine-tune on {split}", type="primary", icon=":material/play_arrow:")
if go:
    options = {"val_split": None if val == "(none)" else val, "lr": lr, "scst": objective.startswith("self-critical")}
    try:
        options["train_ids"] = ui.ids_in_split(ids.getvalue(), ids.name, dataset, split) if ids else None
        options |= {"fmt": dataset.format, "batch_size": batch, "minutes": int(minutes), unit: int(amount)}
        manager.start(name, bases[base], dataset.path, split, **options)
    except (JobError, ValueError, OSError) as exc:
        st.error(f"Could not start: {ui.plain(str(exc), 300)}")
    else:
        del st.session_state["run_name"]
        st.rerun()
