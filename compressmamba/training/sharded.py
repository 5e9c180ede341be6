"""Training past one GPU: FSDP2 through Accelerate (docs/scale.md).

Under an Accelerate config with ``fsdp_version: 2`` the trainer hands its model and optimizer to
``Accelerator.prepare``, which shards every block the model names in ``_no_split_modules``
(``fully_shard``): parameters, gradients and Adam moments become DTensors sharded on dim 0.
What the trainer does differently with a sharded model lives here:

* a cut (cut_controller.py) calibrates through the sharded model (each block's forward sees its
  full parameters), then gathers the weights one tensor at a time into an unsharded copy in host
  memory (:func:`unsharded_copy`: never a full model in accelerator memory), measures and cuts
  that copy, and prepares it again with a new optimizer, whose Adam moments are the old ones
  gathered the same way, sliced by the cut's state maps and sharded onto the new parameters
  (:func:`optimizer_states`, :func:`slice_states`, :func:`place_optimizer_states`);
* evaluation runs the same number of forwards on every rank (a sharded forward is collective);
* checkpoints are sharded (sharded_checkpoint.py) and the final ``model/`` is the gathered copy.
"""

from __future__ import annotations

import torch
from torch import nn

FSDP2_ACCELERATE = "1.6.0"  # the first accelerate with fsdp_version: 2 (Accelerator.is_fsdp2)


def cpu_fsdp_requested() -> bool:
    """Several CPU ranks started with Accelerate's FSDP environment (``accelerate launch
    --config_file fsdp2_cpu.yaml``). Accelerate 1.16 makes such ranks plain MULTI_CPU (its FSDP
    state exists for accelerators only), so the trainer shards them itself (:func:`shard_on_cpu`)."""
    import os

    return (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
        and not torch.cuda.is_available()
    )


def is_fsdp2(trainer) -> bool:
    """The trainer's model is sharded by FSDP2."""
    return trainer.parallelism == "fsdp2"


def parallelism(accelerator) -> str:
    """'fsdp2', 'ddp' (several ranks, each with the whole model) or 'none' (one process)."""
    if getattr(accelerator, "is_fsdp2", False) or (accelerator.num_processes > 1 and cpu_fsdp_requested()):
        return "fsdp2"
    return "ddp" if accelerator.num_processes > 1 else "none"


def shard_on_cpu(model: nn.Module) -> nn.Module:
    """The one place the trainer shards by itself what Accelerate shards on accelerators: on CPU
    ranks (gloo), ``fully_shard`` every block the FSDP plugin (built from the launcher's
    environment) wraps (its ``transformer_cls_names_to_wrap``, else the model's
    ``_no_split_modules``), then the root, as Accelerate's ``fsdp2_prepare_model`` does."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import fully_shard

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"fsdp_version {plugin.fsdp_version}: compressmamba trains sharded models with FSDP2 only; "
            "set fsdp_version: 2 in the Accelerate config's fsdp_config"
        )
    names = set(plugin.transformer_cls_names_to_wrap or getattr(model, "_no_split_modules", None) or [])
    reshard = plugin.reshard_after_forward
    reshard = reshard if isinstance(reshard, bool) else str(reshard).upper() not in ("NO_SHARD", "FALSE")
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for m in reversed(blocks):  # inner blocks first
        fully_shard(m, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)  # also the root: no rank keeps it gathered alone
    return model


def check_supported(accelerator, recipe) -> None:
    """Refuse, in one line, what the trainer cannot do sharded: FSDP version 1, an accelerate
    without FSDP2, the pragmatic schedule's rollback and the baselines (whole-model copies)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP and parallelism(accelerator) != "fsdp2":
        return
    if not hasattr(accelerator, "is_fsdp2"):
        import accelerate

        raise ValueError(
            f"the Accelerate config asks for FSDP, which compressmamba trains with FSDP2 only: accelerate "
            f"{accelerate.__version__} has no FSDP2; install accelerate>={FSDP2_ACCELERATE}"
        )
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ValueError(
            "the Accelerate config asks for FSDP version 1: compressmamba trains sharded models with FSDP2 only; "
            "set fsdp_version: 2 in its fsdp_config (compressmamba/recipes/accelerate/fsdp2.yaml)"
        )
    if recipe.reduction.mode == "pragmatic":
        raise ValueError(
            "reduction.mode = 'pragmatic' under FSDP2: its rollback keeps a whole copy of the model and optimizer; "
            "use mode tolerance, fixed or rank, or train without FSDP"
        )
    if recipe.baseline:
        raise ValueError(f"baseline {recipe.baseline!r} under FSDP2: the baselines need the whole model on every rank")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t`` in host memory: a sharded DTensor is gathered (collective: every rank
    calls it), then copied to the CPU."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu()


