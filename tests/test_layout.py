"""Nothing the project puts on sys.path shadows an installed distribution.

`python -m ...`, `python -c ...` and scripts run from the repository root put the root on
sys.path; pytest puts tests/ there. transformers >= 5.25 imports Hugging Face's `kernels` package
at import time, so a folder of ours that answers to `kernels` broke every import of transformers
(issue 20). These tests start fresh interpreters from those folders, as a user would.
"""

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import importlib.util, json, sys
try:  # transformers' hub-kernels integration imports `kernels` itself (5.x; 4.x has none)
    import transformers.integrations.hub_kernels  # noqa: F401
    integration = True
except ModuleNotFoundError as e:
    integration = e.name == "transformers.integrations.hub_kernels" and "absent"
import compressmamba
import compressmamba.kernels
from compressmamba.kernels import selective_scan_fn  # noqa: F401
spec = importlib.util.find_spec("kernels")
print(json.dumps({
    "path0": sys.path[0],
    "integration": integration,
    "kernels_origin": spec and spec.origin,
    "kernels_locations": spec and list(spec.submodule_search_locations or []),
    "compressmamba": compressmamba.__file__,
    "compressmamba_kernels": compressmamba.kernels.__file__,
}))
"""


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _inside(path, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


def _ours(path) -> bool:
    """In this repository's files (a virtual environment kept inside the clone is not ours)."""
    return _inside(path, ROOT) and not _inside(path, Path(sys.prefix))


@pytest.mark.parametrize("cwd", [".", "tests", "tests/kernels"])
def test_kernels_from_the_root_and_tests_is_not_ours(cwd):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT / cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["integration"], got
    assert not _ours(got["kernels_origin"]), f"`import kernels` from {cwd}/ runs our file: {got}"
    if _hf_kernels_installed():
        dist_files = importlib.metadata.distribution("kernels").locate_file("kernels")
        assert _inside(got["kernels_origin"], Path(dist_files)), got
    else:  # at most a namespace portion, which any installed `kernels` would take precedence over
        assert got["kernels_origin"] in (None, "namespace"), got
    assert Path(got["compressmamba_kernels"]).parent.name == "kernels", got


def test_python_dash_m_from_the_root():
    out = subprocess.run(
        [sys.executable, "-m", "compressmamba", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import compressmamba

    assert out.stdout.strip() == f"compressmamba {compressmamba.__version__}"


def _importable_names(folder: Path) -> set[str]:
    """Names `import NAME` resolves to a regular package or module of ``folder``."""
    names = {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in folder.glob("*.py")}
    return names


def test_no_importable_name_of_ours_is_a_distributions_import_name():
    provided = set(importlib.metadata.packages_distributions()) - {"compressmamba"}
    for folder in (ROOT, ROOT / "tests", *sorted(p for p in (ROOT / "tests").iterdir() if p.is_dir())):
        clash = _importable_names(folder) & (provided | {"kernels"})
        assert not clash, f"{folder} holds {sorted(clash)}, which installed distributions import as their own"
    # The root exposes only these two: a new top-level package needs the same look first.
    assert _importable_names(ROOT) == {"compressmamba", "eval"}


def _readme_modules() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return sorted(set(re.findall(r"^python -m ([\w.]+)", text, flags=re.M)))


@pytest.mark.slow
@pytest.mark.parametrize("module", _readme_modules())
def test_every_python_dash_m_line_of_the_readme_starts_from_the_root(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-3000:]
