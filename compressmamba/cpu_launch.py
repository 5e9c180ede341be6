"""What ``accelerate launch`` cannot do on the CPU, done in one place.

On the CPU, Accelerate's launcher starts one plain process (its simple launcher): it neither
passes ``--num_processes N`` on nor sets the FSDP environment from a config file's
``fsdp_config`` (it does both only for GPUs, through torchrun). So ``compressmamba`` reads the
request from the launcher's own command line (``--num_processes``, ``--config_file``), and when
it asks for several CPU processes starts them itself with PyTorch's launcher (torch.distributed.run,
gloo), setting the environment Accelerate's FSDP plugin reads (``ACCELERATE_USE_FSDP``,
``FSDP_VERSION``, ``FSDP_AUTO_WRAP_POLICY`` ...) from the config's ``fsdp_config``: the
plugin then builds itself from it in every rank, as under torchrun on GPUs. Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

# fsdp_config keys whose environment variable is not FSDP_<KEY without fsdp_>.upper()
_ENV_NAMES = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}


def _launcher_args() -> list[str]:
    """The parent's command line when it is Accelerate's launcher on the CPU, else []."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true") or "WORLD_SIZE" in os.environ:
        return []
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().split(b"\0")
    except OSError:
        return []
    args = [a.decode(errors="replace") for a in parent]
    return args if any("accelerate" in a for a in args[:3]) else []


def _option(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            return args[i + 1]
        for n in names:
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def fsdp_environment(config: dict) -> dict[str, str]:
    """The environment Accelerate's FSDP plugin reads, from an Accelerate config's mapping
    (empty when it does not ask for FSDP)."""
    if str(config.get("distributed_type", "")).upper() != "FSDP":
        return {}
    env = {"ACCELERATE_USE_FSDP": "true"}
    for key, value in (config.get("fsdp_config") or {}).items():
        name = _ENV_NAMES.get(key, "FSDP_" + key.removeprefix("fsdp_").upper())
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def requested_cpu_ranks(args: list[str] | None = None) -> tuple[int, dict[str, str]]:
    """(process count, environment for the ranks) that ``accelerate launch`` on the CPU asked for:
    ``--num_processes`` on its command line, else its config file's ``num_processes``; (1, {})
    when it asked for one process or this process is not under that launcher."""
    args = _launcher_args() if args is None else args
    if not args:
        return 1, {}
    config = {}
    path = _option(args, "--config_file", "--config-file")
    if path:
        import yaml

        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"--config_file {path}: cannot read it as an Accelerate config ({e})") from None
    n = _option(args, "--num_processes", "--num-processes") or config.get("num_processes", 1)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise ValueError(f"--num_processes {n!r}: expected a whole number of processes") from None
    return n, fsdp_environment(config) if n > 1 else {}