def unsharded_copy(trainer) -> nn.Module:
    """The trainer's model as one unsharded module on the CPU (the same weights), gathered one
    tensor at a time; every rank calls it."""
    model = trainer.model
    full = {k: full_tensor(v) for k, v in model.state_dict().items()}
    copy = trainer.make_model(model.state_sizes)
    copy.load_state_dict(full)
    copy.train(model.training)
    return copy


def optimizer_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """Parameter name → its optimizer state, every tensor whole and on the CPU."""
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if state:
            out[name] = {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in state.items()}
    return out


def slice_states(states: dict[str, dict], shapes: dict[str, tuple], maps: dict) -> tuple[dict, dict]:
    """The optimizer states after a cut, by optim.py's policy: a parameter the cut did not touch
    keeps its state, one it sliced gets its moments sliced by its state map (``maps``: name →
    map or None, as the layers' ``truncate_`` return), one it re-based (None) loses its state.
    ``shapes``: name → the parameter's shape before the cut. Returns (states, counts)."""
    out, counts = {}, {"kept": 0, "sliced": 0, "dropped": 0}
    for name, state in states.items():
        if name not in maps:
            out[name] = state
            counts["kept"] += 1
        elif maps[name] is None:
            counts["dropped"] += 1
        else:
            fn, shape = maps[name], shapes[name]
            out[name] = {k: fn(v) if torch.is_tensor(v) and tuple(v.shape) == shape else v for k, v in state.items()}
            counts["sliced"] += 1
    return out, counts


def place_optimizer_states(model: nn.Module, optimizer: torch.optim.Optimizer, states: dict[str, dict]) -> None:
    """Put whole states (:func:`optimizer_states`) on ``model``'s parameters, sharded like each
    parameter (``distribute_tensor``) when it is a DTensor."""
    params = dict(model.named_parameters())
    live = {id(q) for q in params.values()}
    for stale in [p for p in optimizer.state if id(p) not in live]:
        del optimizer.state[stale]  # keyed by a parameter the model no longer has (before sharding)
    for name, p in params.items():
        state = states.get(name)
        if state is not None:
            optimizer.state[p] = {k: _like(v, p) for k, v in state.items()}


def _like(v, p: torch.Tensor):
    """``v`` placed like parameter ``p`` when it has p's shape (a moment), else as it is (step)."""
    if not torch.is_tensor(v) or tuple(v.shape) != tuple(p.shape):
        return v
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
    return v.to(p.device)


def block_classes(model: nn.Module) -> list[type]:
    """The classes of the blocks ``model`` declares in ``_no_split_modules`` (the units FSDP2
    shards and activation checkpointing recomputes), present in it."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return sorted({type(m) for m in model.modules() if type(m).__name__ in names}, key=lambda c: c.__name__)


def checkpoint_blocks(model: nn.Module) -> int:
    """``train.activation_checkpointing``: every block of ``model`` (:func:`block_classes`)
    recomputes its activations in the backward pass (torch.utils.checkpoint, non-reentrant)
    instead of keeping them. Returns how many blocks; a model that declares none is refused."""
    from torch.utils.checkpoint import checkpoint

    classes = tuple(block_classes(model))
    if not classes:
        raise ValueError(
            f"train.activation_checkpointing = true: {type(model).__name__} declares no blocks (_no_split_modules) "
            "to checkpoint"
        )
    count = 0
    for m in model.modules():
        if isinstance(m, classes) and "forward" not in vars(m):
            inner = m.forward

            def forward(*args, _inner=inner, **kwargs):
                if not torch.is_grad_enabled():
                    return _inner(*args, **kwargs)
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

            m.forward = forward
            count += 1
    return count
