"""The paper's baselines as options of the one trainer: knowledge distillation and
Hankel-nuclear-norm regularisation with post-hoc truncation.

A recipe selects one with a top-level ``baseline:`` mapping:

    baseline: {name: distill, teacher: runs/scifar/baseline/seed0, temperature: 2.0, alpha: 0.5}
    baseline: {name: hnn, lam: 1.0e-4, tau: 0.05}

``distill``: the student's loss is α·T²·KL(p_teacher,T ‖ p_student,T) + (1 − α)·CE, with the
teacher a trained run folder (its ``config.yaml``, ``checkpoints/last.pt``, ``summary.json``).
The student's summary records ``teacher_train_time_s`` so that its cost counts the teacher's
training (eval/aggregate.py adds it).

``hnn``: adds λ·Σ_layers Σ_i σ_i (the Hankel nuclear norm, differentiable through the closed-form
Gramians) to the loss of every LRU layer; at the end of training every layer is cut once by the τ
rule (balanced truncation, no fine-tuning), and the summary reports the truncated model.

Both plug into :class:`~compressmamba.training.Trainer` through its ``extra_loss`` hook and its
callbacks (``attach_baseline``).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.protocol import IGNORE_INDEX, next_token_pairs
from ..reduction.lti import diagonal_gramian_formula
from .config import DistillConfig, parse_baseline

_C = torch.complex128


# --- knowledge distillation --------------------------------------------------------------------
def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask=None) -> Tensor:
    """Mean KL(p_teacher ‖ p_student) of the temperature-T softmaxes.

    logits (b, c) or (b, l, c); ``mask`` (b, l) bool selects the token positions that count.
    Returns a scalar (mean over examples or selected tokens).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    if mask is not None:
        return kl[mask].mean()
    return kl.mean()


class DistillationLoss:
    """``extra_loss`` hook: turns the model's CE into α·T²·KL + (1 − α)·CE.

    The trainer adds the hook's value to ``output.loss`` (the CE), so the hook returns
    α·T²·KL − α·CE.
    """

    def __init__(self, teacher: torch.nn.Module, temperature: float = 2.0, alpha: float = 0.5):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def __call__(self, model, batch: dict, output) -> Tensor:
        with torch.no_grad():
            t_logits = self.teacher(**batch).logits
        s_logits, mask = output.logits, None
        if s_logits.dim() == 3 and "labels" in batch and batch["labels"].dim() == 2:  # LM: the model shifts
            s_logits, target = next_token_pairs(s_logits, batch["labels"])
            t_logits, _ = next_token_pairs(t_logits, batch["labels"])
            mask = target != IGNORE_INDEX
        kl = distillation_kl(s_logits, t_logits, self.temperature, mask)
        return self.alpha * (self.temperature**2 * kl - output.loss)


def load_teacher(run_dir: str | Path, info: dict, device) -> tuple[torch.nn.Module, float]:
    """Build the teacher from a finished run folder. Returns (model in eval mode, the teacher's
    cost in seconds: its ``train_time_s`` plus its own teacher's, if it was distilled)."""
    from .checkpoint import load_checkpoint, model_from_checkpoint

    run = Path(run_dir)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"baseline.teacher = {str(run)!r}: expected a finished run with {summary_path}")
    summary = json.loads(summary_path.read_text())
    teacher = model_from_checkpoint(load_checkpoint(run), info)
    cost = float(summary.get("train_time_s") or 0.0) + float(summary.get("teacher_train_time_s") or 0.0)
    return teacher.to(device).eval(), cost


# --- Hankel-nuclear-norm regularisation -------------------------------------------------------
def lru_lti_differentiable(layer) -> tuple[Tensor, Tensor, Tensor]:
    """(lam (n,), B̃ (n, H), C (H, n)) in complex128, differentiable in the layer's parameters."""
    if not hasattr(layer, "nu_log") or not hasattr(layer, "lti"):
        raise ValueError(f"baseline hnn: layer {type(layer).__name__} is not an LRU layer (hnn regularises LRU layers)")
    return layer.lti(detach=False)


