"""app.catalog (which models and logs the app offers) and app.jobs (one background fine-tune).

The job tests run a stand-in trainer (a short script that writes metrics.jsonl like the real one) so they
take a second; tests/test_app.py runs the real `python -m captioning train` through the Fine-tune page.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from app_fixtures import fake_python as make_fake_python
from app_fixtures import wait_for
from fixtures import draw, make_coco

from app import catalog, jobs
from app.jobs import MAX_STEPS, JobError, JobManager, sanitize_name
from captioning import formats, rundir
from captioning.checkpoint import FORMAT, FORMAT_VERSION
from captioning.cli import build_parser
from captioning.flags import train_config as config_from_args

FAKE_TRAINER = f"""#!{sys.executable}
# Stand-in for `python -m captioning train`: logs like it, sleeps, saves last.pt on SIGTERM.
import json, os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
log = open(out / "metrics.jsonl", "a")
def write(record):
    log.write(json.dumps(record) + "\\n"); log.flush()
def stop(signum, frame):
    (out / "last.pt").write_bytes(b"resumable")
    write({{"kind": "event", "event": "stopped", "step": 3}}); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
write({{"kind": "event", "event": "start", "step": 0, "total_steps": 10}})
if os.environ.get("FAKE_TRAINER") == "fail":
    print("error: no annotations for split 'train'", file=sys.stderr, flush=True); sys.exit(2)
for step in (1, 2, 3):
    write({{"kind": "step", "step": step, "loss": 4.0 - step, "total_steps": 10}})
if os.environ.get("FAKE_TRAINER") == "finish":
    write({{"kind": "event", "event": "finished", "step": 3}}); sys.exit(0)
print("training...", flush=True)
time.sleep(60)
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    return make_fake_python(tmp_path, FAKE_TRAINER)


# catalog ------------------------------------------------------------------------------------------------------------


def test_checkpoints_are_the_shipped_model_and_runs_with_best_pt(tiny_run, tmp_path, monkeypatch):
    default = tmp_path / "checkpoints" / "default.pt"
    default.parent.mkdir()
    shutil.copy(tiny_run / "best.pt", default)
    shutil.copy(tiny_run / "metrics.jsonl", default.parent / "default-metrics.jsonl")
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run, runs / "good")
    for name in ("training", "killed"):  # a log without an ending: a live trainer holds the run's lock
        (runs / name).mkdir()
        (runs / name / "metrics.jsonl").write_text(json.dumps({"kind": "event", "event": "start"}) + "\n")
    live = rundir.RunLock(rundir.RunDir(runs / "training")).__enter__()
    shutil.copytree(tiny_run, runs / ".hidden")
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(default))
    monkeypatch.setenv("CAPTIONING_RUNS_DIR", str(runs))

    cider = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])  # last record: the end event
    models = catalog.list_checkpoints()
    assert [m.run for m in models] == [None, "good"]
    # the tiny run validates greedily (TrainConfig's default) on its val images, and the score says both
    images = catalog.read_metrics(models[1].path)["val"]["images"]
    assert [m.label for m in models] == ["Shipped model", "good"]
    assert models[1].score == models[0].score == f"val CIDEr {cider['best_cider']:.3f} ({images} images, greedy)"
    assert models[1].path == runs / "good" / "best.pt"
    logs = catalog.list_runs()
    assert {(r.name, r.status) for r in logs} == {("shipped model", "finished"), ("good", "finished"),
                                                  ("training", "running"), ("killed", "interrupted")}  # fmt: skip
    live.__exit__()
    assert rundir.RunDir(runs / "training").status() == "interrupted"  # the trainer is gone


def test_no_model_anywhere_gives_an_empty_list(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(tmp_path / "missing.pt"))
    monkeypatch.setenv("CAPTIONING_RUNS_DIR", str(tmp_path / "no-runs"))
    assert catalog.list_checkpoints() == [] and catalog.list_runs() == []
    assert "python -m captioning train" in catalog.GET_A_MODEL


