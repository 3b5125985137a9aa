"""Command-line flags made from the config dataclasses' fields, and the configs made back from parsed flags.

`add_train_arguments` / `train_config` / `to_argv` for `TrainConfig` (with `ModelConfig`'s fields and the
validation decoding's `--val-*` among them); `add_decode_arguments` / `decode_config` for `DecodeConfig`.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import Field, dataclass, fields
from typing import Any

from captioning.config import VAL_DECODING, VAL_PREFIX, DecodeConfig, ModelConfig, TrainConfig, validation_fields
from captioning.formats import ReadOptions

_NONE = "\0none"  # what a --no-X flag stores, so that "not given" (None) stays distinguishable


@dataclass(frozen=True)
class Flag:
    """One flag: its key in the flat config (and argparse dest), the field it comes from, its default, its type."""

    name: str
    field: Field
    default: Any
    kind: type

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _kind(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def decode_flags(prefix: str = "", base: DecodeConfig = DecodeConfig()) -> list[Flag]:
    chosen = validation_fields() if prefix else fields(DecodeConfig)
    return [Flag(prefix + f.name, f, getattr(base, f.name), _kind(DecodeConfig, f.name)) for f in chosen]


def train_flags() -> list[Flag]:
    """TrainConfig's flags, with ModelConfig's in place of `model` and the `--val-*` decoding's in place of
    `val_decoding`."""
    out = []
    for f in fields(TrainConfig):
        if f.name == "model":
            out += [
                Flag(m.name, m, m.default, _kind(ModelConfig, m.name)) for m in fields(ModelConfig) if m.metadata["cli"]
            ]
        elif f.name == "val_decoding":
            out += decode_flags(VAL_PREFIX, VAL_DECODING)
        else:
            out.append(Flag(f.name, f, f.default, _kind(TrainConfig, f.name)))
    return out


def _add(parser: argparse.ArgumentParser, flag: Flag, fill: bool) -> None:
    """One flag; with `fill` False an unset flag parses to None, so the dataclass default (or a resumed run's
    value) holds."""
    meta = flag.field.metadata
    shown = "" if flag.default is None or meta.get("required") else f" (default: {flag.default})"
    kw: dict[str, Any] = {"help": meta["help"] + shown, "default": flag.default if fill else None, "dest": flag.name}
    if flag.kind is bool:
        action = argparse.BooleanOptionalAction if flag.default else "store_true"
        parser.add_argument(flag.option, *meta.get("aliases", ()), action=action, **kw)
        if meta.get("off_flag") and not flag.name.startswith(VAL_PREFIX):
            parser.add_argument(
                meta["off_flag"], dest=flag.name, action="store_false", help="the same as --no-" + flag.option[2:]
            )
        return
    if meta.get("const") is not None:
        kw.update(nargs="?", const=meta["const"], metavar=meta.get("metavar"))
    required = bool(meta.get("required"))
    kw.setdefault("metavar", meta.get("metavar"))
    parser.add_argument(
        flag.option, *meta.get("aliases", ()), type=flag.kind, choices=meta["choices"], required=required, **kw
    )
    if meta.get("off_flag") and not flag.name.startswith(VAL_PREFIX):  # a number whose 0 is off: --no-constrain
        off = flag.kind(0)  # added after the flag itself: argparse takes the first one's default
        parser.add_argument(
            meta["off_flag"], dest=flag.name, action="store_const", const=off, help=f"the same as {flag.option} 0 (off)"
        )
    if meta.get("none_flag"):
        parser.add_argument(
            meta["none_flag"], dest=flag.name, action="store_const", const=_NONE, help=meta["none_help"]
        )


def add_train_arguments(
    parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None, fill: bool = False
) -> None:
    """A flag per TrainConfig field (or the ones named in `only`)."""
    for flag in train_flags():
        if only is None or flag.name in only:
            _add(parser, flag, fill)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed `add_train_arguments` flags: what was given, the dataclass defaults for the rest."""
    values = {f.name: getattr(args, f.name) for f in train_flags() if getattr(args, f.name, None) is not None}
    return TrainConfig.of(**{k: None if v == _NONE else v for k, v in values.items()})


def to_argv(cfg: TrainConfig) -> list[str]:
    """The `python -m captioning train` flags that rebuild `cfg` (defaults left out)."""
    argv: list[str] = []
    values = cfg.to_dict()
    for flag in train_flags():
        value = values[flag.name]
        if value == flag.default and not flag.field.metadata.get("required"):
            continue
        if isinstance(value, bool):
            argv.append(flag.option if value else "--no-" + flag.option[2:])
        elif value is None:
            argv.append(flag.field.metadata["none_flag"])
        else:
            argv += [flag.option, str(value)]
    return argv


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag per DecodeConfig field, its default filled in (DecodeConfig's own)."""
    for flag in decode_flags():
        _add(parser, flag, fill=True)


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(**{f.name: getattr(args, f.name) for f in decode_flags()})


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


DATA_FLAGS = ("coco_root", "format", "image_column", "caption_column", "val_fraction")  # where a dataset is


def read_options(args: argparse.Namespace) -> ReadOptions:
    """The ReadOptions of parsed DATA_FLAGS."""
    return ReadOptions(args.image_column, args.caption_column, args.val_fraction)
