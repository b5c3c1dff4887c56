"""The project's documentation is self-contained.

* No tracked file cites a design file outside the repository (the project's
  own reference is docs/reference.md) or points into a folder beside the
  repository.
* Every relative link in README.md and docs/*.md reaches an existing file,
  and a ``#section`` anchor into a Markdown file names one of its headings.
"""
import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match its own patterns.
_DESIGN = "DESIGN"
FORBIDDEN = [
    (f"{_DESIGN}.md", re.compile(re.escape(f"{_DESIGN}.md"))),
    (f"{_DESIGN} §N", re.compile(_DESIGN + r"\s*§")),
    (f"{_DESIGN} reference", re.compile(_DESIGN + r"\s+reference")),
    ("../" + "shared", re.compile(re.escape("../" + "shared"))),
]

# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def text_of(path: Path):
    """The file's text, or None for binary files (NUL byte or not UTF-8)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None   # deleted in the work tree but still tracked, or a submodule
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_file_cites_outside_design_notes():
    offenders = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for label, pattern in FORBIDDEN:
            hits = len(pattern.findall(text))
            if hits:
                offenders.append(f"{path.relative_to(ROOT)}: {hits} x {label!r}")
    assert not offenders, ("cite docs/reference.md instead of files outside the repository:\n  "
                           + "\n  ".join(offenders))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors, seen = set(), {}
    for line in text.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def markdown_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    assert doc.is_file(), f"{doc.relative_to(ROOT)} is missing"
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue   # http:, https:, mailto: ...
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors_of(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(broken)


def test_reference_sections_have_stable_anchors():
    # Code, configs and notebooks cite these sections by number.
    anchors = anchors_of(ROOT / "docs" / "reference.md")
    for anchor in ["1-the-paper-in-brief", "2-reactnet-a", "3-reactnet-18", "4-beta-tables",
                   "5-training-recipe", "6-deviations-from-the-published-code",
                   "7-operation-counts", "8-signal-propagation", "9-what-small-data-shows"]:
        assert anchor in anchors, f"docs/reference.md lost its section #{anchor}"
