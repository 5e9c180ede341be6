"""The one trainer: any compressible model, any dataset, one GPU to many through Accelerate.

The loop lives here; its state (state.py), evaluation (evaluation.py), the run folder and its
summary (run_folder.py), the cut controller (cut_controller.py: when to cut and what follows;
cut.py: the cut itself), the optimizer policy (optim.py), the finite-step guard (finite.py) and
checkpoints (checkpoint.py) live beside it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from tqdm.auto import tqdm

from ..flops import FlopMeter
from ..registry import MODEL_INFO_KEYS, build_data, build_model
from ..run_paths import last_checkpoint
from . import rank_hashes, sharded, sharded_checkpoint, tracking
from .checkpoint import (
    CheckpointWriteError,
    load_checkpoint,
    load_checkpoint_model,
    resume_hint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Recipe, recipe_from_dict
from .cut_controller import CutController
from .data import StepBatches
from .evaluation import Evaluation
from .finite import check_finite
from .metrics import Throughput
from .optim import build_optimizer, rewarm_factor, set_lr
from .preemption import PREEMPTED_EXIT_CODE, Preempted, StopSignals, agreed_stop, signal_name
from .rank_hashes import param_hash  # noqa: F401  (runs are compared by it: tests, studies)
from .run_folder import RunFolder, fmt_sizes
from .state import TrainerState


class Trainer(RunFolder, Evaluation):
    """Train ``recipe``; ``extra_loss(model, batch, output) -> Tensor`` adds a loss term
    (distillation, regularisers); ``callbacks`` get ``on_cut(trainer, report)`` and, if they
    define it, ``on_end(trainer)``.

    ``resume`` (a run folder or checkpoint file) continues a run; a recipe that differs from the
    checkpoint's in a key that changes the run (anything outside :data:`config.HARMLESS_KEYS`)
    is refused unless ``allow_recipe_change`` (e.g. to extend ``train.steps``), and then recorded
    in metrics.jsonl and the trainer state. A run folder that already holds a run is refused
    unless this resumes it or ``overwrite`` (which removes the old run's files first)."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        resume: str | Path | None = None,
        extra_loss: Callable | None = None,
        callbacks: list | None = None,
        accelerator=None,
        allow_recipe_change: bool = False,
        overwrite: bool = False,
    ):
        if resume is not None and overwrite:
            raise ValueError(
                f"--resume {resume} and --overwrite contradict each other: --resume continues that run, "
                "--overwrite replaces the run in the run folder; give one of them"
            )
        self.recipe, self.extra_loss, self.callbacks = recipe, extra_loss, list(callbacks or [])
        if recipe.reduction.plots and recipe.reduction.mode != "none":
            from .plots import PlotCallback

            self.callbacks.append(PlotCallback())
        t = recipe.train
        self.run_dir = recipe.run_dir()
        self.ckpt = _load_resume(resume) if resume else None
        changes = self._check_recipe_change(allow_recipe_change)
        trackers = tracking.tracker_names(t.report_to)
        tracking.check_trackers(trackers)
        self.accelerator = acc = _accelerator(recipe, trackers, accelerator)
        sharded.check_supported(acc, recipe)
        self.parallelism = sharded.parallelism(acc)
        if rank_hashes.wanted(acc.num_processes):
            self.callbacks.insert(0, rank_hashes.RankHashes())
        self._claim_run_dir(resume, overwrite)
        set_seed(recipe.seed)
        self.data = build_data(recipe.data, seed=recipe.seed)
        self.task = recipe.task or self.data.info.get("task", "classification")
        if acc.is_main_process:
            _report_repairs(self.data.info)
        # a recall task (data/mqar.py): an LM scored by the accuracy of its labelled answers
        self.answer_accuracy = self.task == "lm" and bool(self.data.info.get("answer_accuracy"))
        ck = self.ckpt
        self.model = self.make_model(ck["state_sizes"] if ck else None)
        if ck and "model" in ck:  # before the optimizer: loading may reshape a layer (a balanced cut's bc_proj)
            load_checkpoint_model(self.model, ck, resume, changes)
        elif ck:  # sharded: loaded after _prepare, into the model as it is then
            sharded_checkpoint.add_projections(self.model, ck.get("projections", {}))
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.step = ck["step"] if ck else 0
        self.state = TrainerState(initial_state_sizes=self.model.state_sizes)
        if ck:
            if "optimizer" in ck:
                self.optimizer.load_state_dict(ck["optimizer"])
            self.state = TrainerState.from_dict(ck["trainer"], self.model.state_sizes)
        self.flop_meter = FlopMeter()  # state.train_flops: every rank's steps, calibrations (compressmamba/flops.py)
        self.saved_step = self.step if ck else None  # the step of the last checkpoint written or loaded
        self.cuts = CutController(self, ck.get("pragmatic_snapshot") if ck else None)
        self.prepare()
        if ck and "sharded_path" in ck:
            sharded_checkpoint.load_sharded(Path(ck["sharded_path"]), self.model, self.optimizer)
        self.batches = StepBatches(
            self.data.train, t.batch_size, recipe.seed, acc.process_index, acc.num_processes, t.grad_accum
        )
        self._stream = None  # training micro-batches, opened by fit() at the current step
        self._fit_start, self._time_base = None, self.state.train_time_s
        # the run's first train row records the parallelism and world size (a resumed run's rows stay
        # those of the uninterrupted run; summary.json records the world size it ended at)
        self._logged_setup = ck is not None
        self._open_outputs(trackers, changes)
        if ck:
            set_rng_state(ck["rng"])
        if recipe.baseline:  # knowledge distillation or Hankel-nuclear-norm regularisation
            from .baselines import attach_baseline

            attach_baseline(self)

    # --- model / optimizer lifecycle ----------------------------------------------------------
    def make_model(self, state_sizes=None):
        """A fresh model of the recipe at ``state_sizes`` (one per layer; None: the recipe's), with
        the recipe's activation checkpointing: the model a resume, a rollback or a sharded cut
        rebuilds."""
        info = {k: v for k, v in self.data.info.items() if k in MODEL_INFO_KEYS}
        extra = {"state_sizes": list(state_sizes)} if state_sizes is not None else {}
        model = build_model(self.recipe.model, **info, **extra)
        if self.recipe.train.activation_checkpointing:
            sharded.checkpoint_blocks(model)
        return model

    def prepare(self):
        """Hand the model and optimizer to Accelerate (DDP wrapping, or FSDP2 sharding: then the
        optimizer's state, keyed by the unsharded parameters, is moved onto the sharded ones)."""
        acc = self.accelerator
        acc.free_memory()
        if not sharded.is_fsdp2(self):
            self.wrapped, self.opt = acc.prepare(self.model, self.optimizer)
            return
        moved = sharded.optimizer_states(self.model, self.optimizer)
        if getattr(acc, "is_fsdp2", False):
            self.wrapped, self.opt = acc.prepare(self.model, self.optimizer)
        else:  # CPU ranks: Accelerate has no FSDP there (sharded.shard_on_cpu)
            self.wrapped = sharded.shard_on_cpu(self.model)
            self.optimizer = build_optimizer(self.wrapped, self.recipe.optim)
            self.opt = acc.prepare_optimizer(self.optimizer)
        self.model = self.wrapped  # sharded in place
        sharded.place_optimizer_states(self.model, self.optimizer, moved)

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Train on with ``optimizer`` (after a cut changed the parameters): re-prepared with
        the model for Accelerate; the learning-rate schedule and step count go on."""
        self.optimizer = optimizer
        self.prepare()
        set_lr(self.opt, self.step, self.recipe.train.steps, self.recipe.optim, self.lr_scale())

    def lr_scale(self) -> float:
        """The multiplier of the scheduled learning rate at this step: ``reduction.rewarm_steps``
        re-warms after the last cut (1 otherwise)."""
        cuts = self.state.cut_steps
        return rewarm_factor(self.step, cuts[-1] if cuts else None, self.recipe.reduction.rewarm_steps)

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    # --- training ----------------------------------------------------------------------------
    def _train_step(self) -> tuple[torch.Tensor, int, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches. Returns the mean loss (a
        0-dim tensor on the device: read it at log steps only), the tokens seen, the learning rate."""
        acc, t = self.accelerator, self.recipe.train
        lr = set_lr(self.opt, self.step, t.steps, self.recipe.optim, self.lr_scale())
        total_loss, n_tokens = torch.zeros((), device=acc.device), 0
        bad_inputs = {}  # input name -> bool tensor: NaN or inf in a micro-batch
        for micro in range(t.grad_accum):
            raw = next(self._stream) if self._stream is not None else self.batches.batch(self.step, micro)
            batch = {k: v.to(acc.device) for k, v in raw.items()}
            for k, v in batch.items():
                if v.is_floating_point():
                    bad_inputs[k] = bad_inputs.get(k, False) | ~torch.isfinite(v).all()
            sync = micro == t.grad_accum - 1
            ctx = self._no_sync() if not sync and acc.num_processes > 1 else contextlib.nullcontext()
            with ctx:
                with acc.autocast():
                    out = self.wrapped(**batch)
                    loss = out.loss
                    if self.extra_loss is not None:
                        loss = loss + self.extra_loss(self.model, batch, out)
                acc.backward(loss / t.grad_accum)
            total_loss += loss.detach().float() / t.grad_accum
            self.state.train_flops += self.flop_meter.train(self.model, batch) * acc.num_processes
            first = batch.get("input_ids", batch.get("inputs"))
            n_tokens += first.shape[0] * (first.shape[1] if first.dim() > 1 else 1)
        grad_norm = None
        if self.recipe.optim.grad_clip:
            grad_norm = acc.clip_grad_norm_(self.wrapped.parameters(), self.recipe.optim.grad_clip)
        check_finite(self, bad_inputs, total_loss, grad_norm, lr)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return total_loss, n_tokens, lr

    @contextlib.contextmanager
    def _no_sync(self):
        """Accumulate gradients locally (no all-reduce) for a micro-batch that is not the last."""
        if sharded.is_fsdp2(self) and not getattr(self.accelerator, "is_fsdp2", False):
            self.wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.wrapped.set_requires_gradient_sync(True)
        else:
            with self.accelerator.no_sync(self.wrapped):
                yield

    def calibration_batches(self):
        """The calibration batches of a cut at the current step (the same on resume)."""
        acc = self.accelerator
        for i in range(self.recipe.reduction.calib_batches):
            b = self.batches.batch((self.step + i) % (self.batches.steps_per_epoch * 1000), 0)
            self.state.train_flops += self.flop_meter.calibration(self.model, b) * acc.num_processes
            yield {k: v.to(acc.device) for k, v in b.items()}

    def _cut(self) -> dict | None:
        """Attempt the cut due at this step (cut_controller.py); the validation results after a
        cut that changed a size, else None."""
        result = self.cuts.run()
        return self.cuts.after(*result) if result is not None else None

    def _sync_time(self) -> None:
        """Keep ``train_time_s`` current: time before this fit() plus time in it."""
        if self._fit_start is not None:
            self.state.train_time_s = self._time_base + (time.time() - self._fit_start)

    def save(self):
        """Write the run's checkpoint at this step (the one entry point: evaluation cadence, the
        end, preemption): sharded (every rank its shards) when the model is, else
        ``checkpoints/last.pt`` from the main process. A write that fails (disk full) is one line on
        every rank naming the file, the OS error and the last good checkpoint; the previous
        checkpoint stays."""
        self._sync_time()
        failed = None
        try:
            if sharded.is_fsdp2(self):
                meta = dict(step=self.step, state_sizes=self.model.state_sizes, rng=rng_state(),
                            trainer=self.state.to_dict(), recipe=self.recipe.to_dict(), pragmatic_snapshot=None,
                            projections=sharded_checkpoint.projection_shapes(self.model))  # fmt: skip
                sharded_checkpoint.save_sharded(self.run_dir / "checkpoints", self.model, self.optimizer, meta,
                                                self.accelerator)  # fmt: skip
            elif self.accelerator.is_main_process:
                save_checkpoint(
                    last_checkpoint(self.run_dir),
                    model=self.model,
                    optimizer=self.optimizer,
                    step=self.step,
                    state_sizes=self.model.state_sizes,
                    trainer_state=self.state.to_dict(),
                    recipe=self.recipe.to_dict(),
                    pragmatic_snapshot=self.cuts.pragmatic_snapshot,
                )
                sharded_checkpoint.drop_sharded(self.run_dir / "checkpoints")
        except OSError as e:  # CheckpointWriteError is one
            failed = f"step {self.step}: {e}. {resume_hint(self.run_dir, self.saved_step)}"
        if self.accelerator.num_processes > 1:
            # every rank raises alike, whichever rank's write failed
            failed = next((f for f in gather_object([failed]) if f), None)
        if failed:
            raise CheckpointWriteError(failed)
        self.saved_step = self.step
        self.accelerator.wait_for_everyone()

    def fit(self) -> dict:
        """Train to ``train.steps``; returns the summary. SIGTERM or SIGUSR1 meanwhile
        (preemption.py) ends it after the current step with a checkpoint and :class:`Preempted`."""
        try:
            with StopSignals() as stop:
                self._loop(stop)
            self._fit_start = None
            return self._finish()
        finally:
            self._release_lock()

    def _loop(self, stop: StopSignals) -> None:
        acc, t = self.accelerator, self.recipe.train
        bar = tqdm(total=t.steps, initial=self.step, disable=not (acc.is_main_process and t.progress),
                   desc=self.recipe.name, dynamic_ncols=True)  # fmt: skip
        self._fit_start, self._time_base = time.time(), self.state.train_time_s
        window, shown_loss, val = Throughput(clock=time.time), "", {}
        self.wrapped.train()
        self._stream = self.batches.stream(self.step, t.steps, t.num_workers)
        while self.step < t.steps:
            loss, n_tok, lr = self._train_step()
            window.count(t.batch_size * t.grad_accum * acc.num_processes, n_tok * acc.num_processes)
            if self.step % t.log_every == 0 or self.step == t.steps:
                if acc.num_processes > 1:  # the mean over every rank's batch, as one process would log it
                    loss = acc.reduce(loss, reduction="mean")
                shown_loss = self._log_train(loss.item(), lr, window)  # the loss leaves the device here only
            window.pause()  # throughput counts training steps only: not evaluation, cuts or checkpoints
            if self.step % t.eval_every == 0 or self.step == t.steps:
                val = self.evaluate_and_track()
            if self.cuts.due():
                val = self._cut() or val
            if self.step % (t.checkpoint_every or t.eval_every) == 0 and self.step < t.steps:
                self.save()  # by default at every evaluation: a crash loses at most eval_every steps
            signum = agreed_stop(acc, stop.received) if self.step < t.steps else None
            if signum is not None:
                bar.close()
                self._preempt(signum)
            window.resume()
            bar.set_postfix(_postfix(shown_loss, self.model.state_sizes, val), refresh=False)
            bar.update(1)
        bar.close()
        self.save()

    def _preempt(self, signum: int) -> None:
        """Stop now (every rank agreed): checkpoint this finished step, say so, raise Preempted."""
        if self.saved_step != self.step:
            self.save()
        msg = (
            f"compressmamba: preempted by {signal_name(signum)} at step {self.step} of "
            f"{self.recipe.train.steps}; checkpoint written: resume with --resume {self.run_dir} "
            f"(exit code {PREEMPTED_EXIT_CODE})"
        )
        if self.accelerator.is_main_process:
            print(msg, file=sys.stderr)
        self.log_row(step=self.step, kind="preempted", signal=signal_name(signum), wall_time=time.time())
        raise Preempted(msg, self.step)

    def _log_train(self, loss: float, lr: float, window: Throughput) -> str:
        """The train row of this step (throughput over the window since the last one); returns
        the loss as the progress bar shows it."""
        samples_per_s, tokens_per_s = window.rates()
        first = {} if self._logged_setup else {"parallelism": self.parallelism, "world_size": self.world_size}
        self._logged_setup = True
        self.log_row(step=self.step, kind="train", loss=loss, lr=lr, state_sizes=self.model.state_sizes,
                  samples_per_s=samples_per_s, tokens_per_s=tokens_per_s, wall_time=time.time(), **first)  # fmt: skip
        return f"{loss:.3f}"

    def _finish(self) -> dict:
        """After the last step: summary, callbacks' ``on_end``, the exported model, trackers."""
        summary = self.summary()
        for cb in self.callbacks:
            if hasattr(cb, "on_end"):
                cb.on_end(self)
        self._export_model()
        tracking.finish(self.accelerator)
        if self.accelerator.is_main_process and self.recipe.train.progress:
            self._print_summary(summary)
        return summary


