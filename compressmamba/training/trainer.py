"""The one trainer: any compressible model, any dataset, one GPU to many through Accelerate.

The loop lives here; evaluation (evaluation.py), the run folder and its summary
(run_folder.py), the schedule (schedule.py), the cut (cut.py), the optimizer policy (optim.py)
and checkpoints (checkpoint.py) live beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..registry import MODEL_INFO_KEYS, build_data, build_model
from . import tracking
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint, set_rng_state
from .config import Recipe, recipe_from_dict
from .cut import CutReport, compression_event
from .data import StepBatches
from .evaluation import Evaluation
from .optim import build_optimizer, carry_optimizer_state, rewarm_factor, set_lr, snapshot_state
from .run_folder import RunFolder, fmt_sizes
from .schedule import attempt_steps, rule_rank, stepped_rank


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):  # buffers (BatchNorm statistics) are per rank
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Trainer(RunFolder, Evaluation):
    """Train ``recipe``; ``extra_loss(model, batch, output) -> Tensor`` adds a loss term
    (distillation, regularisers); ``callbacks`` get ``on_cut(trainer, report)``.

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
        self.recipe = recipe
        self.extra_loss = extra_loss
        self.callbacks = list(callbacks or [])
        if recipe.reduction.plots and recipe.reduction.mode != "none":
            from .plots import PlotCallback

            self.callbacks.append(PlotCallback())
        t = recipe.train
        # Several ranks and no GPU: run them on the CPU (gloo), e.g. under torchrun.
        cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.run_dir = recipe.run_dir()
        self.ckpt = load_checkpoint(resume) if resume else None
        changes = self._check_recipe_change(allow_recipe_change)
        on_cpu = accelerator.device.type == "cpu" if accelerator is not None else cpu or not _has_accelerator()
        if t.mixed_precision == "fp16" and on_cpu:
            raise ValueError(
                "train.mixed_precision = 'fp16': fp16 needs a GPU (on the CPU it would train in fp32 while the run "
                "records fp16); use train.mixed_precision=no or bf16 on the CPU"
            )
        trackers = tracking.tracker_names(t.report_to)
        tracking.check_trackers(trackers)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=t.mixed_precision,
            cpu=cpu,
            log_with=trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "trackers")
            ),
        )
        acc = self.accelerator
        self._claim_run_dir(resume, overwrite)
        set_seed(recipe.seed)
        self.data = build_data(recipe.data, seed=recipe.seed)
        self.task = recipe.task or self.data.info.get("task", "classification")
        if acc.is_main_process and "manifest" in self.data.info:  # as prepare-data reports it
            from ..data.text import input_repairs

            repairs = input_repairs(self.data.info["manifest"])
            if repairs:
                print(f"compressmamba: token store {self.data.info['store']}: {repairs}", file=sys.stderr)
        # a recall task (data/mqar.py): an LM scored by the accuracy of its labelled answers
        self.answer_accuracy = self.task == "lm" and bool(self.data.info.get("answer_accuracy"))
        sizes = self.ckpt["state_sizes"] if self.ckpt else None
        self.model = self._build_model(sizes)
        if self.ckpt:  # before the optimizer: loading may reshape a layer (a balanced cut's bc_proj)
            self._load_checkpoint_model(resume, changes)
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.step = 0
        self.state = {
            "best_val": None,
            "test_at_best": None,
            "val_at_best": None,
            "cut_time_s": 0.0,
            "train_time_s": 0.0,
            "n_cuts": 0,
            "cutting_stopped": False,
            "attempts_done": [],
            "initial_state_sizes": self.model.state_sizes,
            "recipe_changes": [],
            "cut_steps": [],  # steps whose cut changed a size (the learning-rate re-warm starts there)
            "target_sizes": None,  # reduction.budget final: each layer's final size, set at the first attempt
        }
        self.pragmatic_snapshot = None  # the pragmatic schedule's rollback point
        if self.ckpt:
            self.optimizer.load_state_dict(self.ckpt["optimizer"])
            self.step = self.ckpt["step"]
            self.state.update(self.ckpt["trainer"])
            self.pragmatic_snapshot = self.ckpt.get("pragmatic_snapshot")
        self._saved_step = self.step if self.ckpt else None
        self._prepare()
        self.batches = StepBatches(
            self.data.train, t.batch_size, recipe.seed, acc.process_index, acc.num_processes, t.grad_accum
        )
        self.attempts = attempt_steps(recipe.reduction, t.steps)
        self._stream = None  # training micro-batches, opened by fit() at the current step
        self._fit_start, self._time_base = None, self.state["train_time_s"]
        self._open_outputs(trackers, changes)
        if self.ckpt:
            set_rng_state(self.ckpt["rng"])
        if recipe.baseline:  # knowledge distillation or Hankel-nuclear-norm regularisation
            from .baselines import attach_baseline

            attach_baseline(self)

    # --- model / optimizer lifecycle ----------------------------------------------------------
    def _build_model(self, state_sizes=None):
        info = {k: v for k, v in self.data.info.items() if k in MODEL_INFO_KEYS}
        extra = {"state_sizes": list(state_sizes)} if state_sizes is not None else {}
        return build_model(self.recipe.model, **info, **extra)

    def _prepare(self):
        acc = self.accelerator
        acc.free_memory()
        self.wrapped, self.opt = acc.prepare(self.model, self.optimizer)

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Train on with ``optimizer`` (after a cut changed the parameters): re-prepared with
        the model for Accelerate; the learning-rate schedule and step count go on."""
        self.optimizer = optimizer
        self._prepare()
        set_lr(self.opt, self.step, self.recipe.train.steps, self.recipe.optim, self.lr_scale())

    def lr_scale(self) -> float:
        """The multiplier of the scheduled learning rate at this step: ``reduction.rewarm_steps``
        re-warms after the last cut (1 otherwise)."""
        cuts = self.state["cut_steps"]
        return rewarm_factor(self.step, cuts[-1] if cuts else None, self.recipe.reduction.rewarm_steps)

    @property
    def unwrapped(self):
        return self.model

    # --- training ----------------------------------------------------------------------------
    def _train_step(self) -> tuple[float, int, float]:
        acc, t = self.accelerator, self.recipe.train
        lr = set_lr(self.opt, self.step, t.steps, self.recipe.optim, self.lr_scale())
        total_loss, n_tokens = 0.0, 0
        bad_inputs = []
        for micro in range(t.grad_accum):
            raw = next(self._stream) if self._stream is not None else self.batches.batch(self.step, micro)
            batch = {k: v.to(acc.device) for k, v in raw.items()}
            bad_inputs += [k for k, v in batch.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            sync = micro == t.grad_accum - 1
            ctx = acc.no_sync(self.wrapped) if not sync and acc.num_processes > 1 else contextlib.nullcontext()
            with ctx:
                with acc.autocast():
                    out = self.wrapped(**batch)
                    loss = out.loss
                    if self.extra_loss is not None:
                        loss = loss + self.extra_loss(self.model, batch, out)
                acc.backward(loss / t.grad_accum)
            total_loss += loss.detach().float().item() / t.grad_accum
            first = batch.get("input_ids", batch.get("inputs"))
            n_tokens += first.shape[0] * (first.shape[1] if first.dim() > 1 else 1)
        grad_norm = None
        if self.recipe.optim.grad_clip:
            grad_norm = acc.clip_grad_norm_(self.wrapped.parameters(), self.recipe.optim.grad_clip)
        self._check_finite(bad_inputs, total_loss, grad_norm, lr)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return total_loss, n_tokens, lr

    def _check_finite(self, bad_inputs: list[str], loss: float, grad_norm, lr: float) -> None:
        """FloatingPointError (on every rank) when a batch, the loss or the gradients are not
        finite, saying which, and where to resume from. fp16 runs leave inf gradients to the
        loss scaler, which skips those steps."""
        acc = self.accelerator
        if grad_norm is None and self.recipe.train.mixed_precision != "fp16":
            grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.stack(grads).norm() if grads else torch.zeros(())
        grads_ok = self.recipe.train.mixed_precision == "fp16" or bool(torch.isfinite(torch.as_tensor(grad_norm)))
        flags = torch.tensor(
            [float(bool(bad_inputs)), float(not math.isfinite(loss)), float(not grads_ok)], device=acc.device
        )
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        if not flags.any():
            return
        step = self.step + 1
        if flags[0] > 0:
            where = f" ({', '.join(sorted(set(bad_inputs)))})" if bad_inputs else " (on another rank)"
            raise FloatingPointError(
                f"the training batch at step {step} holds NaN or inf{where}: the data is at fault, not the "
                f"learning rate; clean the dataset (a resumed run replays the same batch). {self._resume_hint()}"
            )
        what = "loss" if flags[1] > 0 else "gradients"
        raise FloatingPointError(
            f"{what} not finite at step {step} (lr {lr:.3g}) with finite inputs: lower optim.lr or set "
            f"optim.grad_clip (a resume then needs --allow-recipe-change). {self._resume_hint()}"
        )

    def _load_checkpoint_model(self, resume, changes: list[dict]) -> None:
        """The checkpoint's weights into the model the recipe built; a model of another shape (a
        resume under --allow-recipe-change with other model keys) is refused in one line."""
        try:
            self.model.load_state_dict(self.ckpt["model"])
        except RuntimeError:
            have = self.model.state_dict()
            odd = [
                f"{k} {list(v.shape)} in the checkpoint, {list(have[k].shape)} in the recipe's model"
                for k, v in self.ckpt["model"].items()
                if k in have and tuple(v.shape) != tuple(have[k].shape)
            ] or [f"the parameter names differ ({sorted(set(self.ckpt['model']) ^ set(have))[:3]} ...)"]
            keys = [f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes if c["key"].startswith("model.")]
            raise ValueError(
                f"--resume {resume}: the checkpoint's model does not fit the recipe's ({odd[0]}); a resume cannot "
                f"change the model's shape ({', '.join(keys) or 'model keys'}): resume with the checkpoint's model "
                "keys, or start a new run elsewhere (out_dir=NEW_FOLDER)"
            ) from None

    def _resume_hint(self) -> str:
        ck = checkpoint_path(self.run_dir)
        if self._saved_step is not None and ck.is_file():
            return (
                f"The last checkpoint (step {self._saved_step}) is in {ck.parent}: resume with --resume {self.run_dir}."
            )
        return "No checkpoint has been written yet: restart the run."

    def calibration_batches(self):
        """The calibration batches of a cut at the current step (the same on resume)."""
        acc = self.accelerator
        for i in range(self.recipe.reduction.calib_batches):
            b = self.batches.batch((self.step + i) % (self.batches.steps_per_epoch * 1000), 0)
            yield {k: v.to(acc.device) for k, v in b.items()}

    def _cut(self) -> tuple[CutReport, dict] | None:
        red = self.recipe.reduction
        if red.mode == "pragmatic":
            val = self.evaluate("val")
            snap = self.pragmatic_snapshot
            if snap is not None and self._score(val) < snap["score"] - red.pragmatic_tolerance:
                self._restore(snap)
                self.state["cutting_stopped"] = True
                self.pragmatic_snapshot = None  # cutting has stopped: no later checkpoint needs it
                self._log(
                    step=self.step,
                    kind="rollback",
                    to_sizes=snap["sizes"],
                    wall_time=time.time(),
                    val_score=self._score(val),
                    snapshot_score=snap["score"],
                )
                return None
            self.pragmatic_snapshot = {
                "score": self._score(val),
                "sizes": self.model.state_sizes,
                "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "optimizer": _clone_state(self.optimizer.state_dict()),
            }
        before = snapshot_state(self.model, self.optimizer)
        # random selection: seeded by (seed, step), so a resumed run draws what it would have drawn
        rng = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + self.step)
        report = compression_event(
            self.model, red, self.step, self.calibration_batches(), self.accelerator, rng, plan=self._size_plan()
        )
        if report.changed:
            new_opt = build_optimizer(self.model, self.recipe.optim)
            if red.moments == "slice":
                counts = carry_optimizer_state(self.model, new_opt, before, report.maps)
            else:  # reset: every parameter's Adam moments and step start again
                counts = {"reset": sum(1 for _ in self.model.parameters())}
            self.set_optimizer(new_opt)
        else:
            counts = {}
        return report, counts

    def _size_plan(self):
        """``reduction.budget: final``: the first attempt sets each layer's target by the τ rule on
        the uncut model; attempt k of K then cuts to the k-th point of the geometric path from
        the initial size to the target (None for per_attempt: each cut follows the rule anew)."""
        red = self.recipe.reduction
        if red.budget != "final":
            return None
        k, n_attempts = self.attempts.index(self.step) + 1, len(self.attempts)
        initial = self.state["initial_state_sizes"]
        if self.state["target_sizes"] is None:
            self.state["target_sizes"] = [None] * len(initial)
        targets = self.state["target_sizes"]

        def plan(i: int, energy) -> int:
            if targets[i] is None:
                targets[i] = rule_rank(energy, red)
            return stepped_rank(initial[i], targets[i], k, n_attempts)

        return plan

    def _restore(self, snap):
        self.model = self._build_model(snap["sizes"]).to(self.accelerator.device)
        self.model.load_state_dict(snap["model"])
        self.optimizer = build_optimizer(self.model, self.recipe.optim)
        self.optimizer.load_state_dict(snap["optimizer"])
        self._prepare()

    def _sync_time(self) -> None:
        """Keep ``train_time_s`` current: time before this fit() plus time in it."""
        if self._fit_start is not None:
            self.state["train_time_s"] = self._time_base + (time.time() - self._fit_start)

    def save(self):
        self._sync_time()
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.run_dir / "checkpoints" / "last.pt",
                model=self.model,
                optimizer=self.optimizer,
                step=self.step,
                state_sizes=self.model.state_sizes,
                trainer_state=self.state,
                recipe=self.recipe.to_dict(),
                pragmatic_snapshot=self.pragmatic_snapshot,
            )
        self._saved_step = self.step
        self.accelerator.wait_for_everyone()

    def _log_rank_hash(self, what: str):
        acc = self.accelerator
        if acc.num_processes > 1:
            with open(self.run_dir / f"rank{acc.process_index}_hashes.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": self.step,
                            "what": what,
                            "sizes": self.model.state_sizes,
                            "hash": param_hash(self.model),
                        }
                    )
                    + "\n"
                )

    def fit(self) -> dict:
        acc, t = self.accelerator, self.recipe.train
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            disable=not (acc.is_main_process and t.progress),
            desc=self.recipe.name,
            dynamic_ncols=True,
        )
        self._fit_start, self._time_base = time.time(), self.state["train_time_s"]
        window = _Window()
        last_val = {}
        self.wrapped.train()
        self._stream = self.batches.stream(self.step, t.steps, t.num_workers)
        while self.step < t.steps:
            loss, n_tok, lr = self._train_step()
            window.count(t.batch_size * t.grad_accum * acc.num_processes, n_tok * acc.num_processes)
            if self.step % t.log_every == 0 or self.step == t.steps:
                samples_per_s, tokens_per_s = window.rates()
                self._log(
                    step=self.step,
                    kind="train",
                    loss=loss,
                    lr=lr,
                    state_sizes=self.model.state_sizes,
                    samples_per_s=samples_per_s,
                    tokens_per_s=tokens_per_s,
                    wall_time=time.time(),
                )
            window.pause()  # throughput counts training steps only: not evaluation, cuts or checkpoints
            if self.step % t.eval_every == 0 or self.step == t.steps:
                last_val = self.evaluate_and_track()
            if (
                self.step in self.attempts
                and self.step not in self.state["attempts_done"]
                and not self.state["cutting_stopped"]
            ):
                self.state["attempts_done"].append(self.step)
                result = self._cut()
                if result is not None:
                    report, counts = result
                    self.state["cut_time_s"] += report.seconds
                    if report.changed:
                        self.state["n_cuts"] += 1
                        self.state["cut_steps"].append(self.step)
                        self._log(step=self.step, **report.row(), optimizer=counts, wall_time=time.time())
                        if acc.is_main_process:
                            tqdm.write(
                                f"step {self.step}: state sizes {report.old_sizes} -> {report.new_sizes} "
                                f"(energy kept {[round(e, 4) for e in report.energy_kept]})"
                            )
                        for cb in self.callbacks:
                            cb.on_cut(self, report)
                        last_val = self.evaluate_and_track(after_cut=True)
                        self._log_rank_hash("cut")
                        self.save()
            # default: a checkpoint at every evaluation, so a crash loses at most eval_every steps
            every = t.checkpoint_every or t.eval_every
            if self.step % every == 0 and self.step < t.steps:
                self.save()
            window.resume()
            post = {"loss": f"{loss:.3f}", "N": fmt_sizes(self.model.state_sizes)}
            if "accuracy" in last_val:
                post["val_acc"] = f"{last_val['accuracy']:.3f}"
            if "perplexity" in last_val:
                post["val_ppl"] = f"{last_val['perplexity']:.2f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        bar.close()
        self.save()
        self._fit_start = None
        self._log_rank_hash("end")
        summary = self.summary()
        for cb in self.callbacks:
            if hasattr(cb, "on_end"):
                cb.on_end(self)
        self._export_model()
        tracking.finish(self.accelerator)
        if acc.is_main_process and t.progress:
            self._print_summary(summary)
        return summary

def _has_accelerator() -> bool:
    """A CUDA, XPU or MPS device is there (Accelerate then trains on it)."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


