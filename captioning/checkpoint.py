"""Self-describing checkpoints: one plain dict of tensors and plain data, `weights_only` loadable."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import pickle
import struct
import subprocess
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from captioning.config import ModelConfig
from captioning.io import atomic_write
from captioning.model import CaptionModel
from captioning.vocab import Vocabulary

FORMAT = "captioning-checkpoint"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent / "shipped" / "default.pt"  # package data: found wherever it is installed
# What a file may ask of memory before it is trusted. Tensors are bounded by the file itself (records stored, not
# compressed; a model's weights must be tensors of the file, shape for shape); these bound the rest.
MAX_PARAMETERS = 250_000_000  # 1 GB in float32; ResNet-152 fine-tuned with a 30k-word attention decoder: ~100M
MAX_PLAIN_DATA = 4 << 20  # the pickle of config, vocabulary, metrics (shipped: 36 KB; a 30k-word vocabulary: ~0.4 MB)
MAX_DIRECTORY = 2 << 20  # the zip's list of records (~90 bytes each; a last.pt of a fine-tuned ResNet: ~3,000)


def default_checkpoint() -> Path:
    """The default model: `$CAPTIONING_CHECKPOINT` when set, else the shipped one inside the package."""
    return Path(os.environ.get("CAPTIONING_CHECKPOINT") or SHIPPED)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message says why."""


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**fields: Any) -> dict[str, Any]:
    """Where a model came from: the caller's fields plus date and git commit."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit(), **fields}


def checkpoint_dict(
    model: CaptionModel,
    vocab: Vocabulary,
    *,
    metrics: dict | None = None,
    provenance: dict | None = None,
    train_state: dict | None = None,
) -> dict[str, Any]:
    cfg = model.cfg
    backbone_state = None
    if cfg.finetune_cnn and model.backbone is not None:
        backbone_state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": cfg.to_dict(),
        "vocab": vocab.to_dict(),
        "decoder_state": {k: v.detach().cpu() for k, v in model.decoder.state_dict().items()},
        "backbone": {"name": cfg.backbone, "source": model.spec.source, "state": backbone_state},
        "metrics": metrics or {},
        "provenance": provenance or {},
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    atomic_write(Path(path), lambda p: torch.save(ckpt, p))


def _directory_size(f: BinaryIO, size: int) -> int:
    """The size of the zip's list of records as its end records declare it, read before zipfile parses that
    list (it keeps ~10 times its bytes in memory); -1 when there is no end record."""
    f.seek(max(0, size - 65_557))  # the end record (22 bytes) follows the records, before a comment of <64 KiB
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return -1
    declared = struct.unpack_from("<I", tail, at + 12)[0]
    if at >= 76 and tail[at - 76 : at - 72] == b"PK\x06\x06":  # zip64's end record, which zipfile believes
        declared = max(declared, struct.unpack_from("<Q", tail, at - 76 + 40)[0])
    return declared


def _check_archive(path: Path, f: BinaryIO) -> zipfile.ZipFile:
    """The file's zip directory, once nothing in it lets torch.load inflate past the file: torch.save writes stored
    (uncompressed) records, so a compressed one, or records declaring more bytes than the file, are not its."""
    size = os.fstat(f.fileno()).st_size
    refuse = f"refusing to load {path}: its"
    if _directory_size(f, size) > MAX_DIRECTORY:
        raise CheckpointError(f"{refuse} list of records is larger than {MAX_DIRECTORY:,} bytes")
    try:
        archive = zipfile.ZipFile(f)
    except Exception:  # zipfile raises many kinds for a damaged or foreign file
        raise CheckpointError(f"{path} is not a checkpoint file (corrupt or another format)") from None
    records = archive.infolist()
    for r in records:
        if r.compress_type != zipfile.ZIP_STORED or r.compress_size != r.file_size:
            raise CheckpointError(f"{refuse} record {r.filename[-60:]!r} is compressed, which torch.save never does")
        if r.filename.endswith("data.pkl") and r.file_size > MAX_PLAIN_DATA:
            raise CheckpointError(f"{refuse} plain data takes {r.file_size:,} bytes (at most {MAX_PLAIN_DATA:,})")
    declared = sum(r.file_size for r in records)
    if declared > size or any(r.header_offset + r.file_size > size for r in records):
        raise CheckpointError(f"{refuse} records declare {declared:,} bytes, more than the file's {size:,}")
    f.seek(0)
    return archive


@contextlib.contextmanager
def _checked(path: Path) -> Iterator[tuple[BinaryIO, zipfile.ZipFile]]:
    """The open file and its zip directory, after `_check_archive`: what is read next is that very file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        yield f, _check_archive(path, f)


def _unbacked_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in `obj` claiming more values than bytes stand behind it (a stride-0 view of one number can
    claim a billion, which a model would copy out at full size), else None; a shared object is walked once."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor) and item.numel() * item.element_size() > item.untyped_storage().nbytes():
            return item
        if isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
    return None


def _torch_load(path: Path, map_location: str | torch.device, mmap: bool = False) -> Any:
    """torch.load with `weights_only=True` of a file `_check_archive` passed; CheckpointError on anything wrong.
    With `mmap` the tensors stay in the file, read only where they are touched."""
    with _checked(path) as (f, _):
        try:
            return torch.load(path if mmap else f, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            if "Unsupported global" in str(exc):
                raise CheckpointError(
                    f"refusing to load {path}: it holds pickled Python objects, which could run code; "
                    "a captioning checkpoint holds only tensors and plain data"
                ) from None
            raise CheckpointError(f"{path} is not a checkpoint file (corrupt or another format)") from None
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def _check_format(path: Path, ckpt: Any) -> None:  # the marker and a version this code reads
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a captioning checkpoint (no '{FORMAT}' marker)")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this code reads ({FORMAT_VERSION}); "
            "update the captioning package"
        )


