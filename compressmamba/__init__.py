"""compressmamba: in-training compression of state-space models (CompreSSM) in PyTorch."""

__version__ = "0.1.0"

# registers model_types "compressmamba" and "compressmamba2" with transformers' AutoConfig /
# AutoModelForCausalLM (compressmamba.models imports both families), so
# that `import compressmamba` is all AutoModelForCausalLM.from_pretrained(RUN_DIR/model) needs
from .models import mamba as _mamba  # noqa: E402, F401
