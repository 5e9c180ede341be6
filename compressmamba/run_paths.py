"""Where a run folder keeps its checkpoint: the one place the path is written (the trainer saves
there; ``--resume``, ``compress``, ``convert`` and ``evaluate`` read it). Imports nothing heavy:
the command line's help text names it too."""

from __future__ import annotations

from pathlib import Path

LAST_CHECKPOINT = "checkpoints/last.pt"  # relative to the run folder


def last_checkpoint(run_dir: str | Path) -> Path:
    """RUN_DIR/checkpoints/last.pt."""
    return Path(run_dir) / LAST_CHECKPOINT
