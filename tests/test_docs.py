"""The documentation: a README of about one page, and every relative link and image in the docs resolving.

Checked files: ``README.md``, ``docs/*.md`` and ``benchmarks/RESULTS-*.md``. A relative link must name a
file or folder of the repository; a ``#anchor`` on a Markdown target (or on the page itself) must name one
of its headings, by GitHub's slug rule. Web links (``http(s)://``, ``mailto:``) are not fetched.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_BYTES = 12 * 1024
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("RESULTS-*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the target may be wrapped in <>.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # the text, which may hold one level of brackets
                         r"\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # the target, balanced parentheses allowed
                         r"(?:\s+[\"'(][^)]*)?\s*\)")  # an optional title
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fence = [], None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0] * 3
            continue
        if fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            continue
        lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Every link and image target of a Markdown text (inline, reference definitions, HTML ``a``/``img``)."""
    prose = INLINE_CODE.sub(" ", "\n".join(prose_lines(text)))  # a link written as code is not a link
    found = [match.group(1) for pattern in (INLINE_LINK, REFERENCE_DEFINITION, HTML_LINK)
             for match in pattern.finditer(prose)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in found]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without Markdown, lower case, no punctuation, spaces → hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or an image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_, not snake_case
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file; a repeated heading gets -1, -2, … as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def broken_links(doc: Path, repo: Path = REPO) -> list[str]:
    """Each relative link of ``doc`` that names no file of ``repo``, or a heading its target lacks, with the reason."""
    broken = []
    for target in links(doc.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # a web link (not fetched), or an empty one
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if path_part.startswith("/"):
            resolved = (repo / path_part.lstrip("/")).resolve()
        else:
            resolved = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        if not resolved.is_relative_to(repo.resolve()):
            broken.append(f"{target} (points outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file: {resolved.relative_to(repo.resolve())})")
        elif (anchor and resolved.is_file() and resolved.suffix.lower() == ".md"
              and unquote(anchor).lower() not in anchors(resolved)):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(repo.resolve())})")
    return broken


def label(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_readme_is_about_one_page():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: "
                                      "move the detail into a page under docs/ and link to it")


@pytest.mark.parametrize("doc", DOCS, ids=label)
def test_every_relative_link_in_the_docs_resolves(doc: Path):
    broken = broken_links(doc)
    assert not broken, f"{label(doc)} has broken links:\n" + "\n".join(f"  {label(doc)}: {item}" for item in broken)


def test_every_docs_page_is_listed_in_the_docs_index():
    index = REPO / "docs" / "README.md"
    assert index.is_file(), "docs/README.md (the index of the docs pages) is missing"
    targets = [target for target in links(index.read_text(encoding="utf-8")) if not SCHEME.match(target)]
    listed = {(index.parent / unquote(target.partition("#")[0])).resolve() for target in targets}
    missing = [label(page) for page in sorted((REPO / "docs").glob("*.md"))
               if page != index and page.resolve() not in listed]
    assert not missing, "docs/README.md does not link: " + ", ".join(missing)


def test_the_readme_links_the_docs_index():
    assert "docs/README.md" in links(README.read_text(encoding="utf-8")), "README.md does not link docs/README.md"


def test_the_checker_reports_a_missing_file_a_missing_heading_and_nothing_else(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Scaling out: two workers (`MultiWorker`)\n")
    (tmp_path / "shot.png").write_bytes(b"")
    doc = tmp_path / "README.md"
    doc.write_text(
        "![shot](shot.png) [page](docs/page.md#scaling-out-two-workers-multiworker) [web](https://example.org/x)\n"
        "[self](#top) [gone](docs/gone.md) [bad anchor](docs/page.md#nowhere) ![lost](docs/lost.png)\n\n"
        "`[in code](nowhere.md)`\n\n```\n[in a block](nowhere.md)\n```\n\n# Top\n")
    assert broken_links(doc, tmp_path) == [
        "docs/gone.md (no such file: docs/gone.md)",
        "docs/page.md#nowhere (no heading #nowhere in docs/page.md)",
        "docs/lost.png (no such file: docs/lost.png)",
    ]


@pytest.mark.parametrize("heading, slug", [
    ("Scaling out: several workers on one run (`MultiWorkerMirroredStrategy`)",
     "scaling-out-several-workers-on-one-run-multiworkermirroredstrategy"),
    ("Augmentation strength, decided on validation only (2026-11-26)",
     "augmentation-strength-decided-on-validation-only-2026-11-26"),
    ("1. `train_speed`: tutorial pipeline vs `core.jobs.run`", "1-train_speed-tutorial-pipeline-vs-corejobsrun"),
    ("Quality: Kaggle chest_xray, official test split — 3 seeds per row",
     "quality-kaggle-chest_xray-official-test-split--3-seeds-per-row"),
])
def test_anchors_follow_githubs_slug_rule(heading: str, slug: str):
    assert github_slug(heading) == slug
