"""PNG plots a run writes: each layer's energy spectrum at a cut, and state sizes over training."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import read_metrics  # noqa: E402
from .tracking import log_image  # noqa: E402


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def kept_mask(n_states: int, new: int, kept: list[int] | None = None) -> list[bool]:
    """Which bars of a descending spectrum were kept: the recorded positions, or (runs written
    before positions were recorded) the top ``new``."""
    if kept is None:
        return [j < new for j in range(n_states)]
    kept = set(kept)
    return [j in kept for j in range(n_states)]


def plot_energy_spectra(
    energies: list[list[float]], old: list[int], new: list[int], step: int, path, kept: list[list[int]] | None = None
) -> Path:
    """One panel per layer: energies sorted descending (log scale), kept states in colour
    (``kept``: per layer, the positions in the sorted spectrum that were kept)."""
    k = len(energies)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        e = energies[i]
        idx = range(1, len(e) + 1)
        ax.bar(
            idx,
            [max(v, 1e-30) for v in e],
            width=1.0,
            color=["tab:blue" if k else "tab:gray" for k in kept_mask(len(e), new[i], kept[i] if kept else None)],
        )
        ax.set_yscale("log")
        ax.set_title(f"layer {i}: {old[i]} → {new[i]}", fontsize=9)
        ax.set_xlabel("state (sorted)", fontsize=8)
    fig.suptitle(f"energy per state at step {step} (blue: kept)", fontsize=10)
    return save_figure(fig, path)


def plot_state_sizes(metrics_path, path) -> Path:
    """State size of every layer against the training step, from a run's metrics.jsonl."""
    rows = [r for r in read_metrics(metrics_path) if r.get("state_sizes")]
    if not rows:
        raise ValueError(f"{metrics_path} has no rows with state_sizes")
    steps = [r["step"] for r in rows]
    sizes = list(zip(*[r["state_sizes"] for r in rows]))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for i, s in enumerate(sizes):
        ax.step(steps, s, where="post", label=f"layer {i}")
    ax.set_xlabel("step")
    ax.set_ylabel("state size N")
    ax.set_ylim(bottom=0)
    if len(sizes) <= 8:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


class PlotCallback:
    """Trainer callback: a spectrum PNG per cut (also sent to the trackers that take images) and
    an updated state-size PNG (main process)."""

    def on_cut(self, trainer, report):
        if not trainer.accelerator.is_main_process:
            return
        png = plot_energy_spectra(
            report.energies,
            report.old_sizes,
            report.new_sizes,
            report.step,
            trainer.run_dir / "plots" / f"energy_step{report.step}.png",
            kept=report.kept,
        )
        log_image(trainer.accelerator, "energy_spectrum", png, report.step)

    def on_end(self, trainer):
        if trainer.accelerator.is_main_process:
            plot_state_sizes(trainer.run_dir / "metrics.jsonl", trainer.run_dir / "plots" / "state_sizes.png")
