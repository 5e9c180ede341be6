"""compressmamba: in-training compression of state-space models (CompreSSM) in PyTorch."""

__version__ = "0.1.0"