def _accelerator(recipe: Recipe, trackers: list[str], given: Accelerator | None) -> Accelerator:
    """The run's Accelerator (``given``, or a new one). Several ranks and no GPU: they run on the
    CPU (gloo), e.g. under torchrun. fp16 on the CPU is refused (it would train in fp32 while the
    run records fp16)."""
    t, run_dir = recipe.train, recipe.run_dir()
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    on_cpu = given.device.type == "cpu" if given is not None else cpu or not _has_accelerator()
    if t.mixed_precision == "fp16" and on_cpu:
        raise ValueError(
            "train.mixed_precision = 'fp16': fp16 needs a GPU (on the CPU it would train in fp32 while the run "
            "records fp16); use train.mixed_precision=no or bf16 on the CPU"
        )
    return given or Accelerator(
        mixed_precision=t.mixed_precision,
        cpu=cpu,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "trackers")),
    )


def _load_resume(resume) -> dict:
    """The checkpoint ``--resume`` names: a sharded one (its meta; the tensors load after the
    model is prepared) or ``last.pt``."""
    folder = sharded_checkpoint.sharded_path(resume)
    return sharded_checkpoint.load_meta(folder) if folder is not None else load_checkpoint(resume)


def _report_repairs(info: dict) -> None:
    """Say what the token store repaired in its input, as prepare-data reports it."""
    if "manifest" in info:
        from ..data.text import input_repairs

        repairs = input_repairs(info["manifest"])
        if repairs:
            print(f"compressmamba: token store {info['store']}: {repairs}", file=sys.stderr)


def _postfix(loss: str, sizes: list[int], val: dict) -> dict:
    """The progress bar's fields: the last logged loss, the state sizes, the last validation."""
    post = {"loss": loss, "N": fmt_sizes(sizes)}
    if "accuracy" in val:
        post["val_acc"] = f"{val['accuracy']:.3f}"
    if "perplexity" in val:
        post["val_ppl"] = f"{val['perplexity']:.2f}"
    return post


def _has_accelerator() -> bool:
    """A CUDA, XPU or MPS device is there (Accelerate then trains on it)."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def train(recipe: Recipe | dict, resume=None, **kw) -> dict:
    """Train a recipe (a :class:`Recipe` or its mapping) and return the run's summary."""
    if isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    return Trainer(recipe, resume=resume, **kw).fit()
