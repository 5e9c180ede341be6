"""Nothing cites a missing file: every relative markdown link (and its #anchor) in README.md and
docs/, every ``something.md`` a source file, recipe or document names, and every quoted section
after such a citation (``docs/design.md, "Mamba-1: ..."``) exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCANNED = ("compressmamba", "kernels", "eval", "tests", "docs")
SUFFIXES = {".py", ".md", ".yaml", ".sh", ".toml"}
# files the code writes (or a test fixture), named in the text but not documents of this repository
WRITTEN = re.compile(r"(table|study|summary|compile_report|c|bench_\w+)\.md")  # summary.md: compressmamba evaluate

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CITATION = re.compile(r"(?<![\w./*-])((?:[\w-]+/)*[\w-]+\.md)\b")
SECTION = re.compile(r"((?:[\w-]+/)*[\w-]+\.md),?\s+(?:section\s+)?\"([^\"]+)\"")


def _texts() -> dict[Path, str]:
    files = [ROOT / "README.md"]
    for folder in SCANNED:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    here = Path(__file__).resolve()
    return {p: p.read_text(encoding="utf-8") for p in files if p.resolve() != here}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(md: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in md.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def _resolve(name: str, cited_from: Path) -> Path | None:
    for base in (cited_from.parent, ROOT, ROOT / "docs"):
        if (base / name).is_file():
            return base / name
    return None


def test_every_relative_markdown_link_points_to_an_existing_file_and_heading():
    broken = []
    for md in MARKDOWN:
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path) if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: link to {target} (no file {path})")
            elif anchor and dest.suffix == ".md" and anchor not in {_slug(h) for h in _headings(dest)}:
                broken.append(f"{md.relative_to(ROOT)}: link to {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_every_cited_markdown_file_exists():
    missing = []
    for path, text in _texts().items():
        for name in set(CITATION.findall(text)):
            if WRITTEN.fullmatch(Path(name).name) or _resolve(name, path):
                continue
            missing.append(f"{path.relative_to(ROOT)} cites {name}, which is not in the repository")
    assert not missing, "\n".join(sorted(missing))


def test_every_cited_section_exists():
    missing = []
    for path, text in _texts().items():
        for name, section in SECTION.findall(text):
            doc = _resolve(name, path)
            if doc is None:
                continue  # reported by the test above
            section = " ".join(section.split())
            if not any(h.startswith(section) for h in _headings(doc)):
                missing.append(f'{path.relative_to(ROOT)} cites {name}, "{section}": no such heading')
    assert not missing, "\n".join(sorted(missing))


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The patterns find a missing citation, a broken link and a missing section (so the tests
    above cannot pass by matching nothing)."""
    text = 'see DESIGN.md "Mamba-1" and [the design](docs/design.md#no-such-heading); docs/design.md, "Nope"'
    assert CITATION.findall(text) == ["DESIGN.md", "docs/design.md", "docs/design.md"]
    assert _resolve("DESIGN.md", tmp_path / "x.py") is None
    assert LINK.findall(text) == ["docs/design.md#no-such-heading"]
    assert SECTION.findall(text) == [("DESIGN.md", "Mamba-1"), ("docs/design.md", "Nope")]
    assert "no-such-heading" not in {_slug(h) for h in _headings(ROOT / "docs" / "design.md")}
    assert _slug("Mamba-2: per-group selection and balanced truncation") == (
        "mamba-2-per-group-selection-and-balanced-truncation"
    )