class _PlainData(pickle.Unpickler):
    """A checkpoint's pickle with each tensor read as None: the Python docs' "restricting globals", the only
    globals stand-ins that run nothing. C-fast: torch's weights_only reader takes 10 ms for the shipped model's."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2") or (module == "torch" and name.endswith("Storage")):
            return lambda *args: None
        raise pickle.UnpicklingError(f"Unsupported global {module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None


def read_metrics(path: Path) -> dict[str, Any]:
    """A checkpoint's `metrics` from its plain data alone (at most MAX_PLAIN_DATA bytes; ~1 ms for the shipped
    model), its tensors never read; CheckpointError as for a load."""
    path = Path(path)
    with _checked(path) as (_, archive):
        try:
            pkl = next(name for name in archive.namelist() if name.endswith("data.pkl"))
            ckpt = _PlainData(io.BytesIO(archive.read(pkl))).load()
        except Exception:  # no plain data, or a global the stand-ins lack: torch's reader, tensors mapped, says
            ckpt = _torch_load(path, "cpu", mmap=True)
    _check_format(path, ckpt)
    metrics = ckpt.get("metrics") or {}
    return metrics if isinstance(metrics, dict) else {}


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint with `weights_only=True`; CheckpointError on anything wrong. Memory stays
    within the file's size: see `_check_archive` and `_unbacked_tensor`."""
    path = Path(path)
    ckpt = _torch_load(path, map_location)
    _check_format(path, ckpt)
    for key in ("model_config", "vocab", "decoder_state"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path} is missing '{key}' (or it is not a mapping)")
    for key in ("metrics", "provenance", "backbone"):
        if not isinstance(ckpt.get(key) or {}, dict):
            raise CheckpointError(f"{path} has a malformed '{key}'")
    words = ckpt.get("concept_words") or {}
    well_formed = isinstance(words, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v) for k, v in words.items()
    )
    if not well_formed:
        raise CheckpointError(f"{path} has a malformed 'concept_words' (class index -> list of words)")
    if (fake := _unbacked_tensor(ckpt)) is not None:
        behind = f"{fake.numel():,} values has {fake.untyped_storage().nbytes():,} bytes behind it"
        raise CheckpointError(f"refusing to load {path}: a tensor of {behind}")
    return ckpt


def model_from_checkpoint(
    ckpt: dict[str, Any],
    *,
    with_backbone: bool = True,
    pretrained: bool = True,
    source: str = "checkpoint",
) -> tuple[CaptionModel, Vocabulary]:
    """Rebuild the model and vocabulary a checkpoint describes, weights loaded, in eval mode."""
    try:
        vocab = Vocabulary.from_dict(ckpt["vocab"])
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: bad config or vocabulary ({exc})") from None
    if cfg.vocab_size != len(vocab):
        raise CheckpointError(f"{source}: the model expects {cfg.vocab_size} words but its vocabulary has {len(vocab)}")
    backbone_state = (ckpt.get("backbone") or {}).get("state")
    _check_sizes(cfg, ckpt.get("decoder_state"), backbone_state if with_backbone else None, source)
    model = CaptionModel.create(cfg, pretrained=pretrained and backbone_state is None, with_backbone=with_backbone)
    try:
        model.decoder.load_state_dict(ckpt["decoder_state"])
        if with_backbone and backbone_state is not None:
            model.backbone.load_state_dict(backbone_state)
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError) as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise CheckpointError(f"{source}: weights do not match its config ({first[0].strip()[:200]})") from None
    return model.eval(), vocab


def _check_sizes(cfg: ModelConfig, decoder_state: Any, backbone_state: Any, source: str) -> None:
    """Build the model on the meta device (shapes, no memory) and compare each weight with the checkpoint's, so a
    config claiming more than the file holds is refused before anything is allocated: a model that passes holds
    exactly the bytes of its tensors in the file (plus the fixed ImageNet backbone)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "copying from a non-meta parameter")  # the concepts' fixed head
            skeleton = CaptionModel.create(cfg, pretrained=False, with_backbone=backbone_state is not None)
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{source}: bad config ({(str(exc) or repr(exc)).splitlines()[0][:200]})") from None
    parts = [("", skeleton.decoder.state_dict(), decoder_state)]
    if backbone_state is not None:
        parts.append(("backbone ", skeleton.backbone.state_dict(), backbone_state))
    count = sum(t.numel() for _, expected, _ in parts for t in expected.values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: its config asks for {count:,} weights, more than the {MAX_PARAMETERS:,}")
    for what, expected, state in parts:
        if problem := _mismatch(expected, state):
            raise CheckpointError(f"{source}: weights do not match its config ({what}{problem[:200]})")


def _mismatch(expected: dict[str, torch.Tensor], state: Any) -> str | None:
    """How a state dict differs from a module's (meta) one, as load_state_dict would say it; None if it fits."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a mapping of tensors"
    missing = [k for k in expected if k not in state]
    if missing:
        return f"Missing key(s) in state_dict: {', '.join(map(repr, missing))}"
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        return f"Unexpected key(s) in state_dict: {', '.join(repr(str(k)[:60]) for k in unexpected[:5])}"
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
            return f"size mismatch for {key}: {_describe(got)} in the checkpoint, {_describe(want)} in the model"
        if _unbacked_tensor(got) is not None:
            return f"{key} has {got.numel():,} values but {got.untyped_storage().nbytes():,} bytes behind them"
    return None


def _describe(t: Any) -> str:
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" if isinstance(t, torch.Tensor) else type(t).__name__
