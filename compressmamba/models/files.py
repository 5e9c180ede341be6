"""Checks before loading a model: a local folder's files are whole, a hub id is reachable.

Both raise one line that names the file (or the id) and what is wrong, instead of a
deserialiser's traceback or a minute of connection retries.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import zipfile
from pathlib import Path
from urllib.parse import urlparse

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_safetensors(path: Path) -> None:
    """ValueError unless ``path`` holds a complete safetensors file (header parses, and the file
    is as long as the header says)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is corrupt or truncated: {size} bytes, no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path} is corrupt or truncated: header of {n} bytes in a file of {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is corrupt: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is corrupt: the safetensors header is not a mapping")
    tensors = [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    end = max((v.get("data_offsets", [0, 0])[1] for v in tensors), default=0)
    if size < 8 + n + end:
        raise ValueError(f"{path} is truncated: {size} bytes, the header describes {8 + n + end}")


def read_config_json(path: Path) -> dict:
    """A folder's config.json as a mapping; ValueError, one line naming the file, when it is not
    valid JSON or not a mapping."""
    try:
        parsed = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{path} is not a JSON mapping of config fields")
    return parsed


def check_model_dir(folder: str | Path, subfolder: str = "") -> None:
    """A local model folder: config.json is a JSON mapping, a weights file exists and is whole.
    Raises FileNotFoundError or ValueError, one line naming the file."""
    root = Path(folder).expanduser() / subfolder
    cfg = root / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"model folder {root} has no config.json")
    parsed = read_config_json(cfg)
    from ..registry import family_of_model_type

    mtype = parsed.get("model_type")
    if mtype is not None and family_of_model_type(mtype) is None:
        return  # no family of ours: the loader says so, whatever the weights
    found = [root / w for w in _WEIGHTS if (root / w).is_file()]
    if not found:
        raise FileNotFoundError(f"model folder {root} has no weights file (expected one of {list(_WEIGHTS)})")
    weights = found[0]
    if weights.name == "model.safetensors":
        check_safetensors(weights)
    elif weights.name == "pytorch_model.bin":
        check_torch_weights(weights)


def check_torch_weights(path: Path) -> None:
    """ValueError (one line) unless ``path`` is a torch archive of tensors and plain values only:
    a pickled object that could run code is refused here, before any loader sees it, and
    nothing in it runs (memory-mapped: no tensor data is read)."""
    safe_torch_load(path, "model weights", mmap=True, fix="convert trusted weights to model.safetensors")


def safe_torch_load(path: str | Path, what: str = "checkpoint", mmap: bool = False, fix: str = ""):
    """``torch.load(path, weights_only=True)``: tensors and plain values only. A file that
    carries other pickled objects (which could run code) or that is truncated or corrupt raises
    one ValueError naming ``what``, the file and the problem (and ``fix``); nothing in it runs."""
    import pickle

    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise ValueError(f"{what} {path} is corrupt or truncated: not a torch zip archive ({size} bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        obj = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"{what} {path} holds pickled Python objects{obj} that could run code: refused, nothing was loaded; "
            + (fix or "only tensors and plain values are accepted")
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} {path} is corrupt or truncated: {first}") from None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _cached(repo_id: str, revision: str | None, cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision), str)


def guard_hub_id(path_or_id: str, hub_kwargs: dict) -> dict:
    """Before downloading ``path_or_id`` (not a local folder): a path-like name that does not
    exist, or a hub id that is neither reachable nor cached, fails now, saying which; offline with
    a cached copy, ``local_files_only`` is set so that nothing waits on the network. Returns the
    (possibly updated) keyword arguments."""
    name = str(path_or_id)
    if not _HUB_ID.match(name) or name.count("/") > 1:
        raise FileNotFoundError(f"{name!r} is not a local folder (and not a hub id of the form org/name)")
    if hub_kwargs.get("local_files_only"):
        return hub_kwargs
    offline = hub_offline() or not _hub_reachable()
    if not offline:
        return hub_kwargs
    if _cached(name, hub_kwargs.get("revision"), hub_kwargs.get("cache_dir")):
        return {**hub_kwargs, "local_files_only": True}
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached (no network)"
    raise FileNotFoundError(
        f"{name!r} is not a local folder and not in the Hugging Face cache, and {why}: "
        "download it while online (huggingface-cli download) or give a local folder"
    )
