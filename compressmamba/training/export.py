"""The model at the end of a run: ``RUN_DIR/model/``.

* A language model (a ``transformers.PreTrainedModel``, e.g. :class:`CompressMambaForCausalLM`)
  is written with ``save_pretrained``: ``config.json`` (with ``state_sizes``),
  ``model.safetensors``, ``generation_config.json``, and the tokenizer files when the recipe's
  tokenizer is not byte-level. Load it with ``AutoModelForCausalLM.from_pretrained(RUN_DIR/model)``
  after ``import compressmamba``.
* A classifier (LRU, Mamba) is written as ``model.safetensors`` plus ``config.json``
  (``format: compressmamba-classifier-1``, the recipe's ``model`` section, the dataset's model
  info and the per-layer ``state_sizes``); load it with :func:`load_classifier`.

The folder is written beside its final place and renamed into it, so a crash leaves the previous
one (or none), never half of one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from ..atomic import publish_folder

CLASSIFIER_FORMAT = "compressmamba-classifier-1"


def save_tokenizer(spec: str, out: Path) -> None:
    """Tokenizer files for a recipe's ``data.tokenizer`` (a tokenizer.json, a folder holding one,
    or a hub name already in the local cache)."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.suffix == ".json" and path.is_file():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec)
    tok.save_pretrained(out)


def _write_classifier(model: torch.nn.Module, out: Path, model_cfg: dict, info: dict) -> None:
    from safetensors.torch import save_model

    save_model(model, str(out / "model.safetensors"))
    cfg = {"format": CLASSIFIER_FORMAT, "model": dict(model_cfg), "info": info, "state_sizes": model.state_sizes}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def save_final_model(
    model: torch.nn.Module, run_dir: str | Path, *, model_cfg: dict, info: dict, tokenizer=None
) -> Path:
    """Write ``run_dir/model/`` (see the module docstring); returns its path. ``info`` holds the
    dataset's model keys (d_input, n_classes, vocab_size ...); ``tokenizer`` the recipe's
    ``data.tokenizer`` (None or "byte": no tokenizer files)."""
    from transformers import PreTrainedModel

    run_dir = Path(run_dir)
    final = run_dir / "model"
    for stale in run_dir.glob(".model.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f".model.{secrets.token_hex(4)}.tmp"
    tmp.mkdir(parents=True)
    try:
        if isinstance(model, PreTrainedModel):
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer not in (None, "byte"):
                save_tokenizer(tokenizer, tmp)
        else:
            _write_classifier(model, tmp, model_cfg, info)
        publish_folder(tmp, final, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_classifier(path: str | Path) -> torch.nn.Module:
    """Load a classifier written by :func:`save_final_model` (``RUN_DIR/model``) in eval mode.

    Raises FileNotFoundError for a missing file and a one-line ValueError naming the file for a
    broken config.json or weights that do not fit it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from ..models.files import read_config_json
    from ..registry import build_model

    path = Path(path)
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_path, weights):
        if not f.is_file():
            raise FileNotFoundError(f"classifier folder {path}: missing {f.name}")
    cfg = read_config_json(cfg_path)
    if cfg.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{cfg_path} is not a compressmamba classifier config (expected format {CLASSIFIER_FORMAT})")
    model = build_model(cfg["model"], **cfg["info"], state_sizes=cfg["state_sizes"])
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is corrupt or truncated: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:
        raise ValueError(f"{weights} does not fit {cfg_path}: {str(e).splitlines()[0]}") from None
    return model.eval()
