"""Models: the LRU, Mamba-1, Mamba-2 and transformers' hybrids with Mamba-1 and Mamba-2 mixers
(importing this registers Mamba-1, Mamba-2 and every hybrid this transformers can run with
transformers' Auto classes; ``import compressmamba`` imports this when transformers' Auto classes
are first imported: compressmamba/auto_classes.py)."""

from .hybrid import HYBRIDS, build_hybrid, export_stock
from .lru import LRULayer, LRUModel, build_lru
from .mamba import CompressMambaConfig, CompressMambaForCausalLM, build_mamba
from .mamba2 import CompressMamba2Config, CompressMamba2ForCausalLM, build_mamba2

__all__ = [
    "HYBRIDS",
    "CompressMamba2Config",
    "CompressMamba2ForCausalLM",
    "CompressMambaConfig",
    "CompressMambaForCausalLM",
    "LRULayer",
    "LRUModel",
    "build_hybrid",
    "build_lru",
    "build_mamba",
    "build_mamba2",
    "export_stock",
    "load_pretrained",
]


def load_pretrained(path_or_id, *args, **kwargs):
    """Any supported checkpoint (Mamba-1 or Mamba-2; ours, transformers' or mamba-ssm's layout;
    a folder or a hub id) as our model of its type. See :func:`loading.load_pretrained`."""
    from .loading import load_pretrained as load

    return load(path_or_id, *args, **kwargs)
