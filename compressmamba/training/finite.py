"""The trainer's guard against non-finite steps: one device-side check per optimizer step (no
host sync per micro-batch), the same verdict on every rank, and an error that says what is at
fault and where to resume from."""

from __future__ import annotations

import torch
from torch import Tensor

from .checkpoint import resume_hint


def check_finite(trainer, bad_inputs: dict[str, Tensor], loss: Tensor, grad_norm: Tensor | None, lr: float) -> None:
    """FloatingPointError (on every rank) when a batch (``bad_inputs``: input name → a bool
    tensor, True if that input held NaN or inf in any micro-batch), the loss or the gradients
    are not finite, saying which, and where to resume from. fp16 runs leave inf gradients to the
    loss scaler, which skips those steps."""
    acc, model = trainer.accelerator, trainer.model
    fp16 = trainer.recipe.train.mixed_precision == "fp16"
    no = torch.zeros((), dtype=torch.bool, device=acc.device)
    if grad_norm is None and not fp16:
        grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        grad_norm = torch.stack(grads).norm() if grads else torch.zeros((), device=acc.device)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm of sharded gradients, a DTensor
        grad_norm = grad_norm.full_tensor()
    bad_grads = no if fp16 else ~torch.isfinite(torch.as_tensor(grad_norm, device=acc.device))
    bad_batch = torch.stack(list(bad_inputs.values())).any() if bad_inputs else no
    flags = torch.stack([bad_batch, ~torch.isfinite(loss), bad_grads]).float()
    if acc.num_processes > 1:
        flags = acc.reduce(flags, reduction="sum")
    if not flags.any():  # the step's one host sync
        return
    step, hint = trainer.step + 1, resume_hint(trainer.run_dir, trainer.saved_step)
    if flags[0] > 0:
        names = sorted(k for k, v in bad_inputs.items() if v)
        where = f" ({', '.join(names)})" if names else " (on another rank)"
        raise FloatingPointError(
            f"the training batch at step {step} holds NaN or inf{where}: the data is at fault, not the "
            f"learning rate; clean the dataset (a resumed run replays the same batch). {hint}"
        )
    what = "loss" if flags[1] > 0 else "gradients"
    raise FloatingPointError(
        f"{what} not finite at step {step} (lr {lr:.3g}) with finite inputs: lower optim.lr or set "
        f"optim.grad_clip (a resume then needs --allow-recipe-change). {hint}"
    )
