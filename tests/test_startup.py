"""Start-up cost: the light commands import neither torch nor transformers, and ``import
compressmamba`` registers its model types with transformers' Auto classes without importing the
hybrids' modeling modules until a hybrid is built (timings: eval/bench_startup.py, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIGHT_COMMANDS = [
    ["--version"],
    ["--help"],
    ["recipes"],
    ["train", "--help"],
    ["compress", "--help"],
    ["convert", "--help"],
    ["evaluate", "--help"],
    ["env", "--help"],
    ["recipes", "copy", "--help"],
    ["aggregate", "--help"],
    ["prepare-data", "--help"],
]


def _run(code: str, *args: str, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "ACCELERATE_USE_CPU")}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


_CLI = """
import contextlib, io, json, sys
from compressmamba.cli import main
HEAVY = ("torch", "transformers", "numpy", "accelerate", "triton")
rows = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    rows.append({"argv": argv, "rc": rc, "out": out.getvalue(), "heavy": [m for m in HEAVY if m in sys.modules]})
print(json.dumps(rows))
"""


def test_light_commands_import_no_model_library(tmp_path):
    """Each command runs in turn in one fresh interpreter; the first to import a model library is named."""
    commands = [*LIGHT_COMMANDS, ["recipes", "copy", "lm/stdlib_demo", str(tmp_path)]]
    for row in _run(_CLI, json.dumps(commands)):
        assert row["rc"] in (0, None), row
        assert row["out"].strip(), f"compressmamba {' '.join(row['argv'])} printed nothing"
        assert row["heavy"] == [], f"compressmamba {' '.join(row['argv'])} imported {row['heavy']}"
    assert (tmp_path / "stdlib_demo.yaml").is_file()


_AUTO = """
import json, sys
import compressmamba
light = [m for m in ("torch", "transformers") if m in sys.modules]
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.for_model("compressmamba2", vocab_size=64, hidden_size=32, num_hidden_layers=2)
model = AutoModelForCausalLM.from_config(cfg)
hybrid_modules = [m for m in sys.modules if m.startswith("transformers.models.") and m.endswith(
    tuple("modeling_" + t for t in ("bamba", "granitemoehybrid", "zamba2", "nemotron_h", "falcon_h1", "jamba",
    "falcon_mamba")))]
print(json.dumps({"light": light, "model": type(model).__name__, "hybrid_modules": hybrid_modules}))
"""


def test_import_registers_auto_classes_without_hybrid_modeling_modules():
    r = _run(_AUTO)
    assert r["light"] == [], f"import compressmamba imported {r['light']}"
    assert r["model"] == "CompressMamba2ForCausalLM"
    assert r["hybrid_modules"] == []


_AUTO_HYBRID = """
import json, sys
sys.path.insert(0, sys.argv[2])
import compressmamba
from transformers import AutoConfig, AutoModelForCausalLM
from hybrid_configs import COMMON, TINY
fields = {**COMMON, **TINY[sys.argv[1]], "vocab_size": 64}
cfg = AutoConfig.for_model("compressmamba_" + sys.argv[1], **fields)
before = [m for m in sys.modules if m.endswith("modeling_" + sys.argv[1])]
model = AutoModelForCausalLM.from_config(cfg)
print(json.dumps({"before": before, "cls": type(model).__name__, "sizes": model.state_sizes}))
"""


def test_lazy_hybrid_entry_builds_the_real_class():
    from compressmamba.models import hybrid

    if hybrid.available("bamba") is not None:
        pytest.skip(hybrid.available("bamba"))
    r = _run(_AUTO_HYBRID, "bamba", str(Path(__file__).parent / "models"))
    assert r["before"] == []
    assert r["cls"] == "CompressBambaForCausalLM"
    assert r["sizes"] == [12, 12]


def test_import_after_transformers_registers_at_once():
    code = (
        "import json, transformers.models.auto.modeling_auto, compressmamba\n"
        "from transformers import AutoConfig\n"
        "print(json.dumps({'cls': type(AutoConfig.for_model('compressmamba', vocab_size=64)).__name__}))"
    )
    assert _run(code)["cls"] == "CompressMambaConfig"
