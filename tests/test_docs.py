"""The repository stands on its own: no file points at documents outside it, and every section of a document
that the code cites (``§N``, ``§N.M``, ``§N.M.K`` = item K of a numbered list in section N.M) exists."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The document a bare section citation refers to.
DEFAULT_DOC = "avalanche-semantics.md"
#: Directories whose files cite sections; a bare citation there means ``DEFAULT_DOC``.
CITING_DIRS = ("clfast", "tests", "benchmarks", "csrc")
# Written in pieces so that this file does not match itself.
FORBIDDEN = ("shared" + "/reference", "shared" + "/design", ".." + "/shared", "/work" + "/shared")

# An optional document name just before the section sign (``docs/plugin-api.md`` §N), then the number.
_CITATION = re.compile(r"(?:([\w./-]+\.md)`*\s*)?§(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
_LIST_ITEM = re.compile(r"^(\d+)\.\s")


@cache
def _repo_files() -> tuple[Path, ...]:
    """Tracked files plus untracked ones git does not ignore (new files count too), that exist."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = sorted({ROOT / p for p in out.decode().split("\0") if p})
    return tuple(p for p in paths if p.is_file() and not p.is_symlink())


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


@cache
def _sections(doc: str) -> frozenset[str]:
    """Section numbers of ``docs/<doc>``: numbered headings, and N.M.K for item K of a numbered list that
    starts a line under heading N.M."""
    numbers: set[str] = set()
    current = None
    for line in (DOCS / doc).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = _HEADING.match(line)
            current = heading.group(1) if heading else None
            if current:
                numbers.add(current)
        elif current and (item := _LIST_ITEM.match(line)):
            numbers.add(f"{current}.{item.group(1)}")
    return frozenset(numbers)


def _citations(text: str) -> list[tuple[int, str | None, str]]:
    """(line number, the document named just before it or None, section) of every section citation."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in _CITATION.finditer(line):
            found.append((lineno, Path(m.group(1)).name if m.group(1) else None, m.group(2)))
    return found


def _unresolved(paths: list[Path], *, bare: str | None) -> list[str]:
    """Citations in ``paths`` whose section does not exist; a bare one refers to ``bare`` (None: skipped)."""
    bad = []
    for path in paths:
        text = _text(path)
        if text is None:
            continue
        for lineno, named, number in _citations(text):
            doc = named or bare
            if doc is None:
                continue
            where = f"{path.relative_to(ROOT)}:{lineno}: {doc} \u00a7{number}"
            if not (DOCS / doc).is_file():
                bad.append(where + " (no such document)")
            elif number not in _sections(doc):
                bad.append(where)
    return bad


def test_no_file_points_outside_the_repository() -> None:
    offenders = []
    for path in _repo_files():
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            offenders += [f"{path.relative_to(ROOT)}:{lineno}: {s}" for s in FORBIDDEN if s in line]
    assert not offenders, "references to documents outside the repository:\n" + "\n".join(offenders)


def test_the_section_parser_sees_headings_and_numbered_items() -> None:
    sections = _sections(DEFAULT_DOC)
    assert {"1", "1.4", "1.10", "2.1", "3.3", "4.9", "4.10", "5.4", "7", "8"} <= sections
    assert {"3.3.1", "3.3.7", "8.12", "4.5.4"} <= sections   # numbered items under a numbered heading
    assert "1.4.1" in sections and "1.4.4.1" not in sections  # indented sub-items are not sections
    cited = _citations("see ``docs/plugin-api.md`` \u00a74, then \u00a74.6. and \u00a74.5-4.7")
    assert cited == [(1, "plugin-api.md", "4"), (1, None, "4.6"), (1, None, "4.5")]


def test_every_section_the_code_cites_exists() -> None:
    paths = [p for p in _repo_files() if p.relative_to(ROOT).parts[0] in CITING_DIRS]
    assert paths
    bad = _unresolved(paths, bare=DEFAULT_DOC)
    assert not bad, "cited sections that do not exist:\n" + "\n".join(bad)


def test_every_section_the_docs_cite_by_name_exists() -> None:
    # In docs a bare section sign may mean the page itself; only citations that name their document count.
    paths = [p for p in _repo_files() if p.suffix == ".md" and p.relative_to(ROOT).parts[0] not in CITING_DIRS]
    assert paths
    bad = _unresolved(paths, bare=None)
    assert not bad, "cited sections that do not exist:\n" + "\n".join(bad)
