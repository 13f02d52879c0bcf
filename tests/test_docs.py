"""The README and docs/ hold together: every relative link and #anchor resolves, nothing is orphaned.

External http(s) links are not fetched (the tests need no network). Anchors are checked against the
headings of the target file, turned into the slugs GitHub gives them.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 260  # a front page: what it does, the two commands, a short tour, links

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str):
    """Gives (line number, line) for lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """Gives the anchor GitHub makes of a heading's text: markup dropped, lower case, punctuation
    other than '-' and '_' removed, each space a '-'."""
    pieces = []
    for n, piece in enumerate(re.split(r"(`+.+?`+)", heading)):
        if n % 2:  # a code span shows its content as written
            pieces.append(piece.strip("`"))
            continue
        piece = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", piece)  # a link shows its text
        piece = re.sub(r"<[^>]+>", "", piece)                       # inline HTML
        pieces.append(piece.replace("*", ""))                         # emphasis markers
    text = "".join(pieces).strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Gives every #anchor a Markdown file offers: its headings' slugs (repeats numbered -1, -2, ...
    as GitHub does) and explicit <a id/name> anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """Gives (line number, target) for every Markdown link and image in prose (not in code)."""
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        prose = _CODE_SPAN.sub("", line)
        for match in _LINK.finditer(prose):
            yield number, match.group(1)


def broken_links(path: Path) -> list[str]:
    """Gives 'file:line: target (why)' for each relative link in `path` that does not resolve."""
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto: not fetched
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where} (no file {file_part})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where} (no heading with anchor #{anchor} in {resolved.name})")
    return problems


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert list(links(path)), f"{path.name} links nowhere; a doc should point to the others"
    problems = broken_links(path)
    assert not problems, "broken links (fix the path or the heading):\n" + "\n".join(problems)


def test_the_checker_flags_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# A heading: with `code`, punctuation!\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#a-heading-with-code-punctuation) [repeat](other.md#twice-1) [self](#page)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [web](https://example.org/x#y)\n"
        "```\n[in code](missing-too.md)\n```\n"
        "`[in a code span](missing-three.md)`\n")
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "missing.md (no file missing.md)" in problems[0]
    assert "#nowhere" in problems[1] and "other.md" in problems[1]


@pytest.mark.parametrize("heading, expected", [
    ("Set-up: two commands", "set-up-two-commands"),
    ("Embed a dataset (the batch job)", "embed-a-dataset-the-batch-job"),
    ("embed: `python cli.py bench embed --device cpu`", "embed-python-clipy-bench-embed---device-cpu"),
    ("The label config: labels, prompts, emoji policy, dataset maps",
     "the-label-config-labels-prompts-emoji-policy-dataset-maps"),
    ("**Bold** and [a link](x.md)", "bold-and-a-link"),
    ("snake_case stays, `__version__` too", "snake_case-stays-__version__-too"),
])
def test_slugs_are_githubs(heading, expected):
    assert slug(heading) == expected


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}); move the detail to docs/")
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in links(README)}
    orphans = [doc.name for doc in DOCS if doc.resolve() not in linked]
    assert not orphans, f"docs not linked from README.md: {orphans}"


def test_readme_test_command_is_the_one_ci_runs():
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "./run test" in ci
    assert re.search(r"^\./run test\s", readme, re.M), "README must show `./run test`, the command CI runs"
