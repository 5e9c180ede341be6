"""The cut controller: when the trainer cuts and what follows. At each attempt step it runs the
pragmatic schedule's check (roll back to the last snapshot if validation fell), plans the sizes
(``reduction.budget: final``), runs the cut event (cut.py), rebuilds the optimizer around the
cut parameters, and records the cut: metrics row and trackers, callbacks, evaluation, checkpoint.
The post-hoc cut of baselines.py records through :meth:`CutController.record` too."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .cut import CutReport, compression_event
from .optim import build_optimizer, carry_optimizer_state, snapshot_state
from .schedule import attempt_steps, rule_rank, stepped_rank
from .sharded import is_fsdp2, optimizer_states, place_optimizer_states, slice_states, unsharded_copy


class CutController:
    """The cuts of ``trainer``'s run; ``pragmatic_snapshot`` (a checkpoint's) is the pragmatic
    schedule's rollback point: score, sizes, model and optimizer state."""

    def __init__(self, trainer, pragmatic_snapshot: dict | None = None):
        self.trainer = trainer
        self.attempts = attempt_steps(trainer.recipe.reduction, trainer.recipe.train.steps)
        self.pragmatic_snapshot = pragmatic_snapshot

    def due(self) -> bool:
        """A cut is attempted at this step (once: a resumed run does not attempt it again)."""
        tr = self.trainer
        return tr.step in self.attempts and tr.step not in tr.state.attempts_done and not tr.state.cutting_stopped

    def run(self) -> tuple[CutReport, dict] | None:
        """Cut at the trainer's step. Returns the report and the optimizer-state counts, or None
        when the pragmatic schedule rolled back instead."""
        tr, red = self.trainer, self.trainer.recipe.reduction
        tr.state.attempts_done.append(tr.step)
        if red.mode == "pragmatic" and self._rolled_back():
            return None
        if is_fsdp2(tr):
            return self._run_sharded()
        before = snapshot_state(tr.model, tr.optimizer)
        report = compression_event(
            tr.model, red, tr.step, tr.calibration_batches(), tr.accelerator, self._rng(), plan=self._size_plan()
        )
        counts = {}
        if report.changed:
            new_opt = build_optimizer(tr.model, tr.recipe.optim)
            if red.moments == "slice":
                counts = carry_optimizer_state(tr.model, new_opt, before, report.maps)
            else:  # reset: every parameter's Adam moments and step start again
                counts = {"reset": sum(1 for _ in tr.model.parameters())}
            tr.set_optimizer(new_opt)
        return report, counts

    def _rng(self) -> torch.Generator:
        """random selection: seeded by (seed, step), so a resumed run draws what it would have drawn."""
        tr = self.trainer
        return torch.Generator().manual_seed(tr.recipe.seed * 1_000_003 + tr.step)

    def _run_sharded(self) -> tuple[CutReport, dict]:
        """The cut of an FSDP2-sharded model (sharded.py): calibrate it sharded, cut an unsharded
        host copy, shard that copy again with the sliced Adam moments."""
        tr, red = self.trainer, self.trainer.recipe.reduction
        states = optimizer_states(tr.model, tr.optimizer) if red.moments == "slice" else {}
        shapes = {name: tuple(p.shape) for name, p in tr.model.named_parameters()}
        copy = unsharded_copy(tr)
        report = compression_event(
            tr.model, red, tr.step, tr.calibration_batches(), tr.accelerator, self._rng(),
            plan=self._size_plan(), target=copy,
        )  # fmt: skip
        counts = {}
        if report.changed:
            if red.moments == "slice":
                states, counts = slice_states(states, shapes, report.maps)
            else:
                counts = {"reset": len(shapes)}
            tr.model = copy
            tr.set_optimizer(build_optimizer(copy, tr.recipe.optim))
            place_optimizer_states(tr.model, tr.optimizer, states)
        return report, counts

    def after(self, report: CutReport, counts: dict) -> dict | None:
        """Record a training cut; if it changed a size: callbacks, the validation results after
        it (returned), a checkpoint."""
        tr = self.trainer
        self.record(report, optimizer=counts)
        if not report.changed:
            return None
        tr.state.cut_steps.append(tr.step)
        if tr.accelerator.is_main_process:
            tqdm.write(
                f"step {tr.step}: state sizes {report.old_sizes} -> {report.new_sizes} "
                f"(energy kept {[round(e, 4) for e in report.energy_kept]})"
            )
        for cb in tr.callbacks:
            cb.on_cut(tr, report)
        val = tr.evaluate_and_track(after_cut=True)
        tr.save()
        return val

    def record(self, report: CutReport, **fields) -> None:
        """Count a cut and, if it changed a size, log its row (metrics.jsonl and the trackers)."""
        tr = self.trainer
        tr.state.cut_time_s += report.seconds
        if report.changed:
            tr.state.n_cuts += 1
            tr.log_row(step=tr.step, **report.row(), **fields, wall_time=time.time())

    def _rolled_back(self) -> bool:
        """The pragmatic schedule: if validation fell below the last snapshot's score by more than
        ``reduction.pragmatic_tolerance``, restore the snapshot and stop cutting (True); else take
        a new snapshot (False)."""
        tr, red = self.trainer, self.trainer.recipe.reduction
        val = tr.evaluate("val")
        snap = self.pragmatic_snapshot
        if snap is not None and tr.val_score(val) < snap["score"] - red.pragmatic_tolerance:
            self._restore(snap)
            tr.state.cutting_stopped = True
            self.pragmatic_snapshot = None  # cutting has stopped: no later checkpoint needs it
            tr.log_row(
                step=tr.step,
                kind="rollback",
                to_sizes=snap["sizes"],
                wall_time=time.time(),
                val_score=tr.val_score(val),
                snapshot_score=snap["score"],
            )
            return True
        self.pragmatic_snapshot = {
            "score": tr.val_score(val),
            "sizes": tr.model.state_sizes,
            "model": {k: v.detach().clone() for k, v in tr.model.state_dict().items()},
            "optimizer": _clone_state(tr.optimizer.state_dict()),
        }
        return False

    def _size_plan(self):
        """``reduction.budget: final``: the first attempt sets each layer's target by the τ rule on
        the uncut model; attempt k of K then cuts to the k-th point of the geometric path from
        the initial size to the target (None for per_attempt: each cut follows the rule anew)."""
        tr, red = self.trainer, self.trainer.recipe.reduction
        if red.budget != "final":
            return None
        k, n_attempts = self.attempts.index(tr.step) + 1, len(self.attempts)
        initial = tr.state.initial_state_sizes
        if tr.state.target_sizes is None:
            tr.state.target_sizes = [None] * len(initial)
        targets = tr.state.target_sizes

        def plan(i: int, energy) -> int:
            if targets[i] is None:
                targets[i] = rule_rank(energy, red)
            return stepped_rank(initial[i], targets[i], k, n_attempts)

        return plan

    def _restore(self, snap: dict) -> None:
        tr = self.trainer
        tr.model = tr.make_model(snap["sizes"]).to(tr.accelerator.device)
        tr.model.load_state_dict(snap["model"])
        tr.optimizer = build_optimizer(tr.model, tr.recipe.optim)
        tr.optimizer.load_state_dict(snap["optimizer"])
        tr.prepare()


def _clone_state(sd):
    if torch.is_tensor(sd):
        return sd.detach().clone()
    if isinstance(sd, dict):
        return {k: _clone_state(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [_clone_state(v) for v in sd]
    return sd
