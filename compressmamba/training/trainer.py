"""The one trainer: any compressible model, any dataset, one GPU to many through Accelerate.

The loop lives here; the schedule (schedule.py), the cut (cut.py), the optimizer policy
(optim.py) and checkpoints (checkpoint.py) live beside it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from ..registry import MODEL_INFO_KEYS, build_data, build_model
from . import tracking
from .answers import answer_counts
from .checkpoint import atomic_write, checkpoint_path, load_checkpoint, save_checkpoint, set_rng_state
from .config import Recipe, recipe_differences, recipe_from_dict
from .cut import CutReport, compression_event
from .data import StepBatches, shard_batches
from .metrics import MetricsWriter, target_bytes, write_json
from .optim import build_optimizer, carry_optimizer_state, rewarm_factor, set_lr, snapshot_state
from .schedule import attempt_steps, rule_rank, stepped_rank

# what a run writes into its folder: a new run there is refused unless it resumes or overwrites
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "model", "plots", "trackers")


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):  # buffers (BatchNorm statistics) are per rank
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Trainer:
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
            self.model.load_state_dict(self.ckpt["model"])
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

    def _claim_run_dir(self, resume, overwrite: bool) -> None:
        """Never mix two runs in one folder: unless this resumes the run in ``run_dir``, a folder
        holding one is refused (on every rank, as the main process sees it) or, with
        ``overwrite``, cleared of the old run's files first."""
        acc = self.accelerator
        if resume is not None:
            ck = checkpoint_path(resume)
            home = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
            if home.resolve() == self.run_dir.resolve():
                return
        held = [e for e in RUN_ENTRIES if (self.run_dir / e).exists()] if acc.is_main_process else []
        if acc.num_processes > 1:
            box = [held]
            broadcast_object_list(box, from_process=0)
            held = box[0]
        if held and not overwrite:
            raise ValueError(
                f"run folder {self.run_dir} already holds a run ({', '.join(held)}): continue it with "
                f"--resume {self.run_dir}, replace it with --overwrite, or write elsewhere with out_dir=NEW_FOLDER"
            )
        if overwrite and acc.is_main_process and self.run_dir.is_dir():
            stale = [self.run_dir / e for e in RUN_ENTRIES]
            stale += [*self.run_dir.glob("rank*_hashes.jsonl"), *self.run_dir.glob(".model.*")]
            for path in stale:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        acc.wait_for_everyone()

    def _open_outputs(self, trackers: list[str], changes: list[dict]) -> None:
        """config.yaml, metrics.jsonl (cut back to the checkpoint's step on resume: the rows the
        dead run wrote after it are written again), the trackers, and the record of a recipe change."""
        acc = self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
            atomic_write(self.run_dir / "config.yaml", lambda f: f.write(text.encode()))
        self.metrics = MetricsWriter(
            self.run_dir / "metrics.jsonl" if acc.is_main_process else None,
            append=self.ckpt is not None,
            keep_until_step=self.step if self.ckpt else None,
        )
        if trackers:
            acc.init_trackers(_tracker_project(self.recipe.name), config=tracking.flat_config(self.recipe.to_dict()))
        if changes:
            self.state["recipe_changes"].append({"step": self.step, "changes": changes})
            self._log(step=self.step, kind="recipe_change", changes=changes, wall_time=time.time())

    def _check_recipe_change(self, allow: bool) -> list[dict]:
        """The differences between this recipe and the checkpoint's that change the run's meaning:
        refused (naming each key) unless ``allow``; returned for the record."""
        if not self.ckpt:
            return []
        changes = recipe_differences(self.ckpt["recipe"], self.recipe.to_dict())
        if changes and not allow:
            listed = "; ".join(f"{c['key']}: {c['old']!r} -> {c['new']!r}" for c in changes)
            raise ValueError(
                f"the recipe differs from the checkpoint's in keys that change the run: {listed}. "
                "Resume with the run's own recipe (its config.yaml), or pass --allow-recipe-change "
                "(Trainer(allow_recipe_change=True)) to continue under the new values; the change is recorded"
            )
        return changes

    def _log(self, **row) -> None:
        """One metrics.jsonl row, also sent to the trackers (``train.report_to``)."""
        self.metrics.write(**row)
        tracking.log_row(self.accelerator, row)

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

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, *, whole: bool = False) -> dict:
        """Mean loss (and perplexity or accuracy) on ``split``: its first ``train.eval_batches``
        batches, or all of it with ``whole``."""
        ds = getattr(self.data, split)
        acc, t = self.accelerator, self.recipe.train
        model = self.model
        was = model.training
        model.eval()
        tot = torch.zeros(4, dtype=torch.float64, device=acc.device)  # loss sum, correct, count, bytes
        zero = torch.zeros((), device=acc.device, dtype=torch.float64)
        bs = t.eval_batch_size or t.batch_size
        for batch in shard_batches(ds, bs, acc.process_index, acc.num_processes, None if whole else t.eval_batches):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                out = model(**batch)
            if self.task == "lm":
                targets = batch["labels"][:, 1:]
                n = (targets != -100).sum()
                nbytes = target_bytes(targets, self._token_bytes) if self._token_bytes is not None else zero
                correct = answer_counts(out.logits, batch["labels"])[0].double() if self.answer_accuracy else zero
                tot += torch.stack([out.loss.double() * n, correct, n.double(), nbytes])
            else:
                y = batch["labels"]
                correct = (out.logits.argmax(-1) == y).sum()
                tot += torch.stack(
                    [
                        out.loss.double() * len(y),
                        correct.double(),
                        torch.tensor(float(len(y)), device=acc.device, dtype=torch.float64),
                        zero,
                    ]
                )
        model.train(was)
        tot = acc.reduce(tot, reduction="sum")
        loss = (tot[0] / tot[2].clamp_min(1)).item()
        res = {"loss": loss}
        if self.task == "lm":
            res["perplexity"] = math.exp(min(loss, 50))
            if tot[3] > 0:  # the loss in bits over the bytes the targets decode to
                res["bits_per_byte"] = (tot[0] / tot[3]).item() / math.log(2)
        if self.task != "lm" or self.answer_accuracy:
            res["accuracy"] = (tot[1] / tot[2].clamp_min(1)).item()
        return res

    @functools.cached_property
    def _token_bytes(self) -> torch.Tensor | None:
        """Bytes per token id (the tokenizer's ``token_bytes``), or None where the data has no tokenizer."""
        tok = self.data.info.get("tokenizer")
        table = getattr(tok, "token_bytes", None)
        return None if table is None else torch.as_tensor(table(), dtype=torch.float64, device=self.accelerator.device)

    def _score(self, res: dict) -> float:
        return res["accuracy"] if "accuracy" in res else -res["loss"]

    def evaluate_and_track(self, after_cut: bool = False) -> dict:
        val = self.evaluate("val")
        self._log(
            step=self.step, kind="eval", split="val", state_sizes=self.model.state_sizes, wall_time=time.time(), **val
        )
        best = self.state["best_val"]
        if after_cut or best is None or self._score(val) > best:
            self.state["best_val"] = self._score(val)
            self.state["val_at_best"] = val
            if self.data.test is not None:
                test = self.evaluate("test")
                self.state["test_at_best"] = test
                self._log(
                    step=self.step,
                    kind="eval",
                    split="test",
                    state_sizes=self.model.state_sizes,
                    wall_time=time.time(),
                    **test,
                )
        return val

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
            ctx = acc.no_sync(self.wrapped) if not sync and acc.num_processes > 1 else _null()
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
            post = {"loss": f"{loss:.3f}", "N": _fmt_sizes(self.model.state_sizes)}
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

    def _export_model(self) -> None:
        """RUN_DIR/model/: the final model (training/export.py), main process."""
        if self.accelerator.is_main_process:
            from .export import save_final_model

            info = {k: v for k, v in self.data.info.items() if k in MODEL_INFO_KEYS}
            save_final_model(
                self.model,
                self.run_dir,
                model_cfg=self.recipe.model,
                info=info,
                tokenizer=self.recipe.data.get("tokenizer") if self.task == "lm" else None,
            )
        self.accelerator.wait_for_everyone()

    def _print_summary(self, s: dict) -> None:
        lines = [
            f"{self.recipe.name}: {s['steps']} steps in {s['train_time_s']:.0f} s "
            f"({s['n_cuts']} cuts, {s['cut_time_s']:.1f} s cutting)",
            f"  state sizes per layer: {s['initial_state_sizes']} -> {s['final_state_sizes']}",
        ]
        if self.task == "lm":
            bpb = f", {s['val_bits_per_byte']:.4f} bits per byte" if s.get("val_bits_per_byte") is not None else ""
            lines.append(f"  validation perplexity (best after last cut): {s['val_perplexity']:.3f}{bpb}")
        if self.task != "lm" or self.answer_accuracy:
            lines.append(f"  val accuracy {s['best_val_accuracy']:.4f}, test accuracy {s['test_accuracy']}")
        tr = [r for r in self.metrics_rows("train")]
        if tr:
            key = "tokens_per_s" if self.task == "lm" else "samples_per_s"
            lines.append(f"  throughput: first {tr[0][key]:.0f}, last {tr[-1][key]:.0f} {key.replace('_per_s', '')}/s")
        lines.append(f"  run folder: {self.run_dir}")
        print("\n".join(lines))

    def metrics_rows(self, kind: str) -> list[dict]:
        from .metrics import read_metrics

        path = self.run_dir / "metrics.jsonl"
        return [r for r in read_metrics(path) if r.get("kind") == kind] if path.exists() else []

    def summary(self) -> dict:
        s = self.state
        summary = {
            "recipe": self.recipe.name,
            "name": self.recipe.name,
            "seed": self.recipe.seed,
            "steps": self.step,
            "task": self.task,
            "initial_state_sizes": s["initial_state_sizes"],
            "final_state_sizes": self.model.state_sizes,
            "n_cuts": s["n_cuts"],
            "train_time_s": s["train_time_s"],
            "cut_time_s": s["cut_time_s"],
            "best_val_loss": (s["val_at_best"] or {}).get("loss"),
        }
        if self.task == "lm":
            summary["val_perplexity"] = (s["val_at_best"] or {}).get("perplexity")
            summary["test_perplexity"] = (s["test_at_best"] or {}).get("perplexity")
            summary["val_bits_per_byte"] = (s["val_at_best"] or {}).get("bits_per_byte")
            summary["test_bits_per_byte"] = (s["test_at_best"] or {}).get("bits_per_byte")
        if self.task != "lm" or self.answer_accuracy:
            summary["best_val_accuracy"] = (s["val_at_best"] or {}).get("accuracy")
            summary["test_accuracy"] = (s["test_at_best"] or {}).get("accuracy")
        if self.accelerator.is_main_process:
            write_json(self.run_dir / "summary.json", summary)
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _clone_state(sd):
    if torch.is_tensor(sd):
        return sd.detach().clone()
    if isinstance(sd, dict):
        return {k: _clone_state(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [_clone_state(v) for v in sd]
    return sd


def _tracker_project(name: str) -> str:
    """A tracker project / run name from a recipe name ("smnist/demo" → "smnist-demo")."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"


def _fmt_sizes(sizes: list[int]) -> str:
    return (
        ",".join(map(str, sizes))
        if len(sizes) <= 6
        else f"{min(sizes)}..{max(sizes)} (mean {sum(sizes) / len(sizes):.0f})"
    )


def train(recipe: Recipe | dict, resume=None, **kw) -> dict:
    """Train a recipe (a :class:`Recipe` or its mapping) and return the run's summary."""
    if isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    return Trainer(recipe, resume=resume, **kw).fit()