def test_defaults_without_environment(monkeypatch):
    monkeypatch.delenv("CAPTIONING_CHECKPOINT", raising=False)
    monkeypatch.delenv("CAPTIONING_RUNS_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert catalog.default_checkpoint() == repo / "captioning" / "shipped" / "default.pt"
    assert catalog.default_log() == repo / "captioning" / "shipped" / "default-metrics.jsonl"
    assert catalog.runs_dir() == repo / "runs"


def test_a_corrupt_checkpoint_is_listed_without_a_score(tmp_path, monkeypatch):
    (tmp_path / "runs" / "broken").mkdir(parents=True)
    (tmp_path / "runs" / "broken" / "best.pt").write_bytes(b"garbage")
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(tmp_path / "missing.pt"))
    monkeypatch.setenv("CAPTIONING_RUNS_DIR", str(tmp_path / "runs"))
    [entry] = catalog.list_checkpoints()
    assert entry.label == "broken" and entry.cider is None  # loading it is where the app reports the error


def _scored(path: Path, cider: float) -> None:
    """A best.pt with no weights: what the model picker reads of one."""
    metrics = {"val": {"CIDEr": cider, "method": "greedy"}}
    empty = {"model_config": {}, "vocab": {}, "decoder_state": {}}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "metrics": metrics, **empty}, path)


def _run(runs: Path, name: str, ending: str | None = "finished", app: bool = True) -> Path:
    """A run folder: a best.pt, a log that ends with `ending` (None: still running, or killed), and the train.log
    the app writes when `app`."""
    run = runs / name
    run.mkdir(parents=True)
    records = [{"kind": "event", "event": "start", "step": 0}] + ([{"kind": "event", "event": ending, "step": 5}]
                                                                   if ending else [])  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _scored(run / "best.pt", 0.5)
    if app:
        (run / "train.log").write_text("training...\n")
    return run


def _age(runs: Path, ages: dict[str, float]) -> None:
    """Set each run folder's modification time `ages[name]` seconds back: the listing's newest-first order."""
    now = time.time()
    for name, age in ages.items():
        os.utime(runs / name, (now - age, now - age))


def test_a_rerun_over_1200_runs_reads_no_file_again(tmp_path, monkeypatch):
    runs, count = tmp_path / "runs", 1200  # past the old caches: 256 checkpoints, 1,024 logs
    for i in range(count):
        _run(runs, f"run{i:04d}", app=False)
        _scored(runs / f"run{i:04d}" / "best.pt", i / 1000)
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(tmp_path / "none.pt"))
    loads, reads, logs, stats = [], [], [], []
    load, read, status, stat = torch.load, catalog.read_metrics, rundir.run_status, os.stat
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or load(*a, **k))  # a whole checkpoint
    monkeypatch.setattr(catalog, "read_metrics", lambda path: reads.append(path) or read(path))  # its plain data
    monkeypatch.setattr(rundir, "run_status", lambda path: logs.append(path) or status(path))
    first = catalog.list_checkpoints(runs)
    assert {(m.label, m.score) for m in first} == {(f"run{i:04d}", f"val CIDEr {i / 1000:.3f} (greedy)")
                                                   for i in range(count)}  # fmt: skip
    assert loads == [] and len(reads) == len(logs) == count

    reads.clear()
    logs.clear()
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a[0]) or stat(*a, **k))
    assert catalog.list_checkpoints(runs) == first
    assert [r.name for r in catalog.list_runs(runs)] == [m.run for m in first]
    monkeypatch.setattr(os, "stat", stat)
    assert loads == reads == logs == []  # before #22: every checkpoint was loaded whole again, on every rerun
    assert len(stats) <= 3 * count + 2  # best.pt, metrics.jsonl (picker), metrics.jsonl (logs); 2 for the shipped model

    _scored(runs / "run0007" / "best.pt", 0.999)  # retrained
    shutil.rmtree(runs / "run0008")
    labels = {m.run: m.score for m in catalog.list_checkpoints(runs)}
    assert len(reads) == 1 and labels["run0007"] == "val CIDEr 0.999 (greedy)" and "run0008" not in labels


