"""``compressmamba env``: the facts a bug report needs, paste-ready (like ``transformers env``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys

_PACKAGES = ("torch", "triton", "transformers", "accelerate", "datasets", "lm_eval", "mamba-ssm", "causal-conv1d")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backends(device: str) -> str:
    """Which scan and conv1d kernels ``backend="auto"`` runs for tensors on ``device``."""
    if device == "cpu":
        return "selective scan: vectorised PyTorch (cpu); conv1d: torch"
    triton = importlib.util.find_spec("triton") is not None
    scan = "triton" if triton else "vectorised PyTorch (cpu; triton not installed)"
    if importlib.util.find_spec("causal_conv1d") is not None:
        conv = "causal-conv1d (widths 2-4), else triton"
    else:
        conv = "triton" if triton else "torch"
    return f"selective scan: {scan}; conv1d: {conv}"


def env_info() -> dict[str, str]:
    """Ordered {label: value} of versions, devices, kernel backends and support status."""
    from . import compat

    info = {"compressmamba": _version("compressmamba") or "not installed", "python": sys.version.split()[0]}
    info["platform"] = platform.platform()
    for dist in _PACKAGES:
        info[dist] = _version(dist) or "not installed"
    import torch

    info["torch CUDA build"] = torch.version.cuda or "none (CPU build)"
    info["CPU kernels"] = _backends("cpu")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = ".".join(map(str, torch.cuda.get_device_capability(i)))
            info[f"cuda:{i}"] = f"{torch.cuda.get_device_name(i)} (capability {cap})"
        info["CUDA kernels"] = _backends("cuda")
    else:
        info["CUDA device"] = "none"
    from .registry import families

    for f in families().values():
        reads = ", ".join([*f.model_types, *([f"mamba-ssm {f.mamba_ssm_layer}"] if f.mamba_ssm_layer else [])])
        methods = f"methods {', '.join(f.energy_methods)} (default {f.default_energy_method})"
        info[f"model {f.name}"] = f"{f.description}; {methods}" + (
            f"; loads {reads}" if reads else ""
        )
    for name, (lo, hi) in compat.SUPPORTED.items():
        info[f"{name} supported ({lo},{hi})"] = compat.version_status(name, _version(name))
    return info


def format_env(info: dict[str, str]) -> str:
    width = max(map(len, info))
    return "\n".join(f"- {k + ':':<{width + 1}} {v}" for k, v in info.items())


def _cmd_env(args) -> int:
    print("Copy and paste this into a bug report:\n")
    print(format_env(env_info()))
    return 0


def register(sub) -> None:
    e = sub.add_parser("env", help="print versions, devices and kernel backends for a bug report")
    e.set_defaults(func=_cmd_env)
