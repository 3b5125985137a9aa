"""What a newcomer meets first: numbers that say what they mean and what they were measured on, a Browse search
that finds plurals and links that find their image again, a caption cut short that says so, a Fine-tune run
that says what it is doing before its first step."""

from __future__ import annotations

from pathlib import Path

from app_fixtures import image_bytes, of_type, open_page, point_app, text

from app.background import Job
from app.charts import runs_summary
from app.jobs import JobStatus
from app.render import alternatives_frame, search_captions, word_confidence_html
from captioning.data import CocoSplit
from captioning.decoding import Hypothesis
from captioning.inference import Caption
from captioning.rundir import read_metrics

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ROOT = REPO / "captioning" / "sample"


def test_search_finds_plurals_and_singulars():
    split = CocoSplit.load(SAMPLE_ROOT, "train")
    plural = {i for i in split.ids if any(" dogs" in c.lower() for c in split.captions[i])}
    singular = {i for i in split.ids if any(" dog " in f" {c.lower()} " for c in split.captions[i])}
    assert plural - singular, "the sample should hold an image whose captions say only 'dogs'"
    assert set(search_captions(split, "dog")) == set(search_captions(split, "dogs")) >= plural | singular
    assert search_captions(split, "dogs frisbee") == search_captions(split, "dog frisbees")


def test_browse_suggests_the_split_that_has_matches_and_links_carry_the_split(monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, sample=True)
    train, val = (CocoSplit.load(SAMPLE_ROOT, s) for s in ("train", "val"))
    words = lambda split: {w for i in split.ids for c in split.captions[i] for w in c.lower().split()}  # noqa: E731
    only_train = sorted(w for w in words(train) - words(val) if w.isalpha() and len(w) > 5)[0]
    at = open_page("browse")
    at.main.text_input[0].set_value(only_train).run()
    assert not at.exception and "other splits have matches" in at.info[0].value and " in train" in at.info[0].value

    # a link to a train image names its split: opened cold, it finds the image
    image_id = train.ids[2]
    cold = open_page("browse")
    cold.query_params.update(image=str(image_id), split="train")
    cold.run()
    assert not cold.exception and not cold.warning
    assert all(r in text(cold) for r in train.captions[image_id])


def test_a_scored_tile_labels_the_model_caption_and_the_reference(tiny_checkpoint, tiny_coco, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint, coco=tiny_coco)
    at = open_page("browse")
    next(b for b in at.button if b.label == "Score this page").click().run()
    tiles = [c.value for c in at.main.caption if "CIDEr" in c.value]
    assert len(tiles) == 8 and all("Model: _" in t and "Reference: " in t for t in tiles)
    at.button(key="open-" + str(CocoSplit.load(tiny_coco, "val").ids[0])).click().run()
    assert "higher is better" in text(at) and "0 whenever no 4-word sequence matches" in text(at)


def test_home_says_when_the_maximum_length_cut_a_caption(tiny_checkpoint, monkeypatch, tmp_path):
    point_app(monkeypatch, tmp_path, checkpoint=tiny_checkpoint)
    at = open_page("home")
    next(s for s in at.sidebar.slider if s.label.startswith("Maximum length")).set_value(5).run()
    at.file_uploader[0].set_value(("blue.png", image_bytes("blue", "square"), "image/png")).run()
    heading = next(m.value for m in at.markdown if m.value.startswith("### "))
    assert heading.endswith("\u2026") and "reached the maximum length" in text(at)


def test_a_named_subject_is_shown_first_and_its_number_is_labelled_as_the_encoders():
    decoder_best = Hypothesis("A dog sitting on a table.", [4, 5, 6], -1.2, -0.4, [0.5, 0.6, 0.7])
    other = Hypothesis("A cat on a table.", [4, 7, 6], -1.5, -0.5, [0.5, 0.4, 0.7])
    cap = Caption("A lion sitting on a table.", ["a", "lion", "sitting"], [0.5, 0.89, 0.7], -1.2, -0.4,
                  [decoder_best, other], named=("lion", 0.89), named_at=1)  # fmt: skip
    frame = alternatives_frame(cap)
    assert list(frame["caption"]) == ["A lion sitting on a table.", "A dog sitting on a table.", "A cat on a table."]
    assert frame["from"][0].startswith("shown") and "named by the encoder" in frame["from"][0]
    chips = word_confidence_html(cap.words, cap.word_probs, cap.named_at)
    assert chips.count("the encoder&#x27;s class probability") + chips.count("the encoder's class probability") == 1
    assert chips.count("the decoder's word probability") == 2


def test_training_logs_say_what_each_number_means_and_where_the_shipped_scst_began(monkeypatch, tmp_path):
    log = REPO / "captioning" / "shipped" / "default-metrics.jsonl"
    summary = runs_summary({"shipped": read_metrics(log)})
    # a log without the event: the best cross-entropy epoch by CIDEr before the first SCST step, as the card says
    start = summary["SCST started from epoch"][0]
    assert start != "no SCST phase" and int(start) >= 1
    cross_entropy_only = [r for r in read_metrics(log) if r.get("phase") != "scst" and r.get("event") != "scst_start"]
    assert runs_summary({"xe": cross_entropy_only})["SCST started from epoch"][0] == "no SCST phase"  # not "None"
    assert f"(epoch {int(start)}, where SCST starts)" in (REPO / "captioning" / "shipped" / "README.md").read_text()
    point_app(monkeypatch, tmp_path, checkpoint=REPO / "captioning" / "shipped" / "default.pt")
    at = open_page("logs")
    shown = text(at)
    assert not at.exception and len(of_type(at, "vega_lite_chart")) >= 4
    for phrase in ("Loss: cross-entropy", "Perplexity: e to the loss", "BLEU-4: how many", "CIDEr: agreement"):
        assert phrase in shown
    assert shown.count("lower is better") >= 2 and shown.count("higher is better") >= 2


def test_fine_tune_says_it_is_preparing_before_the_first_step(tmp_path):
    job = Job(pid=1, name="r", out=str(tmp_path / "r"), started="now", command=["train"])
    assert JobStatus(job, "running").progress_text().startswith("Preparing: loading the model")
    assert JobStatus(job, "running", 4, 200, [{"step": 4}]).progress_text().startswith("Running: step 4 of 200")
