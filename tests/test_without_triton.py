"""A CPU-only install has no Triton (it is in the ``test`` and ``cuda`` extras only): the CPU
path trains without it, and a forced Triton backend says how to install it, in one line."""

import json
import os
import subprocess
import sys

_HIDE_TRITON = """
import importlib.abc, sys

class HideTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, HideTriton())
"""

_TRAIN_A_STEP = _HIDE_TRITON + """
import json, torch
from compressmamba.registry import build_model
from compressmamba.kernels import selective_scan_fn

out = {}
for name, n in (("mamba", 5), ("mamba2", 6)):
    torch.manual_seed(0)
    model = build_model({"name": name, "d_model": 16, "n_layers": 2, "state_size": n, "vocab_size": 32})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 32, (2, 11))
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    out[name] = {"loss": float(loss), "moved": moved, "params": len(before)}
b, d, L, n = 1, 4, 3, 5
args = [torch.randn(b, d, L), torch.rand(b, d, L), -torch.rand(d, n), torch.randn(b, n, L), torch.randn(b, n, L)]
try:
    selective_scan_fn(*args, backend="triton")
    out["forced"] = None
except Exception as e:
    out["forced"] = f"{type(e).__name__}: {e}"
out["triton_loaded"] = "triton" in sys.modules
print(json.dumps(out))
"""


def test_cpu_model_trains_a_step_and_forced_triton_names_the_install():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _TRAIN_A_STEP], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for name in ("mamba", "mamba2"):
        r = out[name]
        assert 0 < r["loss"] < 10 and r["moved"] == r["params"], (name, r)
    assert out["triton_loaded"] is False
    forced = out["forced"]
    assert forced is not None and "\n" not in forced and "pip install triton" in forced, forced
    assert forced.startswith("ImportError: selective_scan_fn: backend='triton'"), forced
