"""Layers keep to their own: no module of the library imports another module's private name, and
the command modules that read models (compress, evaluate, harness, inputs) import in one
direction only. Both read the source (an import inside a function counts as much as one at the
top), since only a read of the source can keep them so."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"compressmamba": ROOT / "compressmamba", "compressmamba.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    """compressmamba's modules by dotted name (kernels/ and eval/ install inside the package)."""
    out = {}
    for prefix, folder in (*PACKAGE_DIRS.items(), ("compressmamba.eval", ROOT / "eval")):
        for f in folder.rglob("*.py"):
            parts = f.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((prefix, *parts))] = f
    return out


def _imports(name: str, path: Path):
    """(imported module, names) for every ``from ... import`` in ``path``, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_no_private_name_is_imported_across_modules():
    mods = _modules()
    found = []
    for name, path in mods.items():
        for target, names in _imports(name, path):
            if target in mods or target.startswith("compressmamba"):
                private = [
                    n for n in names if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in mods
                ]
                found += [f"{name} imports {target}.{n}" for n in private]
    assert found == []


def test_the_model_reading_commands_import_in_one_direction():
    """compress -> evaluate -> harness -> inputs (and compress -> inputs): no way back."""
    mods = _modules()
    group = {f"compressmamba.{m}" for m in ("compress", "evaluate", "harness", "inputs")}
    edges = {m: {t for t, _ in _imports(m, mods[m]) if t in group and t != m} for m in group}
    assert edges["compressmamba.inputs"] == set()
    seen, stack = set(), []

    def visit(m):
        assert m not in stack, f"import circle: {' -> '.join([*stack[stack.index(m) :], m])}"
        if m in seen:
            return
        stack.append(m)
        for t in edges[m]:
            visit(t)
        stack.pop()
        seen.add(m)

    for m in sorted(group):
        visit(m)


def test_state_size_is_the_largest_state_size_in_one_place():
    """``config.state_size = max(config.state_sizes)`` is written once (models/lm.py
    set_state_sizes); every cut and builder goes through it."""
    import re

    files = [f for f in (ROOT / "compressmamba").rglob("*.py") if re.search(r"state_size\s*=\s*max\(", f.read_text())]
    assert [f.name for f in files] == ["lm.py"]


def test_the_last_checkpoint_path_is_written_once():
    """RUN_DIR/checkpoints/last.pt is spelled only in compressmamba/run_paths.py."""
    import re

    files = [
        f.name
        for f in (ROOT / "compressmamba").rglob("*.py")
        if re.search(r"[\"']last\.pt[\"']|checkpoints/last\.pt[\"']", f.read_text())
    ]
    assert files == ["run_paths.py"]


def test_the_cut_controller_uses_the_trainers_public_surface():
    """cut_controller.py and sharded.py reach the trainer through public names only (log_row,
    val_score, make_model, prepare, set_optimizer ...), never its private ``_...`` members."""
    import re

    for name in ("cut_controller.py", "sharded.py"):
        text = (ROOT / "compressmamba" / "training" / name).read_text()
        assert not re.findall(r"\b(?:tr|trainer)\._[a-z]\w*", text), name
