"""The Streamlit pages, driven headless with AppTest: what a user sees for good input, bad input and no data.

Run: python -m pytest tests/test_app.py   (the fine-tune test starts real training subprocesses: marked slow)
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

import pytest
from app_fixtures import chart_data, chart_specs, image_bytes, of_type, open_page, point_app, text, wait_for
from conftest import SHARED_COCO, needs_shared_coco
from PIL import Image

from app import catalog
from app.jobs import JobManager
from captioning.checkpoint import load_checkpoint, model_from_checkpoint
from captioning.cli import build_parser
from captioning.config import DecodeConfig
from captioning.data import CocoSplit, load_image
from captioning.flags import train_config as config_from_args
from captioning.inference import Captioner
from captioning.rundir import read_metrics

SEED_LOG = "\n".join(
    f"Epoch [{e}/2], Step [{s}/300], Loss: {4.0 - e * 0.5 - s / 300:.4f}, Perplexity: 20.0"
    for e in (1, 2) for s in range(100, 301, 100)
)  # fmt: skip


@functools.cache
def _captioner(checkpoint: Path) -> Captioner:
    return Captioner.from_checkpoint(checkpoint)


def expected_caption(checkpoint: Path, data: bytes) -> str:
    """What the page should show with its default decoding (beam 3, at most 20 words), "..." where cut."""
    cap = _captioner(checkpoint).caption([load_image(data)])[0]
    return cap.text + (" \u2026" if cap.cut else "")


# Home ------------------------------------------------------------------------------------------------------------


def test_home_captions_an_uploaded_image(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    assert "Drag and drop" in text(at)
    data = image_bytes("blue", "square")
    at.file_uploader[0].set_value(("blue.png", data, "image/png")).run()
    assert not at.exception
    assert f"### {expected_caption(tiny_checkpoint, data)}" in [m.value for m in at.markdown]
    assert len(of_type(at, "image")) == 1
    assert chart_specs(at) == []  # the chips show the word probabilities: no tall chart repeats them
    alternatives = at.dataframe[0].value
    assert list(alternatives.columns) == ["caption", "score", "from"] and len(alternatives) == 3
    assert alternatives["from"][0].startswith("shown") and "mean log-probability per word" in text(at)
    assert "%" in text(at) and "probability the decoder gave it" in text(at)  # each word's probability, labelled
    # a flat blue square is no photo, and a random model hesitates: the page says why not to trust the caption
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith("unsure: ") and "screenshot" in warnings[0]


def test_home_bad_files_get_their_own_message_and_the_good_one_still_captions(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    good = image_bytes("green", "circle", "JPEG")
    huge = Image.new("1", (8000, 6000))  # 48 megapixels: refused before decoding
    files = [
        ("good.jpg", good, "image/jpeg"),
        ("notes.jpg", b"this is not an image", "image/jpeg"),
        ("empty.png", b"", "image/png"),
        ("cut.jpg", good[: len(good) // 2], "image/jpeg"),
        ("huge.png", _png(huge), "image/png"),
    ]
    at = open_page("home")
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 4
    assert any("notes.jpg" in e and "not an image" in e for e in errors)
    assert any("empty.png" in e and "empty" in e for e in errors)
    assert any("cut.jpg" in e and "truncated" in e for e in errors)
    assert any("huge.png" in e and "too large" in e for e in errors)
    assert f"### {expected_caption(tiny_checkpoint, good)}" in [m.value for m in at.markdown]


def test_home_several_images_give_a_table_and_a_csv(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    shapes = [("red", "square"), ("yellow", "circle"), ("blue", "circle")]
    files = [(f"{c}-{s}.png", image_bytes(c, s), "image/png") for c, s in shapes]
    at = open_page("home")
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["file"]) == [f[0] for f in files]
    assert list(table["caption"]) == [expected_caption(tiny_checkpoint, f[1]) for f in files]
    assert of_type(at, "download_button")[0].label == "Download captions (CSV)"
    assert len(of_type(at, "image")) == 3


def test_python_the_cli_and_home_caption_an_image_the_same_way_by_default(
    tiny_checkpoint, monkeypatch, tmp_path, caption_calls, capsys
):
    """One DecodeConfig(): its defaults are the CLI's flags' and Home's widgets', so one image gets one caption."""
    from captioning.cli import main

    data = image_bytes("red", "circle")
    (tmp_path / "photo.png").write_bytes(data)
    python = Captioner.from_checkpoint(tiny_checkpoint).caption([load_image(data)])[0].text
    assert main(["caption", str(tmp_path / "photo.png"), "--checkpoint", str(tiny_checkpoint)]) == 0
    cli = capsys.readouterr().out.strip()
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    at.file_uploader[0].set_value(("photo.png", data, "image/png")).run()
    assert not at.exception and f"### {python}" in [m.value for m in at.markdown]
    assert cli == python
    assert caption_calls == [DecodeConfig()] * 3  # Python's default, the CLI's and Home's


def test_home_repeat_block_is_on_by_default_and_can_be_turned_off(
    tiny_checkpoint, monkeypatch, tmp_path, caption_calls
):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    at.file_uploader[0].set_value(("blue.png", image_bytes("blue", "square"), "image/png")).run()
    box = next(c for c in at.sidebar.checkbox if c.label == "Block repeated phrases")
    assert box.value is True and [c.block_repeats for c in caption_calls] == [True]
    box.uncheck().run()
    assert not at.exception and [c.block_repeats for c in caption_calls] == [
        True,
        False,
    ]  # captioned again, repeats allowed


def test_home_without_a_model_says_how_to_get_one(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path)
    at = open_page("home")
    assert not at.exception
    assert "No model yet" in at.info[0].value and "python -m captioning train" in at.info[0].value
    assert not at.file_uploader


def test_home_with_a_corrupt_checkpoint_shows_an_error(monkeypatch, tmp_path):
    bad = tmp_path / "ckpt" / "default.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"\x80\x02 definitely not a checkpoint")
    point_app(monkeypatch, tmp_path, checkpoint=bad)
    at = open_page("home")
    assert not at.exception
    assert "Could not load the model" in at.error[0].value and "default.pt" in at.error[0].value


def test_home_shows_attention_word_by_word(tiny_attention_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_attention_checkpoint)
    at = open_page("home")
    at.file_uploader[0].set_value(("red.png", image_bytes("red", "square"), "image/png")).run()
    assert not at.exception
    words = at.select_slider[0]
    assert words.label == "Word" and len(words.options) >= 2
    first = of_type(at, "image")[-1].proto.imgs[0].url
    words.set_value(1).run()  # the second word
    assert not at.exception
    overlay = of_type(at, "image")[-1]
    assert overlay.proto.imgs[0].url != first  # another word, another heatmap
    assert "Where the model looked" in overlay.proto.imgs[0].caption


def test_home_selector_lists_the_shipped_model_and_finished_runs(tiny_checkpoint, monkeypatch, tmp_path):
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    shutil.copytree(tiny_checkpoint.parent, runs / "my-run")
    at = open_page("home")
    options = at.sidebar.selectbox[0].options
    assert options == ["Shipped model", "my-run"]  # names the narrow box shows whole
    said = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("val CIDEr ") and "images, greedy)" in c for c in said)  # once, with images and decoding
    point_app(monkeypatch, tmp_path)  # no shipped model: the runs alone, and a note saying so
    at = open_page("home")
    assert at.sidebar.selectbox[0].options == [options[1]] and "is not there" in at.sidebar.caption[0].value


# Browse dataset ----------------------------------------------------------------------------------------------------


def test_browse_pages_searches_scores_and_opens_an_image(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    at = open_page("browse")
    assert not at.exception
    assert len(of_type(at, "image")) == 8 and "8 of 8 images in val match" in text(at)
    at.main.text_input[0].set_value("circle").run()  # search the reference captions
    assert len(of_type(at, "image")) == 4

    next(b for b in at.button if b.label == "Score this page").click().run()
    assert not at.exception and "4 scored" in text(at)
    order = next(s for s in at.main.selectbox if s.label == "Order")
    order.set_value("CIDEr, worst first").run()
    tiles = [c.value for c in at.main.caption if "CIDEr" in c.value]
    ciders = [float(t.split("CIDEr ")[1].split(",")[0]) for t in tiles]
    assert len(ciders) == 4 and ciders == sorted(ciders)

    worst = next(b for b in at.button if b.label == "Open image")  # the first tile: the lowest CIDEr
    image_id = int(worst.key.removeprefix("open-"))
    worst.click().run()
    assert at.query_params["image"] == [str(image_id)] or at.query_params["image"] == str(image_id)
    _assert_image_view(at, tiny_coco, "val", image_id)


def test_browse_links_to_an_image_by_id_in_the_url(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    image_id = CocoSplit.load(tiny_coco, "val").ids[3]
    at = open_page("browse")
    at.query_params["image"] = str(image_id)
    at.run()
    _assert_image_view(at, tiny_coco, "val", image_id)
    at.query_params["image"] = "999999"
    at.run()
    assert not at.exception and "no image with id \u201c999999\u201d" in at.warning[0].value


def test_browse_without_data_gives_the_download_command(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path)
    at = open_page("browse")
    assert not at.exception
    assert "python -m captioning download --dest data/coco --split val2017 --limit 500" in at.info[0].value


@needs_shared_coco
def test_browse_the_real_coco_sample(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=SHARED_COCO)
    at = open_page("browse")
    assert not at.exception
    assert len(of_type(at, "image")) == 12 and "250 of 250 images in val match" in text(at)
    at.main.text_input[0].set_value("dog").run()
    assert 0 < len(of_type(at, "image")) <= 12
    image_id = CocoSplit.load(SHARED_COCO, "val").ids[0]
    at.query_params["image"] = str(image_id)
    at.run()
    _assert_image_view(at, SHARED_COCO, "val", image_id)


def _assert_image_view(at, root: Path, split: str, image_id: int) -> None:
    assert not at.exception
    refs = CocoSplit.load(root, split).captions[image_id]
    shown = text(at)
    assert all(r in shown for r in refs) and len(refs) >= 5
    assert {m.label for m in at.metric} == {"BLEU-4", "CIDEr"}
    assert all(0.0 <= float(m.value) <= 10.0 for m in at.metric)
    assert "Model caption" in shown


# Training logs ------------------------------------------------------------------------------------------------------


def test_logs_overlay_runs_with_loss_perplexity_and_validation_charts(tiny_run, monkeypatch, tmp_path):
    default = tmp_path / "ckpt" / "default.pt"
    default.parent.mkdir()
    shutil.copy(tiny_run / "metrics.jsonl", catalog.default_log(default))
    runs = point_app(monkeypatch, tmp_path, checkpoint=default)
    for name in ("run-a", "run-b"):
        (runs / name).mkdir(parents=True)
        shutil.copy(tiny_run / "metrics.jsonl", runs / name / "metrics.jsonl")
    at = open_page("logs")
    assert not at.exception
    runs_box = at.multiselect[0]
    assert any(o.startswith("shipped model") for o in runs_box.options) and len(runs_box.options) == 3
    runs_box.set_value([o for o in runs_box.options if o.startswith("run-")]).run()
    titles = [s.get("title") for s in chart_specs(at)]
    assert titles == ["Training loss", "Perplexity (log scale)", "Validation BLEU-4", "Validation CIDEr"]
    loss = chart_data(of_type(at, "vega_lite_chart")[0])[0]
    assert set(loss["run"]) == {"run-a", "run-b"}  # overlaid, coloured by run
    raw = loss[loss.run == "run-a"]["loss"].tolist()
    at.sidebar.slider[0].set_value(0.0).run()
    unsmoothed = chart_data(of_type(at, "vega_lite_chart")[0])[0]
    assert unsmoothed[unsmoothed.run == "run-a"]["loss"].tolist() != raw  # the smoothing slider changes the curve


def test_logs_show_the_reward_of_a_self_critical_phase(tiny_run, monkeypatch, tmp_path):
    runs = point_app(monkeypatch, tmp_path)
    (runs / "scst").mkdir(parents=True)
    records = read_metrics(tiny_run / "metrics.jsonl")
    last = max(r["step"] for r in records if r["kind"] == "step")
    scst = [{"kind": "step", "step": last + n, "epoch": 6 + n / 4, "phase": "scst", "reward": 0.5 + n / 10,
             "scst_loss": 0.01, "lr": 1e-4} for n in range(1, 5)]  # fmt: skip
    start = {"kind": "event", "event": "scst_start", "step": last, "epoch": 6, "from_epoch": 2, "best_cider": 0.4}
    (runs / "scst" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [*records, start, *scst]) + "\n")
    at = open_page("logs")
    assert not at.exception
    at.sidebar.slider[0].set_value(0.0).run()
    charts = {s.get("title"): chart for s, chart in zip(chart_specs(at), of_type(at, "vega_lite_chart"), strict=True)}
    reward = chart_data(charts["Self-critical phase: mean CIDEr-D reward of sampled captions"])[0]
    assert reward["reward"].tolist() == pytest.approx([0.6, 0.7, 0.8, 0.9])
    loss = chart_data(charts["Training loss"])[0]
    assert loss["step"].max() == last  # the loss curve stops where the reward curve starts
    summary = at.dataframe[0].value.set_index("run")
    assert summary.loc["scst", "SCST started from epoch"] == 2  # where the validation curves jump back to


def test_logs_say_when_scores_do_not_compare_and_score_runs_on_the_same_images(
    tiny_run, tiny_coco, monkeypatch, tmp_path
):
    runs = point_app(monkeypatch, tmp_path, coco=tiny_coco)
    records = read_metrics(tiny_run / "metrics.jsonl")
    for name, images, method in (("run-a", 8, "beam"), ("run-b", 3, "greedy")):
        (runs / name).mkdir(parents=True)
        shutil.copy(tiny_run / "best.pt", runs / name / "best.pt")
        changed = [r | {"images": images, "method": method} if r["kind"] == "epoch" else r for r in records]
        (runs / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in changed) + "\n")
    at = open_page("logs")
    at.multiselect[0].set_value([o for o in at.multiselect[0].options if o.startswith("run-")]).run()
    assert not at.exception
    summary = at.dataframe[0].value.set_index("run")
    assert (
        summary.loc["run-a", "measured on"] == "8 images, beam"
        and summary.loc["run-b", "measured on"] == "3 images, greedy"
    )
    warning = at.warning[0].value
    assert "measured differently (" in warning and "so they do not compare" in warning
    assert "run-a: 8 images, beam" in warning and "run-b: 3 images, greedy" in warning
    at.number_input[0].set_value(10).run()
    next(b for b in at.button if b.label == "Score on the same images").click().run()
    assert not at.exception
    table = at.dataframe[1].value.set_index("model")
    assert list(table.index) == ["run-b", "run-a"] and set(table["images"]) == {8}  # as chosen; tiny val has 8
    assert table.loc["run-a", "CIDEr minus run-b"] == "0.000 [0.000, 0.000]"  # the same weights: no difference
    assert table.loc["run-a", "verdict"] == "no difference shown" and table.loc["run-b", "verdict"] == "the reference"
    low, high = map(float, table.loc["run-b", "CIDEr [95% interval]"].split("[")[1].rstrip("]").split(", "))
    assert low < high  # an interval over the 8 images
    assert "paired" in text(at)


def test_logs_plot_an_uploaded_seed_log_and_reject_other_text(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path)
    at = open_page("logs")
    assert "No training runs yet" in at.info[0].value
    at.file_uploader[0].set_value(("seed.log", SEED_LOG.encode(), "text/plain")).run()
    assert not at.exception
    loss = chart_data(of_type(at, "vega_lite_chart")[0])[0]
    assert list(loss["step"]) == [100, 200, 300, 400, 500, 600] and set(loss["run"]) == {"upload: seed.log"}
    at.file_uploader[0].set_value(("notes.txt", b"nothing to see", "text/plain")).run()
    assert not at.exception and "no training lines like" in at.warning[0].value


# Fine-tune ----------------------------------------------------------------------------------------------------------


def test_finetune_without_a_model_or_data_says_what_is_missing(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path)
    at = open_page("finetune")
    assert not at.exception and "there is none yet" in at.info[0].value
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("finetune")
    assert not at.exception and "python -m captioning download" in at.info[0].value


@pytest.mark.slow
def test_finetune_runs_to_the_end_then_a_second_run_cancels_cleanly(
    tiny_checkpoint, tiny_coco, tiny_cache_dir, monkeypatch, tmp_path
):
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco, cache=tiny_cache_dir)
    watcher = JobManager(runs)  # like a second server process: re-attaches through the job file
    at = _launch(open_page("finetune"), "tiny-ft", steps=4)
    assert not at.exception and not at.error
    status = _wait(watcher, lambda s: not s.running)
    assert status.state == "finished", status.log_tail
    _rerun_until(at, "Run **tiny-ft** finished at step 4")  # the live view refreshes, then shows the result
    assert any(e.run == "tiny-ft" for e in catalog.list_checkpoints())  # now in Home's selector
    assert any(r.name == "tiny-ft" for r in catalog.list_runs())  # and on Training logs

    at = _launch(at, "tiny-cancel", steps=2000)
    _wait(watcher, lambda s: s.state == "running" and s.steps)
    second_tab = open_page("finetune")  # re-attaches: live progress instead of a second launch form
    assert "Training run tiny-cancel" in text(second_tab) and not second_tab.get("form")
    assert of_type(second_tab, "progress") and chart_specs(second_tab)[0]["title"] == "Loss"
    second_tab.button(key="cancel").click().run()
    status = _wait(watcher, lambda s: not s.running)
    assert status.state == "stopped", status.log_tail
    last = load_checkpoint(runs / "tiny-cancel" / "last.pt")
    model_from_checkpoint(last, with_backbone=False)
    assert last["train_state"]["step"] >= 1
    _rerun_until(at, "was cancelled")
    assert "--resume" in at.warning[0].value


def _launch(at, name: str, steps: int, objective: str = "cross-entropy"):
    at.text_input(key="run_name").set_value(name)
    next(r for r in at.radio if r.label == "Objective").set_value(objective)
    next(n for n in at.number_input if n.label == "How many").set_value(steps)
    next(s for s in at.select_slider if s.label == "Batch size").set_value(16)
    next(b for b in at.button if b.label.startswith("Fine-tune on")).click()
    return at.run()


@pytest.mark.slow
def test_finetune_self_critical_runs_from_the_page(tiny_checkpoint, tiny_coco, tiny_cache_dir, monkeypatch, tmp_path):
    runs = point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco, cache=tiny_cache_dir)
    watcher = JobManager(runs)
    at = _launch(open_page("finetune"), "tiny-scst", steps=3, objective="self-critical (CIDEr)")
    assert not at.exception and not at.error
    job = watcher.current()
    cfg = config_from_args(build_parser().parse_args(job.command[3:]))  # [python, -m, captioning, train, ...]
    assert cfg.epochs == 0 and cfg.scst_epochs > 0 and cfg.scst_batch_size == 16
    status = _wait(watcher, lambda s: not s.running)
    assert status.state == "finished", status.log_tail
    steps = [r for r in read_metrics(runs / "tiny-scst" / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(r["phase"] == "scst" and r["reward"] >= 0 and "loss" not in r for r in steps)
    _rerun_until(at, "Run **tiny-scst** finished at step 3")


def _rerun_until(at, wanted: str, timeout: float = 30.0) -> None:
    """Rerun the page, as the live view does every 2 s, until `wanted` shows."""
    deadline = time.time() + timeout
    while wanted not in text(at.run()):
        assert time.time() < deadline, text(at)
        time.sleep(0.5)


def _wait(manager: JobManager, done):
    return wait_for(manager, done, timeout=240.0)  # real training subprocesses: minutes on a loaded machine


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