def hankel_nuclear_norm(lam: Tensor, B: Tensor, C: Tensor, eps: float = 1e-12) -> Tensor:
    """Σ_i σ_i of (diag(lam), B, C), differentiable: σ = svd(L_Qᴴ L_P) with P = L_P L_Pᴴ,
    Q = L_Q L_Qᴴ (closed-form Gramians, Cholesky with a relative jitter ``eps``).

    lam (n,), B (n, p), C (q, n) complex. Returns a real float64 scalar.
    """
    n = lam.shape[0]
    P, Q = diagonal_gramian_formula(lam, B, C)
    eye = torch.eye(n, dtype=P.dtype, device=P.device)
    jp = eps * P.diagonal().real.mean().detach().clamp_min(1e-300)
    jq = eps * Q.diagonal().real.mean().detach().clamp_min(1e-300)
    Lp = torch.linalg.cholesky((P + P.conj().T) / 2 + jp * eye)
    Lq = torch.linalg.cholesky((Q + Q.conj().T) / 2 + jq * eye)
    return torch.linalg.svdvals(Lq.conj().T @ Lp).sum()


class HankelNuclearNormLoss:
    """``extra_loss`` hook: λ · Σ over the model's LRU layers of their Hankel nuclear norms."""

    def __init__(self, lam: float):
        self.lam = float(lam)

    def __call__(self, model, batch=None, output=None) -> Tensor:
        terms = [hankel_nuclear_norm(*lru_lti_differentiable(layer)) for layer in model.ssm_layers()]
        if not terms:
            raise ValueError("baseline hnn: the model has no SSM layers to regularise")
        total = torch.stack(terms).sum()
        dtype = output.loss.dtype if output is not None else torch.float32
        return (self.lam * total).to(dtype)


def _update_summary(trainer, regenerate: bool = False, **extra) -> dict:
    """Rewrite summary.json: regenerated from the trainer's state if asked, keeping keys that
    other callbacks added, plus ``extra``."""
    from .metrics import write_json

    path = trainer.run_dir / "summary.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    new = trainer.summary() if regenerate else dict(old)
    for k, v in old.items():
        new.setdefault(k, v)
    new.update(extra)
    if trainer.accelerator.is_main_process:
        write_json(path, new)
    return new


class TeacherCost:
    """Callback: records the teacher's training time in the student's summary."""

    def __init__(self, teacher_dir: str, seconds: float):
        self.teacher_dir, self.seconds = teacher_dir, seconds

    def on_cut(self, trainer, report):
        pass

    def on_end(self, trainer):
        _update_summary(trainer, teacher=self.teacher_dir, teacher_train_time_s=self.seconds)


class PostHocTruncation:
    """Callback: at the end of training cut every layer once by the τ rule (no fine-tuning),
    evaluate, log the cut, checkpoint, and report the truncated model in the summary."""

    def __init__(self, tau: float, calib_batches: int = 2):
        self.tau, self.calib_batches = tau, calib_batches

    def on_cut(self, trainer, report):
        pass

    def on_end(self, trainer):
        from .cut import compression_event
        from .optim import build_optimizer

        red = replace(trainer.recipe.reduction, mode="tolerance", tau=self.tau, gate=1.0)
        red = replace(red, calib_batches=self.calib_batches)
        before_val = trainer.state.val_at_best
        t0 = time.time()
        rng = torch.Generator().manual_seed(trainer.recipe.seed)  # only used by selection "random"
        report = compression_event(
            trainer.model, red, trainer.step, trainer.calibration_batches(), trainer.accelerator, rng
        )
        trainer.cuts.record(report, posthoc=True)  # metrics.jsonl and the trackers, as a training cut
        if report.changed:
            trainer.set_optimizer(build_optimizer(trainer.model, trainer.recipe.optim))
        trainer.state.best_val = None
        trainer.evaluate_and_track(after_cut=True)
        trainer.save()
        _update_summary(
            trainer,
            regenerate=True,
            posthoc_tau=self.tau,
            val_before_truncation=before_val,
            posthoc_seconds=time.time() - t0,
        )


def attach_baseline(trainer) -> None:
    """Install the recipe's ``baseline:`` on ``trainer`` (extra-loss hook and callbacks)."""
    cfg = parse_baseline(trainer.recipe.baseline)
    if trainer.extra_loss is not None:
        raise ValueError("recipe has a baseline but the Trainer was given an extra_loss too; pass one")
    if isinstance(cfg, DistillConfig):
        teacher, seconds = load_teacher(cfg.teacher, trainer.data.info, trainer.accelerator.device)
        trainer.extra_loss = DistillationLoss(teacher, cfg.temperature, cfg.alpha)
        trainer.callbacks.append(TeacherCost(str(cfg.teacher), seconds))
    else:
        trainer.extra_loss = HankelNuclearNormLoss(cfg.lam)
        trainer.callbacks.append(PostHocTruncation(cfg.tau, cfg.calib_batches))
