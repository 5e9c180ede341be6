"""Sharded training checkpoints (FSDP2): every rank writes its shards with PyTorch's distributed
checkpoint (DCP), and a resume at any world size reads the pieces it needs (DCP reshards).

Layout: ``RUN_DIR/checkpoints/last`` is a symbolic link to ``step-<N>/``, a folder holding the
DCP files (``.metadata``, ``__<rank>_<i>.distcp``: the model's and the Adam state's tensors, by
parameter name), ``meta.pt`` (step, state sizes, RNG, trainer state, recipe: tensors and plain
values with the checksum of checkpoint.py) and ``manifest.json`` (SHA-256 of every other file).
Written as today's ``last.pt`` is, complete or not at all: into ``.step-<N>.tmp/``, checked
against its manifest, renamed to ``step-<N>/``, and only then does ``last`` point at it (an
atomic replace of the link); the checkpoint it replaces stays as ``prev``, older ones go.

Loading runs no pickled code: the manifest is checked first; DCP's ``.metadata`` (a pickle of
its own metadata classes) is read by an unpickler that knows only those classes; the tensors are
read with ``weights_only=True``; any entry DCP would unpickle (a non-tensor value) is refused.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from ..models.files import safe_torch_load
from ..run_paths import LAST_CHECKPOINT
from .checkpoint import FORMAT, PREVIOUS, atomic_save, verify_checksum

LAST, PREV, META, MANIFEST = "last", "prev", "meta.pt", "manifest.json"


def sharded_path(path) -> Path | None:
    """The sharded checkpoint ``path`` names (a run folder, its ``checkpoints/`` folder, a
    ``last``/``prev`` link or a ``step-<N>`` folder), or None when it names none."""
    path = Path(path)
    for cand in (path / "checkpoints" / LAST, path / LAST, path):
        if cand.is_dir() and (cand / META).is_file():
            return cand
    return None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def verify(folder: Path) -> str | None:
    """None when every file of the checkpoint ``folder`` matches its manifest, else what is wrong."""
    try:
        stored = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"no readable {MANIFEST} ({type(e).__name__})"
    actual = _manifest(folder)
    if stored != actual:
        odd = sorted(set(stored) ^ set(actual)) or [k for k in stored if stored[k] != actual.get(k)]
        return f"files differ from the manifest ({', '.join(odd[:3])})"
    return verify_checksum(folder / META)


def save_sharded(ckpt_dir: Path, model, optimizer, meta: dict, accelerator) -> Path:
    """Write the sharded checkpoint of step ``meta['step']`` (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    step = int(meta["step"])
    final, tmp = ckpt_dir / f"step-{step:08d}", ckpt_dir / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd["state"]}, checkpoint_id=str(tmp))
    failed = None
    if accelerator.is_main_process:
        try:  # the other ranks wait at the barrier below: reach it before raising
            atomic_save({"format": FORMAT, "sharded": True, **meta}, tmp / META)
            (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1))
            problem = verify(tmp)
            if problem:
                raise OSError(f"the checkpoint written in {tmp} does not verify ({problem}); {ckpt_dir / LAST} "
                              "unchanged")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _point(ckpt_dir)
        except OSError as e:
            failed = e
    accelerator.wait_for_everyone()
    if failed is not None:
        raise failed
    return final


def _point(ckpt_dir: Path) -> None:
    """``last`` → the newest step folder, ``prev`` → the one it replaced (atomic link swaps),
    other step folders and a stale ``last.pt`` removed."""
    newest = max(p.name for p in ckpt_dir.glob("step-*") if p.is_dir())
    last = ckpt_dir / LAST
    old = os.readlink(last) if last.is_symlink() else None
    for name, target in ((PREV, old), (LAST, newest)):
        if target is None or target == newest and name == PREV:
            continue
        link = ckpt_dir / f".{name}.link"
        link.unlink(missing_ok=True)
        os.symlink(target, link)
        os.replace(link, ckpt_dir / name)
    keep = {newest, os.readlink(ckpt_dir / PREV) if (ckpt_dir / PREV).is_symlink() else None}
    for p in ckpt_dir.glob("step-*"):
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    for stale in (Path(LAST_CHECKPOINT).name, PREVIOUS):  # a whole-model checkpoint this sharded one follows
        (ckpt_dir / stale).unlink(missing_ok=True)


