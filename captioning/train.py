"""The training loop shared by the CLI and the app: `fit(config, callbacks)`.

Trains the decoder on cached frozen-CNN features (or end to end through the CNN), cross-entropy first and
then optionally self-critical (`phases.py`), validates each epoch with BLEU-4 / CIDEr, writes the run
folder (`rundir.py`) atomically, resumes exactly, stops cleanly on request, and runs under `torchrun`
with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captioning import distributed as dist
from captioning import rundir
from captioning.checkpoint import CheckpointError, checkpoint_dict, load_checkpoint, provenance, save_checkpoint
from captioning.config import TrainConfig, check_types
from captioning.data import warn_skipped
from captioning.datasets import batches_for_epoch
from captioning.device import resolve_device
from captioning.features import ExtractionStopped
from captioning.phases import CrossEntropyPhase
from captioning.trainrun import Run, build_run
from captioning.validate import validate

# What a resumed run may change; everything else comes from its saved config.
RESUME_OVERRIDES = (
    "epochs",
    "scst_epochs",
    "max_steps",
    "patience",
    "device",
    "num_workers",
    "log_every",
    "save_every",
)


@dataclass
class Callbacks:
    """Where progress goes is the caller's business: a terminal bar, a chart, a test list."""

    on_step: Callable[[dict], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    on_phase: Callable[[str, int, int], None] | None = None  # ("features train", done, total)
    should_stop: Callable[[], bool] | None = None


@dataclass
class FitResult:
    status: str  # "finished", "stopped" (on request; resumable) or "early_stopped"
    step: int
    epoch: int
    best_cider: float | None
    out_dir: Path


@dataclass
class TrainState:
    """Where a run is; saved in `last.pt` so a resume continues exactly."""

    step: int = 0  # optimizer steps so far
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch done (a place in its order, skipped batches included)
    best_cider: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    elapsed: float = 0.0  # training seconds, across resumes
    validated: bool = False  # whether the epoch end at this step was validated and saved (a resume re-validates)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        state = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        check_types(state, "the training state's ")
        return state


@dataclass
class Optimiser:
    """Adam over the trainable parameters, with the AMP scaler and the (DDP-wrapped) module to call."""

    params: list[torch.nn.Parameter]
    trainable: torch.nn.Module
    adam: torch.optim.Adam
    scaler: torch.amp.GradScaler

    def step(self, loss: torch.Tensor, lr: float, grad_clip: float) -> None:
        self.adam.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.adam)
        torch.nn.utils.clip_grad_norm_(self.params, grad_clip)
        for group in self.adam.param_groups:
            group["lr"] = lr
        self.scaler.step(self.adam)
        self.scaler.update()