def test_pruning_keeps_the_newest_app_runs_and_deletes_only_older_ended_ones(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    doomed = {"old-finished": "finished", "old-stopped": "stopped", "old-early": "early_stopped"}
    for name in ("new0", "new1", "new2", "old-base", "old-default", ".old-hidden"):
        _run(runs, name)
    for name, ending in doomed.items():
        _run(runs, name, ending)
    for name in ("old-running", "old-interrupted"):  # no ending logged: training now (it holds its lock), or killed
        _run(runs, name, None)
    _run(runs, "old-cli", app=False)  # the command line's
    (runs / "old-link").symlink_to(_run(tmp_path / "elsewhere", "linked"))
    live = rundir.RunLock(rundir.RunDir(runs / "old-running")).__enter__()
    _age(runs, {name: age for age, name in enumerate(sorted(os.listdir(runs), key=lambda n: not n.startswith("new")))})
    monkeypatch.setenv("CAPTIONING_CHECKPOINT", str(runs / "old-default" / "best.pt"))
    files = lambda: {p for p in tmp_path.rglob("*") if p.name != rundir.LOCK}  # noqa: E731

    before = files()
    removed = catalog.prune_app_runs(runs, keep=3, protect=[runs / "old-base" / "best.pt"])
    assert sorted(removed) == sorted(doomed)
    assert files() == {p for p in before if not any(p.is_relative_to(runs / name) for name in doomed)}  # nothing else
    live.__exit__()
    assert catalog.prune_app_runs(runs, keep=3, protect=[runs / "old-base" / "best.pt"]) == []
    with pytest.raises(ValueError, match="keep"):
        catalog.prune_app_runs(runs, keep=-1)


def _csv_dataset(folder: Path, images: int = 8) -> Path:
    """`folder/captions.csv`, two captions for each of `images` pictures in `folder/pics/`; returns the CSV."""
    (folder / "pics").mkdir(parents=True)
    rows = ["image,caption"]
    for i in range(images):
        draw(("red", "blue")[i % 2], ("circle", "square")[i // 2 % 2]).save(folder / "pics" / f"p{i}.png")
        rows += [f"pics/p{i}.png,picture {i}", f"pics/p{i}.png,drawing number {i}"]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder / "captions.csv"


def test_datasets_are_every_readable_entry_of_the_data_folder_named_with_their_format(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_coco(data / "coco", {"val": 2})
    (data / "flickr8k" / "Images").mkdir(parents=True)
    draw("red", "circle").save(data / "flickr8k" / "Images" / "a.jpg")
    (data / "flickr8k" / "Flickr8k.token.txt").write_text("a.jpg#0\ta red circle\n")
    (data / "photos" / "2024").mkdir(parents=True)  # sidecar captions, a folder down
    draw("blue", "square").save(data / "photos" / "2024" / "b.png")
    (data / "photos" / "2024" / "b.txt").write_text("a blue square\n")
    _csv_dataset(data / "tables")  # a folder holding one CSV: the folder is the dataset
    (data / "notes").mkdir()  # none of these is a dataset
    (data / "notes" / "todo.md").write_text("nothing")
    (data / "both").mkdir()  # a token file and a Karpathy JSON: ambiguous, so left out
    (data / "both" / "captions.token").write_text("a.jpg#0\tx\n")
    (data / "both" / "dataset_x.json").write_text('{"images": []}')
    (data / ".hidden").mkdir()
    shutil.copytree(data / "coco", data / ".hidden" / "coco")
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    monkeypatch.setenv("COCO_ROOT", str(make_coco(tmp_path / "elsewhere" / "coco", {"val": 2})))
    monkeypatch.delenv("CAPTIONING_SAMPLE_DIR", raising=False)
    reads = []
    monkeypatch.setattr(catalog._formats, "read", lambda path, read=catalog._formats.read: reads.append(path) or
                        read(path))  # fmt: skip
    monkeypatch.setattr(catalog._formats, "kept", {})  # what earlier tests listed (the sample) is read again

    found = catalog.datasets()
    assert [(d.label, d.format) for d in found] == [
        (f"{tmp_path / 'elsewhere' / 'coco'} (coco)", "coco"),  # two called coco: by path
        (f"{data / 'coco'} (coco)", "coco"),
        ("flickr8k (flickr)", "flickr"),
        ("photos (folder)", "folder"),
        ("tables (csv)", "csv"),
        (catalog.SAMPLE_LABEL, "coco"),
    ]
    assert catalog.dataset_paths() == [d.path for d in found]
    assert all(formats.detect(d.path) == d.format for d in found)  # what training detects too
    assert len(reads) == 9  # COCO_ROOT, data/ and its 6 entries, the sample
    reads.clear()
    assert catalog.datasets() == found and reads == []  # a rerun reads nothing again
    draw("green", "circle").save(data / "flickr8k" / "Images" / "c.jpg")
    (data / "notes" / "captions.csv").write_text("image,caption\nx.png,y\n")
    assert [d.label for d in catalog.datasets()][2:5] == ["flickr8k (flickr)", "notes (csv)", "photos (folder)"]
    assert sorted(map(Path, reads)) == [data, data / "flickr8k", data / "notes"]  # what changed, and data/ for it


def test_a_caption_file_in_the_data_folder_is_its_own_entry(tmp_path, monkeypatch):
    data = tmp_path / "data"
    csv = _csv_dataset(data)
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    monkeypatch.setenv("CAPTIONING_SAMPLE_DIR", str(tmp_path / "no-sample"))
    monkeypatch.delenv("COCO_ROOT", raising=False)
    [entry] = catalog.datasets()  # not data/ as well: it is read through that same file
    assert (entry.path, entry.format, entry.label) == (csv, "csv", "captions.csv (csv)")
    csv.unlink()
    assert catalog.datasets() == []  # pics/ alone: images without captions


# jobs: names and validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, name",
    [("my run!", "my-run"), ("../../etc/passwd", "etc-passwd"), ("ok_name-2", "ok_name-2"), ("x" * 100, "x" * 64)],
)
def test_run_names_are_sanitised(raw, name):
    assert sanitize_name(raw) == name


def test_a_name_with_nothing_usable_is_refused():
    with pytest.raises(JobError, match="at least one letter or digit"):
        sanitize_name("../ !!")


def test_start_refuses_bad_requests_with_clear_reasons(tiny_checkpoint, tiny_coco, tmp_path, fake_python):
    manager = JobManager(tmp_path / "runs", python=fake_python)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    cases = [
        (dict(name="taken"), "already exists"),
        (dict(split="test2017"), "split 'test2017' is not under"),
        (dict(val_split="nope"), "split 'nope' is not under"),
        (dict(steps=MAX_STEPS + 1), f"between 1 and {MAX_STEPS}"),
        (dict(steps=None), "either steps or epochs"),
        (dict(base=bad), "bad.pt"),  # the message is load_checkpoint's
        (dict(base=tmp_path / "none.pt"), "does not exist"),
    ]
    for change, message in cases:
        args = dict(name="new", base=tiny_checkpoint, data=tiny_coco, split="train", steps=10) | change
        with pytest.raises(ValueError, match=message):
            manager.start(**args)
    assert manager.current() is None and not (tmp_path / "runs" / "new").exists()


# jobs: one at a time, live status, re-attach, cancel ----------------------------------------------------------------


def test_one_job_at_a_time_and_a_second_manager_reattaches(tiny_checkpoint, tiny_coco, tmp_path, fake_python):
    runs = tmp_path / "runs"
    manager = JobManager(runs, python=fake_python)
    job = manager.start("first", tiny_checkpoint, tiny_coco, "train", val_split="val", steps=10)
    assert job.out_dir == (runs / "first").resolve() and (runs / ".active_job.json").is_file()
    status = wait_for(manager, lambda s: s.step == 3)
    assert status.state == "running" and status.total_steps == 10 and status.fraction == pytest.approx(0.3)
    assert [r["loss"] for r in status.steps] == [3.0, 2.0, 1.0]

    other = JobManager(runs, python=fake_python)  # a reloaded page after a server restart, or another server
    assert other.current().name == "first" and other.status().running
    with pytest.raises(JobError, match="still training"):
        other.start("second", tiny_checkpoint, tiny_coco, "train", steps=10)
    assert other.cancel()
    status = wait_for(manager, lambda s: not s.running)
    assert status.state == "stopped" and (runs / "first" / "last.pt").is_file()
    assert not manager.cancel()  # nothing left to cancel

    manager.start("second", tiny_checkpoint, tiny_coco, "train", epochs=1)  # the slot is free again
    assert manager.current().name == "second"
    manager.cancel()
    manager.wait(timeout=20)


def test_finished_and_failed_jobs_report_their_end(tiny_checkpoint, tiny_coco, tmp_path, fake_python, monkeypatch):
    manager = JobManager(tmp_path / "runs", python=fake_python)
    monkeypatch.setenv("FAKE_TRAINER", "finish")
    manager.start("done", tiny_checkpoint, tiny_coco, "train", steps=10)
    assert manager.wait(timeout=20) == 0
    assert manager.status().state == "finished"

    monkeypatch.setenv("FAKE_TRAINER", "fail")
    manager.start("broken", tiny_checkpoint, tiny_coco, "train", steps=10)
    assert manager.wait(timeout=20) == 2
    status = manager.status()
    assert status.state == "failed" and status.message == "error: no annotations for split 'train'"
    assert status.summary() == ("error", "Run **broken** failed at step 0:") and "no annotations" in status.log_tail
    assert json.loads((tmp_path / "runs" / ".active_job.json").read_text())["name"] == "broken"


def test_starting_a_job_deletes_the_app_runs_past_the_newest(tiny_checkpoint, tiny_coco, tmp_path, fake_python,
                                                             monkeypatch):  # fmt: skip
    runs = tmp_path / "runs"
    for name in ("done0", "done1", "done2", "done3"):
        _run(runs, name)
    _run(runs, "cli", app=False)
    _age(runs, {"cli": 500, "done0": 100, "done1": 101, "done2": 102, "done3": 103})
    monkeypatch.setattr(catalog, "KEEP_APP_RUNS", 2)
    monkeypatch.setenv("FAKE_TRAINER", "finish")
    manager = JobManager(runs, python=fake_python)
    manager.start("new", tiny_checkpoint, tiny_coco, "train", steps=10)
    assert manager.wait(timeout=20) == 0
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == ["cli", "done0", "done1", "new"]


def test_a_finetune_on_a_csv_dataset_reads_it_as_csv(tiny_checkpoint, tmp_path, fake_python, monkeypatch):
    csv = _csv_dataset(tmp_path / "data")
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAPTIONING_SAMPLE_DIR", str(tmp_path / "no-sample"))
    monkeypatch.delenv("COCO_ROOT", raising=False)
    monkeypatch.setenv("FAKE_TRAINER", "finish")
    monkeypatch.setattr(jobs, "MAX_TRAIN_IMAGES", 3)  # a sample of the split's hashed ids
    manager = JobManager(tmp_path / "runs", python=fake_python, roots=catalog.dataset_paths)
    [entry] = catalog.datasets()
    job = manager.start("on-csv", tiny_checkpoint, entry.path, "train", fmt=entry.format, val_split="val", steps=5)
    assert manager.wait(timeout=20) == 0
    cfg = config_from_args(build_parser().parse_args(job.command[3:]))  # [python, -m, captioning, train, ...]
    assert (cfg.coco_root, cfg.format, cfg.train_split, cfg.val_split) == (str(csv), "csv", "train", "val")
    ids = [int(i) for i in Path(cfg.train_ids).read_text().split()]
    assert len(ids) == 3 and set(ids) <= set(formats.open_split(csv, "train", "csv").ids)

    job = manager.start("auto", tiny_checkpoint, csv, "train", steps=5)  # fmt "auto": detected when it starts
    assert manager.wait(timeout=20) == 0 and "--format csv" in " ".join(job.command)
    with pytest.raises(JobError, match="split 'test' is not under"):
        manager.start("no-test", tiny_checkpoint, csv, "test", steps=5)


def test_a_dataset_the_app_does_not_list_is_refused(tiny_checkpoint, tiny_coco, tmp_path, fake_python, monkeypatch):
    data = tmp_path / "data"
    csv = _csv_dataset(data / "mine")
    shutil.copytree(data / "mine", tmp_path / "outside")
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(data))
    monkeypatch.delenv("COCO_ROOT", raising=False)
    manager = JobManager(tmp_path / "runs", python=fake_python, roots=catalog.dataset_paths)
    assert catalog.dataset_paths()[0] == data / "mine"
    for path in (tmp_path / "outside", tmp_path / "outside" / "captions.csv", tiny_coco, csv, data / "mine" / "pics",
                 data / "mine" / ".." / ".." / "outside"):  # fmt: skip
        with pytest.raises(JobError, match="is not one of the app's datasets"):
            manager.start("stranger", tiny_checkpoint, path, "train", fmt="csv", steps=5)
    assert manager.current() is None and not (tmp_path / "runs" / "stranger").exists()
