"""`captioning export`: a checkpoint as ONNX, run with onnxruntime by `caption`, `serve` and `exported_captioner`.

Run: python -m captioning export --checkpoint runs/x/best.pt --out model.onnx

Writes three graphs and a description beside them: `model.onnx` (preprocessed images -> the decoder's features),
`model.init.onnx` (features -> the decoder's first state), `model.step.onnx` (a word and the state -> the next
word's log-probabilities, the state, the attention), and `model.json` (config, vocabulary, concept words, metrics).
Beam search, repeat blocking and naming stay in Python, shared with the PyTorch model (`decoding`): only the
network runs in onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from captioning.backbones import get_spec
from captioning.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from captioning.config import ModelConfig
from captioning.io import atomic_write, atomic_write_text, read_json
from captioning.model import feature_kind, grid_to_features
from captioning.vocab import Vocabulary

FORMAT = 1
OPSET = 17
MAX_DESCRIPTION = 50_000_000  # bytes of model.json (a vocabulary of 100k words is about 2 MB)


def paths(out: Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("")
    return {"encoder": out, "init": stem.with_suffix(".init.onnx"), "step": stem.with_suffix(".step.onnx"),
            "meta": stem.with_suffix(".json")}  # fmt: skip


class _Encoder(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.backbone, self.kind = model.backbone, feature_kind(model.cfg)

    def forward(self, pixels):
        return grid_to_features(self.backbone(pixels), self.kind)


class _Init(torch.nn.Module):
    def __init__(self, decoder, keys: list[str]) -> None:
        super().__init__()
        self.decoder, self.keys = decoder, keys

    def forward(self, feats):
        state = self.decoder.init_state(feats)
        return tuple(state[k] for k in self.keys)


class _Step(torch.nn.Module):
    def __init__(self, decoder, keys: list[str], changing: list[str]) -> None:
        super().__init__()
        self.decoder, self.keys, self.changing = decoder, keys, changing

    def forward(self, tokens, *state):
        logp, new, alpha = self.decoder.step(tokens, dict(zip(self.keys, state)))
        return (logp, *(new[k] for k in self.changing), alpha if alpha is not None else logp[:, :1])


@torch.inference_mode(False)
def export(checkpoint: Path, out: Path) -> dict[str, Path]:
    """Write the ONNX graphs and model.json for `checkpoint`; each file atomically, the description last."""
    ckpt = load_checkpoint(Path(checkpoint))
    model, vocab = model_from_checkpoint(ckpt, source=str(checkpoint))
    model = model.eval()
    size = get_spec(model.cfg.backbone).preprocess.size
    pixels = torch.rand(2, 3, size, size)
    with torch.no_grad():
        feats = _Encoder(model)(pixels)
        state = model.decoder.init_state(feats)
        _, new, _ = model.decoder.step(torch.tensor([1, 2]), state)
    keys = list(state)
    changing = [k for k in keys if new[k] is not state[k]]  # h and c; the projected grid passes through
    files = paths(out)
    batch = {0: "batch"}
    graphs = [
        ("encoder", _Encoder(model), (pixels,), ["pixels"], ["features"]),
        ("init", _Init(model.decoder, keys), (feats,), ["features"], keys),
        ("step", _Step(model.decoder, keys, changing), (torch.tensor([1, 2]), *state.values()),
         ["tokens", *(f"in_{k}" for k in keys)], ["logprobs", *(f"out_{k}" for k in changing), "attention"]),
    ]  # fmt: skip
    for name, module, args, inputs, outputs in graphs:
        axes = {n: batch for n in inputs + outputs}

        def write(tmp: Path, module=module, args=args, inputs=inputs, outputs=outputs, axes=axes) -> None:
            with torch.no_grad():
                torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs,
                                  dynamic_axes=axes, opset_version=OPSET, dynamo=False)  # fmt: skip

        atomic_write(files[name], write)
    meta = {"format": FORMAT, "model_config": ckpt["model_config"], "vocab": ckpt["vocab"], "state": keys,
            "changing": changing, "attention": feature_kind(model.cfg) == "grid",
            **{k: ckpt.get(k) or {} for k in ("concept_words", "metrics", "provenance")}}  # fmt: skip
    atomic_write_text(files["meta"], json.dumps(meta))
    return files


def cache_root() -> Path:
    """Where derived files that can be made again live: $CAPTIONING_CACHE, else ~/.cache/captioning."""
    return Path(os.environ.get("CAPTIONING_CACHE") or Path.home() / ".cache" / "captioning")


def encoder_digest(model) -> str:
    """A name for the encoder's graph that changes with anything that changes its output: the backbone, its
    input size, the feature kind and every weight (a fine-tuned CNN is a different encoder)."""
    kind, size = feature_kind(model.cfg), get_spec(model.cfg.backbone).preprocess.size
    digest = hashlib.sha256(f"{model.cfg.backbone}|{kind}|{size}|{OPSET}".encode())
    for name, tensor in model.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{model.cfg.backbone}-{digest.hexdigest()[:16]}"


@torch.inference_mode(False)
def cached_encoder(model, root: Path | None = None) -> ExportedModel:
    """The model's encoder in onnxruntime, exported once into the cache (atomically: processes that start
    together each write a whole file, and the last rename wins) and read from there afterwards."""
    path = (root or cache_root()) / "onnx" / f"{encoder_digest(model)}.onnx"
    if path.is_file():
        try:
            return ExportedModel({"encoder": path}, model.cfg)
        except Exception:  # noqa: BLE001 (a damaged or foreign file under that name: make it again)
            path.unlink(missing_ok=True)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        size = get_spec(model.cfg.backbone).preprocess.size

        def write(tmp: Path) -> None:
            with torch.no_grad(), warnings.catch_warnings():  # the exporter's notes mean nothing to a user
                warnings.simplefilter("ignore")
                torch.onnx.export(_Encoder(model).eval(), (torch.rand(2, 3, size, size),), str(tmp),
                                  input_names=["pixels"], output_names=["features"],
                                  dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                                  opset_version=OPSET, dynamo=False)  # fmt: skip

        atomic_write(path, write)
    return ExportedModel({"encoder": path}, model.cfg)


class _Session:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # its threads would otherwise spin after each run, taking the cores from PyTorch's decoding (measured:
        # the beam search took twice as long right after an onnxruntime encoder)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs) -> list[torch.Tensor]:
        feeds = {k: v.detach().cpu().numpy() for k, v in inputs.items()}
        return [torch.from_numpy(np.asarray(x)) for x in self.session.run(self.outputs, feeds)]


class ExportedModel:
    """Stands in for a CaptionModel in `Captioner`: its config, preprocessing and `encode`, run by onnxruntime."""

    def __init__(self, files: dict[str, Path], cfg: ModelConfig) -> None:
        self.cfg, self.spec = cfg, get_spec(cfg.backbone)
        self.encoder = _Session(files["encoder"])

    def to(self, device) -> ExportedModel:
        return self

    def eval(self) -> ExportedModel:
        return self

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels=pixels.float())[0]


class ExportedDecoder:
    """The decoder's `init_state` and `step`, run by onnxruntime, for the shared decoding code."""

    def __init__(self, files: dict[str, Path], keys: list[str], changing: list[str], attention: bool) -> None:
        self.init, self.stepper = _Session(files["init"]), _Session(files["step"])
        self.keys, self.changing, self.attention = keys, changing, attention

    def to(self, device) -> ExportedDecoder:
        return self

    def eval(self) -> ExportedDecoder:
        return self

    def init_state(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, self.init(features=feats.float())))

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]):
        logp, *changed, alpha = self.stepper(tokens=tokens.long(), **{f"in_{k}": state[k] for k in self.keys})
        return logp, {**state, **dict(zip(self.changing, changed))}, alpha if self.attention else None


def exported_captioner(path: Path):
    """A `Captioner` over the exported model at `path` (model.onnx, its siblings beside it)."""
    from captioning.inference import Captioner

    files = paths(path)
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"{path}: an export is model.onnx with its siblings; missing {', '.join(missing)}")
    try:
        if files["meta"].stat().st_size > MAX_DESCRIPTION:
            raise ValueError("too large")
        meta = read_json(files["meta"].read_text(encoding="utf-8"))
        cfg, vocab = ModelConfig.from_dict(meta["model_config"]), Vocabulary.from_dict(meta["vocab"])
        keys, changing, attention = list(meta["state"]), list(meta["changing"]), bool(meta["attention"])
        model, decoder = ExportedModel(files, cfg), ExportedDecoder(files, keys, changing, attention)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged export of any kind is one line
        raise CheckpointError(f"{path} is not a readable export ({type(exc).__name__}: {str(exc)[:200]})") from None
    info = {k: meta.get(k) or {} for k in ("model_config", "metrics", "provenance", "concept_words")}
    return Captioner(model, vocab, "cpu", {**info, "path": str(path)}, decoder)
