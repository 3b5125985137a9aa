"""One source of configuration: flags and help come from the dataclasses, a config goes back to its command line,
old flat configs load, bad values are refused by name, and a resumed run keeps its own settings."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from captioning.cli import build_parser, main
from captioning.config import VAL_DECODING, DecodeConfig, ModelConfig, TrainConfig
from captioning.flags import train_config as config_from_args
from captioning.rundir import read_metrics
from captioning.train import Callbacks, fit


def _parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_field_has_a_flag_whose_help_gives_the_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    names = [f.name for f in fields(TrainConfig) if f.name not in ("model", "val_decoding")]
    names += [f.name for f in fields(ModelConfig) if f.metadata["cli"]]
    names += ["val_method", "val_beam_size", "val_max_len", "val_block_repeats"]  # the validation decoding's
    for name in names:
        assert "--" + name.replace("_", "-") in text
    assert "--no-val" in text and "--resume" in text
    for default in ("(default: 0.001)", "(default: efficientnet_lite0)", "(default: cache/features)"):
        assert default in text


def test_unset_flags_take_the_dataclass_defaults():
    cfg = _parse("--coco-root", "data/coco", "--out", "runs/a")
    assert cfg == TrainConfig(coco_root="data/coco", out="runs/a")


@pytest.mark.parametrize(
    "argv",
    [
        ("--decoder", "attention", "--flip", "--lr", "3e-4", "--scst-epochs", "2", "--no-val"),
        ("--epochs", "0", "--scst-epochs", "4", "--scst-lr", "1e-4", "--init-from", "x.pt", "--max-steps", "7"),
        ("--end-to-end", "--finetune-cnn", "--backbone", "resnet18", "--hidden-size", "64", "--val-limit", "5"),
        ("--val-method", "beam", "--val-beam-size", "5", "--no-val-block-repeats", "--val-max-len", "12"),
    ],
)
def test_a_config_turns_back_into_the_command_line_that_rebuilds_it(argv):
    cfg = _parse("--coco-root", "r", "--out", "o", *argv)
    assert _parse(*cfg.to_argv()) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_an_old_flat_config_loads_and_unknown_keys_are_ignored():
    old = {"coco_root": "r", "out": "o", "decoder": "attention", "attention_size": 64, "finetune_cnn": False,
           "epochs": 3, "a_setting_from_the_future": 1}  # fmt: skip
    cfg = TrainConfig.from_dict(old)
    assert cfg.model.decoder == "attention" and cfg.model.attention_size == 64 and cfg.epochs == 3


def test_an_old_config_with_flat_validation_settings_loads_them_into_its_decoding():
    cfg = TrainConfig.from_dict(
        {"coco_root": "r", "out": "o", "val_method": "beam", "val_beam_size": 5, "val_limit": 9}
    )
    assert cfg.val_decoding == DecodeConfig(method="beam", beam_size=5, name_novel=False, constrain=0.0)
    assert cfg.val_limit == 9 and cfg.to_dict()["val_method"] == "beam"  # still saved flat, as before
    assert TrainConfig.from_dict({"coco_root": "r", "out": "o"}).val_decoding == VAL_DECODING


def test_validation_cannot_be_asked_to_name_or_guide():
    with pytest.raises(ValueError, match="validation scores the decoder alone"):
        TrainConfig(coco_root="r", out="o", val_decoding=DecodeConfig())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": "64"}, "batch_size must be int"),
        ({"lr": None}, "lr must be float"),
        ({"epochs": True}, "epochs must be int"),
        ({"decoder": "transformer"}, "decoder must be one of: showtell, attention"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of: constant, cosine, step"),
        ({"backbone": "vgg"}, "backbone must be one of: efficientnet_lite0"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_values_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"coco_root": "r", "out": "o", **change})


def test_an_int_where_a_float_goes_is_accepted():
    assert TrainConfig.of(coco_root="r", out="o", lr=1).lr == 1.0


def test_resume_from_the_command_line_keeps_the_runs_own_settings(tiny_coco, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig.of(coco_root=str(tiny_coco), out=str(out), epochs=3, batch_size=16, vocab_threshold=1,
                         cache_dir=str(tmp_path / "cache"), num_workers=0, log_every=1, val_split=None)  # fmt: skip
    steps: list[dict] = []
    assert fit(cfg, Callbacks(on_step=steps.append, should_stop=lambda: len(steps) == 2)).status == "stopped"
    # no --epochs, --batch-size or --no-val: the run's 3 epochs of 8 steps without validation go on
    assert main(["train", "--coco-root", str(tiny_coco), "--out", str(out), "--resume"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 25))
    assert not [r for r in records if r["kind"] == "epoch"] and records[-1]["event"] == "finished"
    assert main(["train", "--coco-root", str(tiny_coco), "--out", str(out), "--resume", "--epochs", "4"]) == 0
    assert read_metrics(out / "metrics.jsonl")[-2]["step"] == 32  # an override still counts