class _Window:
    """Throughput of a logging window: samples and tokens over the time spent training them.
    ``pause()``/``resume()`` bracket what is not training (evaluation, cuts, checkpoints), so
    the counts and the clock always cover the same steps."""

    def __init__(self):
        self.samples, self.tokens, self.seconds, self._since = 0, 0, 0.0, time.time()

    def count(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens

    def pause(self) -> None:
        self.seconds += time.time() - self._since
        self._since = None

    def resume(self) -> None:
        self._since = time.time()

    def rates(self) -> tuple[float, float]:
        """(samples/s, tokens/s) since the last call; starts the next window."""
        if self._since is not None:
            self.pause()
            self.resume()
        dt = max(self.seconds, 1e-9)
        out = (self.samples / dt, self.tokens / dt)
        self.samples, self.tokens, self.seconds = 0, 0, 0.0
        return out


def _clone_state(sd):
    if torch.is_tensor(sd):
        return sd.detach().clone()
    if isinstance(sd, dict):
        return {k: _clone_state(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [_clone_state(v) for v in sd]
    return sd


def train(recipe: Recipe | dict, resume=None, **kw) -> dict:
    """Train a recipe (a :class:`Recipe` or its mapping) and return the run's summary."""
    if isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    return Trainer(recipe, resume=resume, **kw).fit()