def fit(
    cfg: TrainConfig, callbacks: Callbacks | None = None, resume: bool = False, progress: bool = False
) -> FitResult:
    """Train as `cfg` says. With `resume`, continue `cfg.out/last.pt` where it stopped: its saved config
    holds, but for the RESUME_OVERRIDES fields, which come from `cfg`. A run killed before its first
    checkpoint starts again from the beginning, with the config it was started with."""
    cb = callbacks or Callbacks()
    resume_ckpt = None
    folder = rundir.RunDir(cfg.out)
    if resume:
        resume_ckpt, saved = _resume_point(folder)
        cfg = replace(saved, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
    ctx = dist.setup(cfg.device)
    device = ctx.device if ctx.world > 1 else resolve_device(cfg.device)
    try:
        with _own_folder(folder, ctx, resume):
            if resume and resume_ckpt is None and ctx.rank == 0:
                folder.metrics.unlink(missing_ok=True)  # the records of an attempt that saved nothing
            try:
                run = build_run(cfg, ctx, device, resume_ckpt, progress, cb.on_phase, cb.should_stop)
            except ExtractionStopped:
                return _stopped_before_training(cfg, ctx, folder)
            return train(run, resume_ckpt, cb)
    finally:
        dist.teardown(ctx)


def _stopped_before_training(cfg: TrainConfig, ctx: dist.DistContext, folder: rundir.RunDir) -> FitResult:
    """Stopped on request while features were extracted: the finished shards are cached, and a resume
    (with no last.pt yet) starts the run again, extracting only what is missing."""
    if ctx.rank == 0:
        folder.path.mkdir(parents=True, exist_ok=True)
        rundir.RunLog(folder.metrics).event(rundir.STOPPED, 0, 0, during="features")
    return FitResult(rundir.STOPPED, 0, 0, None, folder.path)


@contextlib.contextmanager
def _own_folder(folder: rundir.RunDir, ctx: dist.DistContext, resume: bool):
    """Hold the run folder's lock (rank 0) while training; refuse a folder that another trainer holds, or one
    that holds a run already when this is not a resume. Every rank gets the same answer."""
    lock, problem = rundir.RunLock(folder), None
    if ctx.rank == 0:
        try:
            lock.__enter__()
        except rundir.RunLockedError as exc:
            problem = str(exc)
        if problem is None and not resume and folder.holds_run():
            problem = (
                f"{folder.path} already holds a run; continue it with --resume (same --out), or choose "
                "another --out (or delete that folder first)"
            )
    problem = dist.broadcast(problem, ctx)
    try:
        if problem:
            raise rundir.RunFolderError(problem)
        yield
    finally:
        lock.__exit__()


def resume_config(out: str | Path, **overrides) -> TrainConfig:
    """The saved config of the run in `out`, with RESUME_OVERRIDES fields changed by `overrides`."""
    unknown = set(overrides) - set(RESUME_OVERRIDES)
    if unknown:
        raise ValueError(f"a resumed run can change only {', '.join(RESUME_OVERRIDES)} (not {', '.join(unknown)})")
    return replace(_resume_point(rundir.RunDir(out))[1], **overrides)


def _resume_point(folder: rundir.RunDir) -> tuple[dict | None, TrainConfig]:
    """(last.pt, its config), or (None, config.json's) for a run that was killed before its first checkpoint."""
    if folder.last.is_file() or not folder.config.is_file():
        ckpt = _resume_checkpoint(folder)
        return ckpt, TrainConfig.from_dict(ckpt["train_state"]["config"])
    try:
        return None, TrainConfig.from_dict(json.loads(folder.config.read_text(encoding="utf-8"))["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise rundir.RunFolderError(f"{folder.config} cannot be read ({str(exc)[:200]}); nothing to resume") from None


def _resume_checkpoint(folder: rundir.RunDir) -> dict:
    if not folder.last.is_file():
        raise FileNotFoundError(f"nothing to resume: {folder.last} does not exist")
    ckpt = load_checkpoint(folder.last)
    if "train_state" not in ckpt:
        raise ValueError(f"{folder.last} has no training state to resume from")
    return ckpt


def train(run: Run, resume_ckpt: dict | None, cb: Callbacks) -> FitResult:
    """Epochs of the run's phases until done, stopped or out of patience; the log's last record says which."""
    cfg = run.cfg
    params = [p for p in run.model.parameters() if p.requires_grad]
    trainable = dist.wrap(run.model if cfg.end_to_end else run.model.decoder, run.ctx)
    scaler = torch.amp.GradScaler("cuda", enabled=run.xe.use_amp)
    opt = Optimiser(params, trainable, torch.optim.Adam(params, lr=cfg.lr), scaler)
    torch.manual_seed(cfg.seed + 1)  # dropout draws start the same whether or not the cache was just built
    state = _restore(run, opt, resume_ckpt) if resume_ckpt is not None else _start(run)
    status, t0 = rundir.FINISHED, time.time() - state.elapsed
    while True:
        if not state.validated and _epoch_over(run, state):  # also after a kill in validation or the saves
            if end_epoch(run, run.phase(state.epoch), state, opt, cb):
                status = rundir.EARLY_STOPPED
                break
        if state.epoch >= cfg.epochs + cfg.scst_epochs or state.step >= run.total_steps:
            break
        phase = run.phase(state.epoch)
        if phase is run.scst and state.epoch == cfg.epochs and state.batch == 0:
            _start_self_critical(run, state, opt)
        if train_one_epoch(run, phase, state, opt, cb, t0):
            _save(run, state, opt, rundir.LAST)
            status = rundir.STOPPED
            if run.log:
                run.log.event(rundir.STOPPED, state.step, state.epoch)
            break
    if run.log:
        run.log.event(status, state.step, state.epoch, best_cider=state.best_cider, elapsed=round(time.time() - t0, 3))
    return FitResult(status, state.step, state.epoch, state.best_cider, run.folder.path)


def _epoch_over(run: Run, state: TrainState) -> bool:
    """Whether the batches of the current epoch (or the run's steps) are all done."""
    phase = run.phase(state.epoch) if state.epoch < run.cfg.epochs + run.cfg.scst_epochs else None
    return state.step >= run.total_steps or (phase is not None and state.batch >= phase.steps_per_epoch)


def _start(run: Run) -> TrainState:
    if run.log:
        xe, scst = run.xe, run.scst
        run.log.event(
            rundir.START,
            0,
            0,
            steps_per_epoch=xe.steps_per_epoch,
            scst_steps_per_epoch=scst.steps_per_epoch if scst else 0,
            total_steps=run.total_steps,
            images=run.images,
            captions=len(xe.data.pairs),
            vocab=len(run.vocab),
            world_size=run.ctx.world,
        )
    return TrainState()


def _restore(run: Run, opt: Optimiser, ckpt: dict) -> TrainState:
    """The training state, optimizer, scaler and RNG of `last.pt`; the log loses records past it."""
    ts = ckpt["train_state"]
    try:
        state = TrainState.from_dict(ts)
        if (
            run.scst
            and run.scst.restarts_from_best(state.epoch, state.batch, state.best_epoch)
            and run.folder.best.is_file()
        ):
            run.scst.best_weights = load_checkpoint(run.folder.best)["decoder_state"]
        opt.adam.load_state_dict(ts["optimizer"])
        if ts.get("scaler"):
            opt.scaler.load_state_dict(ts["scaler"])
        torch.set_rng_state(ts["rng_cpu"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{run.folder.last}: its training state cannot be resumed ({str(exc)[:200]})") from None
    run.last_metrics = ckpt.get("metrics", {})
    if run.log:
        run.log.truncate_after(state.step, state.validated)
        run.log.event(rundir.RESUME, state.step, state.epoch)
    return state


def _start_self_critical(run: Run, state: TrainState, opt: Optimiser) -> None:
    """SCST begins: from the best cross-entropy epoch's weights (later epochs overfit: val CIDEr falls), with
    fresh Adam moments, since the reward's gradients are nothing like the cross-entropy's."""
    scst = run.scst
    if scst.restarts_from_best(state.epoch, state.batch, state.best_epoch) and scst.best_weights is not None:
        run.model.decoder.load_state_dict(scst.best_weights)
        if run.log:
            run.log.event(
                rundir.SCST_START, state.step, state.epoch, from_epoch=state.best_epoch, best_cider=state.best_cider
            )
    scst.best_weights = None
    opt.adam = torch.optim.Adam(opt.params, lr=run.cfg.scst_lr)


def train_one_epoch(run: Run, phase, state: TrainState, opt: Optimiser, cb: Callbacks, t0: float) -> bool:
    """The rest of the current epoch of `phase`, from `state.batch` on; True when stopped on request."""
    cfg, ctx = run.cfg, run.ctx
    run.model.train()
    phase.data.set_epoch(state.epoch)
    batches = batches_for_epoch(len(phase.data), phase.batch_size, cfg.seed, state.epoch, ctx.rank, ctx.world)
    loader = DataLoader(
        phase.data,
        batch_sampler=batches[state.batch :],
        collate_fn=phase.collate,
        num_workers=phase.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed + state.epoch),
    )  # not dropout's RNG
    stopped = False
    for batch in loader:
        if phase.skip(batch, ctx):  # every image of this batch was unreadable
            state.batch += 1  # a place in the epoch, not an optimizer step
            continue
        t_step = time.time()
        loss, reward, images = phase.loss(opt.trainable, batch, run.device)
        lr = phase.lr_at(state.step)
        opt.step(loss, lr, cfg.grad_clip)
        state.step += 1
        state.batch += 1
        state.validated = False
        if state.step % cfg.log_every == 0 or state.step == run.total_steps:
            _log_step(
                run, phase, state, (loss, reward, lr), images * ctx.world / max(time.time() - t_step, 1e-6), t0, cb
            )
        state.elapsed = time.time() - t0
        if state.step % cfg.save_every == 0:
            _save(run, state, opt, rundir.LAST)
        if dist.any_true(bool(cb.should_stop and cb.should_stop()), ctx):
            stopped = True
            break
        if state.step >= run.total_steps:
            break
    if isinstance(phase, CrossEntropyPhase):
        warn_skipped(f"split {cfg.train_split}", sorted(set(phase.bad_images)), "could not be read")
        phase.bad_images.clear()
    return stopped


def _log_step(run, phase, state, result, images_per_s, t0, cb) -> None:
    loss, reward, lr = result
    record = {"kind": rundir.STEP, "step": state.step, "epoch": state.epoch + state.batch / phase.steps_per_epoch}
    record.update(phase.log_fields(dist.mean(loss.detach(), run.ctx), reward, run.ctx))
    record.update(
        {
            "lr": lr,
            "elapsed": round(time.time() - t0, 3),
            "images_per_s": round(images_per_s, 1),
            "total_steps": run.total_steps,
        }
    )
    if run.log:
        run.log.write(record)
    if cb.on_step:
        cb.on_step(record)


def end_epoch(run: Run, phase, state: TrainState, opt: Optimiser, cb: Callbacks) -> bool:
    """Validate, keep the best, save; True when early stopping ends the run."""
    cfg = run.cfg
    if state.batch >= phase.steps_per_epoch:
        state.epoch += 1
        state.batch = 0
    record = _validate(run, state)
    if record is not None:
        run.last_metrics = {"val": record}
        if run.log:
            run.log.write(record)
        if cb.on_epoch:
            cb.on_epoch(record)
    improved = record is None or state.best_cider is None or record["CIDEr"] > state.best_cider
    if improved:
        state.best_cider = record["CIDEr"] if record else None
        state.best_epoch = state.epoch
        state.bad_epochs = 0
        if run.scst is not None and state.epoch <= cfg.epochs:
            run.scst.remember(run.model)
    else:
        state.bad_epochs += 1
    state.validated = True
    if improved:  # best.pt first: last.pt says this epoch is done, so it must never be ahead of best.pt
        _save(run, state, opt, rundir.BEST)
    _save(run, state, opt, rundir.LAST)
    return cfg.patience is not None and state.bad_epochs >= cfg.patience


def _validate(run: Run, state: TrainState) -> dict | None:
    if run.val is None:
        return None
    cfg, model = run.cfg, run.model
    model.eval()
    try:
        metrics = validate(
            model,
            run.vocab,
            run.val,
            run.val_store,
            run.device,
            run.ctx,
            cfg.val_method,
            cfg.val_beam_size,
            cfg.val_limit,
            cfg.batch_size,
        )
    finally:
        model.train()
    return {"kind": rundir.EPOCH, "step": state.step, "epoch": state.epoch, **metrics}


def _save(run: Run, state: TrainState, opt: Optimiser, name: str) -> None:
    """Write `last.pt` (with the training state) or `best.pt`, atomically, on rank 0."""
    if run.ctx.rank != 0:
        return
    cfg, train_state = run.cfg, None
    if name == rundir.LAST:
        train_state = {
            **asdict(state),
            "config": cfg.to_dict(),
            "optimizer": opt.adam.state_dict(),
            "scaler": opt.scaler.state_dict() if run.xe.use_amp else None,
            "rng_cpu": torch.get_rng_state(),
        }
    prov = provenance(
        coco_root=str(cfg.coco_root),
        train_split=cfg.train_split,
        val_split=cfg.val_split,
        steps=state.step,
        epochs=state.epoch,
        init_from=cfg.init_from,
        world_size=run.ctx.world,
    )
    ckpt = checkpoint_dict(run.model, run.vocab, metrics=run.last_metrics, provenance=prov, train_state=train_state)
    save_checkpoint(run.folder.path / name, ckpt)
