"""The recipes that ship inside the package, found by name from anywhere.

``compressmamba train lm/stdlib_demo`` runs ``compressmamba/recipes/lm/stdlib_demo.yaml`` (in a
clone, ``recipes/`` at the repository root links to that folder, so ``recipes/lm/stdlib_demo.yaml``
is the same file). A path to an existing file always wins over a name.

    compressmamba recipes                    # every shipped recipe, one line each
    compressmamba recipes copy lm/stdlib_demo my_recipes/   # a copy to edit
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


ACCELERATE_CONFIGS = "accelerate"  # recipes/accelerate/: Accelerate's launch configs (docs/scale.md), no recipes


def recipe_names() -> list[str]:
    """Every shipped recipe's name (``family/stem``), sorted."""
    paths = (p.relative_to(RECIPES_DIR) for p in RECIPES_DIR.rglob("*.yaml"))
    return sorted(p.with_suffix("").as_posix() for p in paths if p.parts[0] != ACCELERATE_CONFIGS)


def _as_name(arg: str) -> str:
    name = arg.replace(os.sep, "/")
    for prefix in ("./", "recipes/", "compressmamba/recipes/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def resolve_recipe(arg: str | os.PathLike) -> Path:
    """A recipe file: ``arg`` itself when it is a file, else the shipped recipe it names
    (``lm/stdlib_demo``, ``lm/stdlib_demo.yaml`` and ``recipes/lm/stdlib_demo.yaml`` all name
    one). Raises FileNotFoundError naming the argument, the closest names and how to list them."""
    path = Path(arg)
    if path.is_file():
        return path
    name = _as_name(str(arg))
    shipped = RECIPES_DIR / f"{name}.yaml"
    if name and shipped.is_file():
        return shipped
    close = difflib.get_close_matches(name, recipe_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(
        f"recipe {str(arg)!r} is neither a file nor the name of a shipped recipe{hint} "
        "(`compressmamba recipes` lists the names, e.g. lm/stdlib_demo)"
    )


def describe(path: Path, width: int = 100) -> str:
    """A recipe's one-line description: the first sentence of its leading comment, without
    parentheticals, at most ``width`` characters."""
    lines = []
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or text.startswith(("Data:", "Run:")):
            break
        lines.append(text)
    text = re.sub(r"\s*\([^()]*\)", "", " ".join(lines))
    text = re.split(r"(?<=[a-z0-9])[.;] ", text + " ", maxsplit=1)[0].strip().rstrip(".;")
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def copy_recipe(name: str, dest: str | os.PathLike) -> Path:
    """Write the shipped recipe ``name`` into folder ``dest`` (created if needed), never over an
    existing file. Returns the new file's path."""
    src = resolve_recipe(name)
    dest = Path(dest)
    target = dest / src.name if dest.suffix not in (".yaml", ".yml") else dest
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another destination or remove it first")
    from .atomic import atomic_write

    text = src.read_bytes()
    atomic_write(target, lambda f: f.write(text))
    return target


def _cmd_recipes(args) -> int:
    if args.action == "copy":
        if not args.name or not args.dest:
            raise ValueError("usage: compressmamba recipes copy NAME DIR (e.g. lm/stdlib_demo my_recipes/)")
        target = copy_recipe(args.name, args.dest)
        print(f"wrote {target}; run it with: compressmamba train {target}")
        return 0
    if args.action not in (None, "list"):
        raise ValueError(f"recipes {args.action!r}: expected `list` (the default) or `copy NAME DIR`")
    names = recipe_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {describe(RECIPES_DIR / f'{name}.yaml')}")
    print(f"\n{len(names)} recipes in {RECIPES_DIR}; run one with `compressmamba train NAME [key=value ...]`")
    return 0


def register(sub) -> None:
    r = sub.add_parser(
        "recipes",
        help="list the shipped recipes, or copy one to edit",
        description="`compressmamba recipes` lists the recipes that ship with the package (run one by name: "
        "`compressmamba train lm/stdlib_demo`); `compressmamba recipes copy NAME DIR` writes one to edit.",
    )
    r.add_argument("action", nargs="?", choices=("list", "copy"), help="list (default) or copy")
    r.add_argument("name", nargs="?", help="with copy: the recipe's name, e.g. lm/stdlib_demo")
    r.add_argument("dest", nargs="?", help="with copy: the folder (or .yaml path) to write it to")
    r.set_defaults(func=_cmd_recipes)