def drop_sharded(ckpt_dir: Path) -> None:
    """Remove the sharded checkpoints in ``ckpt_dir`` (a whole-model ``last.pt`` now follows them)."""
    for name in (LAST, PREV):
        (ckpt_dir / name).unlink(missing_ok=True)
    for p in ckpt_dir.glob("step-*"):
        shutil.rmtree(p, ignore_errors=True)


def load_meta(folder: Path) -> dict:
    """The checked ``meta.pt`` of a sharded checkpoint (raises a one-line ValueError)."""
    problem = verify(folder)
    if problem:
        prev = folder.parent / PREV
        ok = prev.is_dir() and not verify(prev)
        alt = f" The previous checkpoint {prev} is intact: resume from it." if ok else ""
        raise ValueError(f"checkpoint {folder} is corrupt or incomplete: {problem}; refused, nothing was loaded.{alt}")
    meta = safe_torch_load(folder / META, "checkpoint")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("sharded"):
        raise ValueError(f"{folder} is not a compressmamba sharded checkpoint (expected {FORMAT!r} in {META})")
    return {**meta, "sharded_path": str(folder)}


def projection_shapes(model) -> dict[str, list[int]]:
    """Shapes of the balanced cuts' state projections (``bc_proj``): a model rebuilt from its
    state sizes alone lacks them, and DCP loads into the tensors a model has."""
    return {n: list(p.shape) for n, p in model.named_parameters() if ".bc_proj." in n}


def add_projections(model, shapes: dict[str, list[int]]) -> None:
    """Give a freshly built ``model`` the projections of :func:`projection_shapes` (the layers'
    own state-dict loading reshapes them; DCP then fills the values)."""
    if shapes:
        model.load_state_dict({n: torch.zeros(s) for n, s in shapes.items()}, strict=False)


def load_sharded(folder: Path, model, optimizer) -> None:
    """Load a sharded checkpoint's model and Adam state into ``model`` (sharded or not, at any
    world size: DCP reads the slices each rank holds) and ``optimizer``; every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)  # the optimizer's state is created here, to be filled
    state = {"model": msd, "optim": osd["state"]}
    try:
        reader, planner = _safe_reader()
        storage = reader(str(folder))
        storage.read_metadata()  # refuse bad metadata here, alike on every torch (2.11's dcp.load hides why)
        dcp.load(state, storage_reader=storage, planner=planner())
    except dcp.api.CheckpointException as e:
        refused = [line for line in str(e).splitlines() if "refused" in line]
        raise ValueError(refused[-1].split(": ", 1)[-1] if refused else f"checkpoint {folder}: {e}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict={"state": state["optim"], "param_groups": osd["param_groups"]})  # fmt: skip


# --- reading DCP's files without running pickled code -----------------------------------------
def _dcp_classes() -> dict[tuple[str, str], object]:
    import pathlib

    from torch.distributed.checkpoint import filesystem, metadata

    allowed = {("torch", "Size"): torch.Size, ("collections", "OrderedDict"): __import__("collections").OrderedDict}
    for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"):  # fmt: skip
        if hasattr(metadata, name):
            allowed[(metadata.__name__, name)] = getattr(metadata, name)
    allowed[(filesystem.__name__, "_StorageInfo")] = filesystem._StorageInfo
    for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
        allowed[("pathlib", name)] = getattr(pathlib, name)
        allowed[("pathlib._local", name)] = getattr(pathlib, name)
    allowed[("torch._utils", "_get_layout")] = allowed[("torch.serialization", "_get_layout")] = _layout
    return allowed


def _layout(name: str):
    layout = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(layout, torch.layout):
        raise pickle.UnpicklingError(f"not a torch layout: {name!r}")
    return layout


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's metadata classes, torch dtypes and layouts only: nothing else is constructed or called."""

    allowed = None

    def find_class(self, module, name):
        if _MetadataUnpickler.allowed is None:
            _MetadataUnpickler.allowed = _dcp_classes()
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata: refused")


@functools.cache
def _safe_reader():
    """(reader, planner) classes over DCP's public FileSystemReader and DefaultLoadPlanner that
    unpickle nothing but DCP's metadata classes (made on first use: importing DCP is not free)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            path = Path(self.path) / ".metadata"
            try:
                metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
                raise ValueError(f"checkpoint {path.parent}: its DCP metadata {path} is refused ({e})") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class TensorsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            raise ValueError(
                f"checkpoint entry {read_item.dest_index.fqn} is a pickled object, not a tensor: refused (a "
                "compressmamba sharded checkpoint holds tensors only)"
            )

    return SafeReader, TensorsOnly
