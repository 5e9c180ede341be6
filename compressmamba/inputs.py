"""The models and tokenizers the commands take (``compress``, ``convert``, ``evaluate`` and the
lm-eval model type): a run folder, a saved model folder of any family, a mamba-ssm folder or a hub
id, with its tokenizer. Below :mod:`compressmamba.compress`, :mod:`compressmamba.evaluate` and
:mod:`compressmamba.harness`, which all import it (and none of which it imports). lm-eval is an
optional extra: :func:`require_lm_eval` names the install command."""

from __future__ import annotations

from pathlib import Path

from .run_paths import LAST_CHECKPOINT, last_checkpoint

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'compressmamba[eval]' (or pip install lm_eval)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def require_lm_eval():
    """The ``lm_eval`` module, or ImportError with the install command."""
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return lm_eval


# --- tokenizers ----------------------------------------------------------------------------------
def _byte_alphabet() -> dict[int, str]:
    """Byte → the printable character byte-level BPE uses for it (printable Latin-1 bytes stand for
    themselves, the rest are shifted past U+00FF), so every byte is one vocabulary entry."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


def byte_tokenizer():
    """A transformers fast tokenizer for compressmamba's byte-level models: token id = UTF-8 byte
    (0–255), end of text (and padding) = 0x00, the separator the token store puts after every
    document. Encoding is exact for any text: no BOS is added and special-token text in the input
    (the character that stands for 0x00) is encoded as its bytes, never as a special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _byte_alphabet()
    backend = Tokenizer(models.BPE(vocab={c: b for b, c in alphabet.items()}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    eos = alphabet[0]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=eos, split_special_tokens=True, name_or_path="byte"
    )
    tok.backend_tokenizer.encode_special_tokens = True  # releases that do not pass split_special_tokens on
    return tok


def load_tokenizer(spec: str):
    """``byte``, a ``tokenizer.json`` file, a tokenizer folder or a hub name → a transformers tokenizer."""
    if spec == "byte":
        return byte_tokenizer()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(spec).expanduser()
    if path.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"--tokenizer {spec!r}: expected 'byte', a tokenizer.json, a tokenizer folder or a hub name ({e})"
        ) from None


def _run_tokenizer(run_dir: Path) -> str | None:
    """A run folder's ``data.tokenizer`` (config.yaml), ``byte`` when the recipe leaves it out."""
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    data = (yaml.safe_load(cfg.read_text()) or {}).get("data") or {}
    return data.get("tokenizer", "byte")


def load_for_eval(spec: str, tokenizer: str | None = None):
    """MODEL (a run folder, a model folder or a hub id) → ``(model in eval mode, tokenizer)``.

    A folder without tokenizer files holds a byte-level model when its vocabulary is 256; any
    other needs ``tokenizer``. Raises FileNotFoundError / ValueError with one line naming MODEL."""
    from .models import load_pretrained

    path = Path(spec).expanduser()
    run_tok, model = None, None
    if path.is_dir() and (path / "config.yaml").is_file() and not (path / "config.json").is_file():  # a run
        run_tok = _run_tokenizer(path)
        if (path / "model" / "config.json").is_file():
            path = path / "model"
        elif last_checkpoint(path).is_file():
            model = load_any(str(path))
        else:
            raise FileNotFoundError(f"MODEL {spec}: a run folder with neither model/ nor {LAST_CHECKPOINT}")
    if model is None:
        model = load_pretrained(path if path.is_dir() else spec)
    if tokenizer is None:
        tokenizer = _default_tokenizer(spec, path, run_tok, model.config.vocab_size)
    return model.eval(), load_tokenizer(tokenizer)


def _default_tokenizer(spec: str, path: Path, run_tok: str | None, vocab_size: int) -> str:
    if not path.is_dir():
        return spec  # a hub id: its own tokenizer
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        return str(path)
    if run_tok:
        return run_tok
    if vocab_size == 256:
        return "byte"
    raise FileNotFoundError(
        f"MODEL {spec}: no tokenizer files and a vocabulary of {vocab_size} (not a byte-level model): "
        "give --tokenizer (e.g. EleutherAI/gpt-neox-20b for state-spaces/mamba-*)"
    )


def load_any(src: str):
    """A Hugging Face / mamba-ssm folder or hub id, or a compressmamba training run folder."""
    p = Path(src).expanduser()
    if last_checkpoint(p).is_file() or (p.is_file() and p.suffix == ".pt"):
        from .registry import families
        from .training.checkpoint import load_checkpoint, model_from_checkpoint

        ck = load_checkpoint(p)
        name = ck["recipe"]["model"].get("name")
        lms = sorted(n for n, f in families().items() if f.causal_lm is not None)
        if name not in lms:
            raise ValueError(
                f"{src} is a checkpoint of a {name!r} model; compress expects a language model, one of {lms}"
            )
        # every language model here has an output head (tied or not) named lm_head
        return model_from_checkpoint(ck, {"vocab_size": ck["model"]["lm_head.weight"].shape[0]})
    from .models.loading import load_pretrained

    return load_pretrained(src).eval()
