"""The training loop shared by the CLI and the app: `fit(config, callbacks)` builds a run and its `Trainer`.

Trains the decoder on cached frozen-CNN features (or end to end through the CNN), cross-entropy first and
then optionally self-critical (`phases.py`), validates each epoch with BLEU-4 / CIDEr, writes the run
folder (`rundir.py`) atomically, resumes exactly, stops cleanly on request, and runs under `torchrun`
with DistributedDataParallel.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captioning import distributed as dist
from captioning import rundir
from captioning.checkpoint import CheckpointError, checkpoint_dict, provenance, save_checkpoint
from captioning.config import TrainConfig
from captioning.data import warn_skipped
from captioning.datasets import batches_for_epoch
from captioning.device import resolve_device
from captioning.features import ExtractionStopped
from captioning.phases import CrossEntropyPhase, Phase
from captioning.trainrun import (
    RESUME_OVERRIDES,
    BestStart,
    Callbacks,
    Optimiser,
    Run,
    TrainState,
    build_run,
    resume_point,
    validation_interval,
)
from captioning.validate import validate


@dataclass
class FitResult:
    status: str  # "finished", "stopped" (on request; resumable) or "early_stopped"
    step: int
    epoch: int
    best_cider: float | None
    out_dir: Path


def fit(
    cfg: TrainConfig, callbacks: Callbacks | None = None, resume: bool = False, progress: bool = False
) -> FitResult:
    """Train as `cfg` says. With `resume`, continue `cfg.out/last.pt` where it stopped: its saved config
    holds, but for the RESUME_OVERRIDES fields, which come from `cfg`. A run killed before its first
    checkpoint starts again from the beginning, with the config it was started with."""
    cb = callbacks or Callbacks()
    started, resume_ckpt = time.time(), None  # the time budget (max_minutes) counts from here
    folder = rundir.RunDir(cfg.out)
    if resume:
        resume_ckpt, saved = resume_point(folder)
        cfg = replace(saved, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
    ctx = dist.setup(cfg.device)
    device = ctx.device if ctx.world > 1 else resolve_device(cfg.device)
    try:
        with rundir.own_folder(folder, ctx, resume):
            if resume and resume_ckpt is None and ctx.rank == 0:
                folder.metrics.unlink(missing_ok=True)  # the records of an attempt that saved nothing
            try:
                run = build_run(cfg, ctx, device, resume_ckpt, cb, progress)
            except ExtractionStopped:
                return _stopped_before_training(cfg, ctx, folder)
            return Trainer(run, cb, resume_ckpt, started).train()
    finally:
        dist.teardown(ctx)


def _stopped_before_training(cfg: TrainConfig, ctx: dist.DistContext, folder: rundir.RunDir) -> FitResult:
    """Stopped on request while features were extracted: the finished shards are cached, and a resume
    (with no last.pt yet) starts the run again, extracting only what is missing."""
    if ctx.rank == 0:
        folder.path.mkdir(parents=True, exist_ok=True)
        rundir.RunLog(folder.metrics).event(rundir.STOPPED, 0, 0, during="features")
    return FitResult(rundir.STOPPED, 0, 0, None, folder.path)


class Trainer:
    """One run's training: the run, where it stands, its optimiser and callbacks. `train()` runs the epochs
    of its phases until done, stopped or out of patience; the log's last record says which."""

    def __init__(self, run: Run, cb: Callbacks, resume_ckpt: dict | None, started: float | None = None) -> None:
        self.run, self.cb = run, cb
        minutes = run.cfg.max_minutes
        self.deadline = None if minutes is None else (started or time.time()) + 60 * minutes
        self.out_of_time = False
        self.val_every = validation_interval(run.cfg, run.phases)
        self.opt = Optimiser.create(run)
        self.best_start = BestStart(run.cfg) if run.phases.scst is not None else None
        self.last_metrics: dict = {}  # the latest validation, saved in every checkpoint
        torch.manual_seed(run.cfg.seed + 1)  # dropout draws start the same whether or not the cache was just built
        self.state = TrainState()
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        else:
            self._start()
        self.t0 = time.time() - self.state.elapsed  # when training began, counting the attempts before a resume

    def train(self) -> FitResult:
        run, state, phases, cfg = self.run, self.state, self.run.phases, self.run.cfg
        status = rundir.FINISHED
        while True:
            if not state.validated and self._epoch_over():  # also after a kill in validation or the saves
                if self.end_epoch(phases.at(state.epoch)):
                    status = rundir.EARLY_STOPPED
                    break
            if state.epoch >= cfg.epochs + cfg.scst_epochs or state.step >= phases.total_steps or self.out_of_time:
                break
            phase = phases.at(state.epoch)
            if phase is phases.scst and state.epoch == cfg.epochs and state.batch == 0:
                self._start_self_critical()
            if self.train_epoch(phase):
                self.save(rundir.LAST)
                status = rundir.STOPPED
                self._event(rundir.STOPPED)
                break
        self._event(status, best_cider=state.best_cider, elapsed=round(time.time() - self.t0, 3))
        return FitResult(status, state.step, state.epoch, state.best_cider, run.folder.path)

    def _epoch_over(self) -> bool:
        """Whether the batches of the current epoch (or the run's steps) are all done."""
        state, cfg, phases = self.state, self.run.cfg, self.run.phases
        phase = phases.at(state.epoch) if state.epoch < cfg.epochs + cfg.scst_epochs else None
        over = phase is not None and state.batch >= phase.steps_per_epoch
        return state.step >= phases.total_steps or over or self.out_of_time

    def _event(self, name: str, **fields) -> None:
        if self.run.log:
            self.run.log.event(name, self.state.step, self.state.epoch, **fields)

    def _start(self) -> None:
        run, xe, scst = self.run, self.run.phases.xe, self.run.phases.scst
        self._event(
            rundir.START,
            steps_per_epoch=xe.steps_per_epoch,
            scst_steps_per_epoch=scst.steps_per_epoch if scst else 0,
            total_steps=run.phases.total_steps,
            images=run.data.images,
            captions=len(xe.data.pairs),
            vocab=len(run.vocab),
            world_size=run.ctx.world,
        )

    def _restore(self, ckpt: dict) -> None:
        """The training state, optimizer, scaler and RNG of `last.pt`; the log loses records past it."""
        run, opt, ts = self.run, self.opt, ckpt["train_state"]
        try:
            self.state = TrainState.from_dict(ts)
            if self.best_start is not None:
                self.best_start.resume(self.state, run.folder.best)
            opt.adam.load_state_dict(ts["optimizer"])
            if ts.get("scaler"):
                opt.scaler.load_state_dict(ts["scaler"])
            torch.set_rng_state(ts["rng_cpu"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{run.folder.last}: its training state cannot be resumed ({str(exc)[:200]})"
            ) from None
        self.last_metrics = ckpt.get("metrics", {})
        if run.log:
            run.log.truncate_after(self.state.step, self.state.validated)
        self._event(rundir.RESUME)

    def _start_self_critical(self) -> None:
        """SCST begins: from the best cross-entropy epoch's weights (see BestStart), with fresh Adam moments."""
        state = self.state
        if self.best_start.begin(self.run.model, state):
            self._event(rundir.SCST_START, from_epoch=state.best_epoch, best_cider=state.best_cider)
        self.opt.restart(self.run.cfg.scst_lr)

    def train_epoch(self, phase: Phase) -> bool:
        """The rest of the current epoch of `phase`, from `state.batch` on; True when stopped on request."""
        run, state, cfg, ctx = self.run, self.state, self.run.cfg, self.run.ctx
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
            loss, reward, images = phase.loss(self.opt.trainable, batch, run.device)
            lr = phase.lr_at(state.step)
            self.opt.step(loss, lr, cfg.grad_clip)
            state.step += 1
            state.batch += 1
            state.validated = False
            if state.step % cfg.log_every == 0 or state.step == run.phases.total_steps:
                self.log_step(phase, loss, reward, lr, images * ctx.world / max(time.time() - t_step, 1e-6))
            state.elapsed = time.time() - self.t0
            if state.step % cfg.save_every == 0:
                self.save(rundir.LAST)
            if dist.any_true(bool(self.cb.should_stop and self.cb.should_stop()), ctx):
                stopped = True
                break
            self.out_of_time = self.deadline is not None and dist.any_true(time.time() >= self.deadline, ctx)
            if state.step >= run.phases.total_steps or self.out_of_time:
                break
        if isinstance(phase, CrossEntropyPhase):
            warn_skipped(f"split {cfg.train_split}", sorted(set(phase.bad_images)), "could not be read")
            phase.bad_images.clear()
        return stopped

    def log_step(self, phase: Phase, loss: torch.Tensor, reward: float | None, lr: float, images_per_s: float) -> None:
        """A step record (loss averaged over the ranks) to the log and `on_step`."""
        run, state = self.run, self.state
        record = {"kind": rundir.STEP, "step": state.step, "epoch": state.epoch + state.batch / phase.steps_per_epoch}
        record.update(phase.log_fields(dist.mean(loss.detach(), run.ctx), reward, run.ctx))
        elapsed, total = round(time.time() - self.t0, 3), run.phases.total_steps
        record.update(lr=lr, elapsed=elapsed, images_per_s=round(images_per_s, 1), total_steps=total)
        if run.log:
            run.log.write(record)
        if self.cb.on_step:
            self.cb.on_step(record)

    def end_epoch(self, phase: Phase) -> bool:
        """Validate, keep the best, save; True when early stopping ends the run."""
        run, state, cfg = self.run, self.state, self.run.cfg
        if state.batch >= phase.steps_per_epoch:
            state.epoch += 1
            state.batch = 0
        if not self._validates_now():  # max_validations: this epoch end is neither validated nor saved
            state.validated = True
            return False
        record = self.validate()
        if record is not None:
            self.last_metrics = {"val": record}
            if run.log:
                run.log.write(record)
            if self.cb.on_epoch:
                self.cb.on_epoch(record)
        improved = record is None or state.best_cider is None or record["CIDEr"] > state.best_cider
        if improved:
            state.best_cider = record["CIDEr"] if record else None
            state.best_epoch = state.epoch
            state.bad_epochs = 0
            if self.best_start is not None:
                self.best_start.remember(run.model, state)
        else:
            state.bad_epochs += 1
        state.validated = True
        if improved:  # best.pt first: last.pt says this epoch is done, so it must never be ahead of best.pt
            self.save(rundir.BEST)
        self.save(rundir.LAST)
        return cfg.patience is not None and state.bad_epochs >= cfg.patience

    def _validates_now(self) -> bool:
        """Every `val_every`-th epoch end is validated and saved, and the run's last one."""
        state, cfg = self.state, self.run.cfg
        last = state.step >= self.run.phases.total_steps or state.epoch >= cfg.epochs + cfg.scst_epochs
        return last or self.out_of_time or state.epoch % self.val_every == 0

    def validate(self) -> dict | None:
        """The epoch record of a validation, or None without a validation split."""
        run = self.run
        if run.data.val is None:
            return None
        cfg, model = run.cfg, run.model
        model.eval()
        try:
            metrics = validate(
                model,
                run.vocab,
                run.data.val,
                run.data.val_store,
                run.device,
                run.ctx,
                cfg.val_decoding,
                cfg.val_limit,
                cfg.batch_size,
                on_batch=lambda done, total: run.stages("validation", done, total),
            )
        finally:
            model.train()
        return {"kind": rundir.EPOCH, "step": self.state.step, "epoch": self.state.epoch, **metrics}

    def save(self, name: str) -> None:
        """Write `last.pt` (with the training state) or `best.pt`, atomically, on rank 0."""
        run, state, cfg = self.run, self.state, self.run.cfg
        if run.ctx.rank != 0:
            return
        train_state = None
        if name == rundir.LAST:
            train_state = {
                **asdict(state),
                "config": cfg.to_dict(),
                "optimizer": self.opt.adam.state_dict(),
                "scaler": self.opt.scaler.state_dict() if run.phases.xe.use_amp else None,
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
        ckpt = checkpoint_dict(
            run.model, run.vocab, metrics=self.last_metrics, provenance=prov, train_state=train_state
        )
        save_checkpoint(run.folder.path / name, ckpt)
