"""The run folder and what a run reports: a folder holding a run is never replaced silently,
config.yaml / metrics.jsonl / trackers are opened, the final model is exported, and the summary is
written and printed. The Trainer inherits these; they read its state, they run no training."""

from __future__ import annotations

import shutil
import time
import weakref
from pathlib import Path

import yaml
from accelerate.utils import broadcast_object_list

from ..atomic import atomic_write_text
from ..registry import MODEL_INFO_KEYS
from . import run_lock, sharded, tracking
from .checkpoint import checkpoint_path
from .config import recipe_differences
from .metrics import MetricsWriter, write_json

# what a run writes into its folder: a new run there is refused unless it resumes or overwrites
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "model", "plots", "trackers")


def check_run_dir(run_dir: Path) -> None:
    """A run folder must be a folder or creatable as one: ValueError naming the file in the way."""
    blocker = run_dir
    while not blocker.exists() and blocker != blocker.parent:
        blocker = blocker.parent
    if blocker.exists() and not blocker.is_dir():
        raise ValueError(
            f"out_dir = '{run_dir}': {blocker} is a file, not a folder; give out_dir=A_FOLDER (new, or a run folder)"
        )


class RunFolder:
    """The Trainer's run folder, metrics rows, trackers and summary (see ``trainer.Trainer``)."""

    def _claim_run_dir(self, resume, overwrite: bool) -> None:
        """Never mix two runs in one folder: unless this resumes the run in ``run_dir``, a folder
        holding one is refused (on every rank, as the main process sees it) or, with
        ``overwrite``, cleared of the old run's files first."""
        acc = self.accelerator
        check_run_dir(self.run_dir)
        self._lock_run_dir()
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
            self._release_lock()
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

    def _lock_run_dir(self) -> None:
        """Hold the run folder's lock (run_lock.py) for the run's life: the main process takes it,
        every rank learns the outcome and a busy folder is refused on all of them alike."""
        acc, self._lock_finalizer, refusal = self.accelerator, None, None
        if acc.is_main_process:
            try:
                path = run_lock.acquire(self.run_dir)
                self._lock_finalizer = weakref.finalize(self, run_lock.release, path)
            except run_lock.RunFolderBusy as e:
                refusal = str(e)
        if acc.num_processes > 1:
            box = [refusal]
            broadcast_object_list(box, from_process=0)
            refusal = box[0]
        if refusal:
            raise run_lock.RunFolderBusy(refusal)

    def _release_lock(self) -> None:
        """Give the run folder's lock back (at the end of ``fit``, or when the run is refused)."""
        if getattr(self, "_lock_finalizer", None) is not None:
            self._lock_finalizer()

    def _open_outputs(self, trackers: list[str], changes: list[dict]) -> None:
        """config.yaml, metrics.jsonl (cut back to the checkpoint's step on resume: the rows the
        dead run wrote after it are written again), the trackers, and the record of a recipe change."""
        acc = self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
            atomic_write_text(self.run_dir / "config.yaml", text)
        self.metrics = MetricsWriter(
            self.run_dir / "metrics.jsonl" if acc.is_main_process else None,
            append=self.ckpt is not None,
            keep_until_step=self.step if self.ckpt else None,
        )
        if trackers:
            acc.init_trackers(_tracker_project(self.recipe.name), config=tracking.flat_config(self.recipe.to_dict()))
        if changes:
            self.state.recipe_changes.append({"step": self.step, "changes": changes})
            self.log_row(step=self.step, kind="recipe_change", changes=changes, wall_time=time.time())

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

    def log_row(self, **row) -> None:
        """One metrics.jsonl row, also sent to the trackers (``train.report_to``), with the
        cumulative ``train_flops`` so far."""
        row.setdefault("train_flops", self.state.train_flops)
        self.metrics.write(**row)
        tracking.log_row(self.accelerator, row)

    def _export_model(self) -> None:
        """RUN_DIR/model/: the final model (training/export.py), main process."""
        model = sharded.unsharded_copy(self) if sharded.is_fsdp2(self) else self.model
        if self.accelerator.is_main_process:
            from .export import save_final_model

            info = {k: v for k, v in self.data.info.items() if k in MODEL_INFO_KEYS}
            save_final_model(
                model,
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
            "initial_state_sizes": s.initial_state_sizes,
            "final_state_sizes": self.model.state_sizes,
            "n_cuts": s.n_cuts,
            "train_time_s": s.train_time_s,
            "cut_time_s": s.cut_time_s,
            "train_flops": s.train_flops,
            "best_val_loss": (s.val_at_best or {}).get("loss"),
            "parallelism": self.parallelism,
            "world_size": self.accelerator.num_processes,
        }
        if self.task == "lm":
            summary["val_perplexity"] = (s.val_at_best or {}).get("perplexity")
            summary["test_perplexity"] = (s.test_at_best or {}).get("perplexity")
            summary["val_bits_per_byte"] = (s.val_at_best or {}).get("bits_per_byte")
            summary["test_bits_per_byte"] = (s.test_at_best or {}).get("bits_per_byte")
        if self.task != "lm" or self.answer_accuracy:
            summary["best_val_accuracy"] = (s.val_at_best or {}).get("accuracy")
            summary["test_accuracy"] = (s.test_at_best or {}).get("accuracy")
        if self.accelerator.is_main_process:
            write_json(self.run_dir / "summary.json", summary)
        return summary


def _tracker_project(name: str) -> str:
    """A tracker project / run name from a recipe name ("smnist/demo" → "smnist-demo")."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"


def fmt_sizes(sizes: list[int]) -> str:
    return (
        ",".join(map(str, sizes))
        if len(sizes) <= 6
        else f"{min(sizes)}..{max(sizes)} (mean {sum(sizes) / len(sizes):.0f})"
    )
