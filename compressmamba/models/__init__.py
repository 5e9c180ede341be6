"""Models: the LRU and Mamba (importing this registers Mamba with transformers' Auto classes)."""

from .lru import LRULayer, LRUModel, build_lru
from .mamba import CompressMambaConfig, CompressMambaForCausalLM, build_mamba

__all__ = ["CompressMambaConfig", "CompressMambaForCausalLM", "LRULayer", "LRUModel", "build_lru", "build_mamba"]
