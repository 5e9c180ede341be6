"""Checkpoints: atomic writes (``compressmamba/atomic.py``) that record every layer's state size.

A training checkpoint holds only tensors and plain Python values (dict, list, str, int, float,
bool, None): RNG states are stored as tensors and lists, so it loads with
``torch.load(weights_only=True)`` and a file that carries any other pickled object is refused
before anything in it runs.

Every checkpoint carries a SHA-256 of its content (the archive's records, names and bytes) as
its last record, ``.data/checksum.sha256``, appended after ``torch.save`` has written the rest
and checked before the file replaces ``last.pt``; the checkpoint it replaces is kept as
``prev.pt``. Loading checks the checksum first: a file changed after it was written (a bad disk,
a partial overwrite) is refused with one line naming it and the previous checkpoint if that one
is intact, never loaded into a run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..models.files import safe_torch_load
from ..run_paths import last_checkpoint

FORMAT = "compressmamba-checkpoint-2"
CHECKSUM_RECORD = ".data/checksum.sha256"  # inside the archive's folder; torch.load ignores it
PREVIOUS = "prev.pt"  # the checkpoint last.pt replaced, kept beside it


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file too large, ...): one line naming the
    file and the OS error; the checkpoint it was to replace is unchanged."""


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: itself, or the one torch's writer raised over (``RuntimeError:
    [enforce fail at inline_container.cc] ... unexpected pos`` hides the ENOSPC / EFBIG of the
    write it made)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _describe(err: OSError) -> str:
    if err.errno is not None and err.strerror:
        return f"{errno.errorcode.get(err.errno, err.errno)} ({err.strerror})"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def atomic_save(obj, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` atomically (see :func:`atomic_write`), with its checksum."""
    atomic_write(path, lambda f: _save_with_checksum(obj, f))


def _content_digest(zf: zipfile.ZipFile) -> str:
    """SHA-256 over every record but the checksum: names and bytes, in archive order. Reading
    through zipfile also checks each record's CRC and its local header against the directory."""
    h = hashlib.sha256()
    for info in zf.infolist():
        if info.filename.endswith("/" + CHECKSUM_RECORD):
            continue
        h.update(info.filename.encode() + b"\0")
        with zf.open(info) as r:
            while chunk := r.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _save_with_checksum(obj, f) -> None:
    """torch.save ``obj`` into ``f``, then append the checksum record (written last)."""
    torch.save(obj, f)
    f.flush()
    f.seek(0)
    with zipfile.ZipFile(f, "a") as zf:
        folder = zf.namelist()[0].split("/")[0]
        zf.writestr(f"{folder}/{CHECKSUM_RECORD}", _content_digest(zf))


def verify_checksum(path) -> str | None:
    """None if the content of ``path`` (a path or an open binary file) matches its checksum, else
    what is wrong (one phrase). A file written before checksums existed is checked by its
    records' CRCs alone."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return "not a torch zip archive"
    with zf:
        names = [n for n in zf.namelist() if n.endswith("/" + CHECKSUM_RECORD)]
        try:
            if not names:
                bad = zf.testzip()
                return None if bad is None else f"record {bad} fails its CRC check"
            stored = zf.read(names[0]).decode(errors="replace").strip()
            actual = _content_digest(zf)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            return f"checksum mismatch ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None if stored == actual else f"checksum mismatch (stored {stored[:12]}..., content {actual[:12]}...)"


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(
    path,
    *,
    model,
    optimizer,
    step: int,
    state_sizes,
    trainer_state: dict,
    recipe: dict,
    pragmatic_snapshot: dict | None = None,
) -> None:
    """Write a training checkpoint; ``pragmatic_snapshot`` (score, sizes, model and optimizer
    state) is the rollback point of the pragmatic schedule, so a resumed run rolls back where
    the uninterrupted one would. The new file is verified against its checksum before it
    replaces ``path``; the file it replaces stays beside it as ``prev.pt``."""
    path = Path(path)

    def write(f):
        _save_with_checksum(obj, f)
        f.flush()
        f.seek(0)
        problem = verify_checksum(f)  # the file read back
        if problem:
            raise OSError(errno.EIO, f"the file written does not verify: {problem}")
        _keep_previous(path)  # verified: now the file it replaces becomes prev.pt

    obj = {
        "format": FORMAT,
        "step": step,
        "state_sizes": list(state_sizes),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "trainer": trainer_state,
        "recipe": recipe,
        "pragmatic_snapshot": pragmatic_snapshot,
    }
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:
        err = _os_error(e)
        if err is None or isinstance(err, CheckpointWriteError):
            raise
        why = _describe(err)
        raise CheckpointWriteError(f"could not write checkpoint {path}: {why}; nothing was replaced") from None


def _keep_previous(path: Path) -> None:
    """Hard-link ``path`` as ``prev.pt`` (a copy where links are not supported), so the checkpoint
    the next write replaces stays loadable."""
    if not path.is_file():
        return
    prev = path.with_name(PREVIOUS)
    tmp = path.with_name(f".{PREVIOUS}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, prev)
    except OSError:
        tmp.unlink(missing_ok=True)


def checkpoint_path(path) -> Path:
    """RUN_DIR → RUN_DIR/checkpoints/last.pt; a file path is returned as is."""
    path = Path(path)
    if path.is_dir():
        last = last_checkpoint(path)
        path = last if last.parent.is_dir() else path / last.name
    return path


def load_checkpoint(path) -> dict:
    """Load a training checkpoint (a run folder or a ``.pt`` file) safely; see
    :func:`safe_torch_load`. Raises FileNotFoundError or a one-line ValueError."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected RUN_DIR/checkpoints/last.pt)")
    problem = verify_checksum(path)
    if problem:
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated: {problem}; refused, nothing was loaded. {_alternative(path)}"
        )
    try:
        ckpt = safe_torch_load(path, "checkpoint")
    except ValueError as e:
        raise ValueError(f"{e}. {_alternative(path)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a compressmamba training checkpoint (format {fmt!r}, expected {FORMAT!r})")
    missing = [k for k in ("step", "state_sizes", "model", "optimizer", "rng", "trainer", "recipe") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {missing}")
    return ckpt


def model_from_checkpoint(ckpt: dict, info: dict | None = None) -> torch.nn.Module:
    """Rebuild the model a training checkpoint (:func:`load_checkpoint`'s dict) holds: its
    recipe's model config with ``info`` (the data facts its builder takes, e.g. ``vocab_size``;
    keys outside ``MODEL_INFO_KEYS`` are ignored), at the checkpoint's per-layer state sizes,
    with its weights. Returns the model on the CPU in eval mode. The one place a run folder
    becomes a model again (compress, evaluate, a distillation teacher)."""
    from ..registry import MODEL_INFO_KEYS, build_model

    keys = {k: v for k, v in (info or {}).items() if k in MODEL_INFO_KEYS}
    model = build_model({**ckpt["recipe"]["model"], **keys}, state_sizes=ckpt["state_sizes"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def resume_hint(run_dir: Path, saved_step: int | None) -> str:
    """Where a run that stops now resumes from: its last checkpoint (written or loaded at
    ``saved_step``), or nowhere yet."""
    ck = checkpoint_path(run_dir)
    if saved_step is not None and ck.is_file():
        return f"The last checkpoint (step {saved_step}) is in {ck.parent}: resume with --resume {run_dir}."
    return "No checkpoint has been written yet: restart the run."


def _alternative(path: Path) -> str:
    """Where to resume from instead of the damaged ``path``: its intact ``prev.pt``, if any."""
    prev = path.with_name(PREVIOUS)
    if prev != path and prev.is_file() and verify_checksum(prev) is None:
        return f"The previous checkpoint {prev} is intact: resume from it with --resume {prev}."
    return "No intact earlier checkpoint is here: restart the run (--overwrite)."


def load_checkpoint_model(model, ckpt: dict, resume, changes: list[dict]) -> None:
    """The checkpoint's weights into ``model`` (the one the recipe built); a model of another
    shape (a resume under --allow-recipe-change with other model keys) is refused in one line."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        have = model.state_dict()
        odd = [
            f"{k} {list(v.shape)} in the checkpoint, {list(have[k].shape)} in the recipe's model"
            for k, v in ckpt["model"].items()
            if k in have and tuple(v.shape) != tuple(have[k].shape)
        ] or [f"the parameter names differ ({sorted(set(ckpt['model']) ^ set(have))[:3]} ...)"]
        keys = [f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes if c["key"].startswith("model.")]
        raise ValueError(
            f"--resume {resume}: the checkpoint's model does not fit the recipe's ({odd[0]}); a resume cannot "
            f"change the model's shape ({', '.join(keys) or 'model keys'}): resume with the checkpoint's model "
            "keys, or start a new run elsewhere (out_dir=NEW_FOLDER)"
        ) from None

