"""What the trainer knows besides its model, optimizer and step: one dataclass that a checkpoint
saves whole (as a plain dict, ``checkpoint["trainer"]``) and a resume restores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainerState:
    initial_state_sizes: list[int]  # the model's sizes before any cut
    best_val: float | None = None  # the best validation score so far (accuracy, or minus the loss)
    val_at_best: dict | None = None  # the validation results there
    test_at_best: dict | None = None  # the test results there
    cut_time_s: float = 0.0
    train_time_s: float = 0.0  # every fit() of the run together, resumed ones included
    n_cuts: int = 0  # cuts that changed a size
    cutting_stopped: bool = False  # the pragmatic schedule rolled back: no further attempts
    attempts_done: list[int] = field(default_factory=list)
    recipe_changes: list[dict] = field(default_factory=list)  # --allow-recipe-change, with the step
    cut_steps: list[int] = field(default_factory=list)  # steps whose cut changed a size (the re-warm starts there)
    train_flops: float = 0.0  # training and calibration FLOPs so far, all ranks (compressmamba/flops.py)
    target_sizes: list | None = None  # reduction.budget final: each layer's final size, set at the first attempt

    def to_dict(self) -> dict:
        """Plain values only (a checkpoint loads with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict, initial_state_sizes: list[int]) -> TrainerState:
        """The state a checkpoint saved; keys it lacks (a checkpoint written before they existed)
        keep their defaults, keys this version does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{"initial_state_sizes": initial_state_sizes, **{k: v for k, v in saved.items() if k in known}})

    def __getitem__(self, key: str):
        """Read by name, as the checkpoint's dict is read (``state["n_cuts"]``)."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)
