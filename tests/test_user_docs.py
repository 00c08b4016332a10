"""The user-facing documents carry results, not project history.

README.md, benchmarks/README.md, examples/README.md and every page under
docs/ are read by users: they name no tracker issue, no work session, no
commit hash, no date of a change and no machine of the maintainers'.
History belongs in git and in CHANGELOG.md.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

PAGES = [
    "README.md",
    "benchmarks/README.md",
    "examples/README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/**/*.md")),
]

#: Pages that still carry such text, with the lines to fix; each case is a
#: strict xfail, so it fails once the page is clean and the entry must go.
KNOWN = {}

#: (what, pattern) searched in the whole page, code included.
WORDS = [
    ("tracker issue", re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)),
    (
        "pull request",
        re.compile(r"\b(?:PR|pull requests?) #?\d+\b", re.IGNORECASE),
    ),
    ("session", re.compile(r"\bsessions?\b", re.IGNORECASE)),
    ("date", re.compile(r"\b20\d\d-\d\d-\d\d\b")),
    (
        "a machine of ours",
        re.compile(
            r"\bdevelopment machines?\b|\bour (?:own )?machines?\b"
            r"|\bmachines? of ours\b",
            re.IGNORECASE,
        ),
    ),
]

#: (what, pattern) searched outside code, links' targets and URLs.
PROSE = [
    ("tracker reference", re.compile(r"(?<![&\w])#\d{1,3}\b")),
    ("commit hash", re.compile(r"\b[0-9a-f]{7,40}\b")),
]

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_INLINE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_URL = re.compile(r"https?://\S+|\]\([^)]*\)|<[^>\s]+>")


def _blank(match):
    """The match with every character but newlines turned into spaces."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _indented_code(text):
    """`text` with its indented code blocks blanked (line numbers kept)."""
    lines = text.split("\n")
    out = []
    previous_blank = True
    in_code = False
    for line in lines:
        indented = line.startswith("    ") or line.startswith("\t")
        if indented and (previous_blank or in_code) and line.strip():
            in_code = True
            out.append("")
        else:
            if line.strip():
                in_code = False
            out.append(line)
        previous_blank = not line.strip()
    return "\n".join(out)


def prose(text):
    """`text` without code blocks, code spans, URLs and link targets."""
    text = _FENCE.sub(_blank, text)
    text = _indented_code(text)
    text = _INLINE.sub(_blank, text)
    return _URL.sub(_blank, text)


def _is_hash(token):
    return bool(re.search(r"\d", token)) and bool(re.search(r"[a-f]", token))


def findings(text):
    """`(line number, what, matched text)` for every piece of history."""
    found = []

    def add(pattern_text, what, pattern, keep=lambda token: True):
        for match in pattern.finditer(pattern_text):
            if keep(match.group(0)):
                line = pattern_text.count("\n", 0, match.start()) + 1
                found.append((line, what, match.group(0)))

    without_fences = _FENCE.sub(_blank, text)
    for what, pattern in WORDS:
        add(without_fences, what, pattern)
    plain = prose(text)
    add(plain, PROSE[0][0], PROSE[0][1])
    add(plain, PROSE[1][0], PROSE[1][1], _is_hash)
    return sorted(found)


def _cases():
    for page in PAGES:
        marks = []
        if page in KNOWN:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[page]))
        yield pytest.param(page, id=page, marks=marks)


@pytest.mark.parametrize("page", list(_cases()))
def test_page_carries_no_history(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    found = findings(text)
    assert not found, f"{page}: " + "; ".join(
        f"line {line}: {what} {token!r}" for line, what, token in found
    )


@pytest.mark.parametrize(
    "text",
    [
        "Fixed in issue 12.",
        "See #27 for the plan.",
        "Measured this session.",
        "Run on the development machine.",
        "Re-run on 2026-11-30.",
        "The run on commit bc19cda.",
        "The code of 9a134fa's package.",
    ],
)
def test_history_is_found(text):
    assert findings(text)


@pytest.mark.parametrize(
    "text",
    [
        "The `av_digits-5-6dee6bc274` set.",
        "```\nhash 6dee6bc274\n```",
        "    git show 9a134fa",
        "[a heading](#study-2-seeds) and [a link](https://x.org/a1b2c3d4e)",
        "Adam 1e-3, 12 / 40 / 100 epochs, 0.874 ± 0.010, 2,000 samples.",
        "MALLOC_MMAP_THRESHOLD_=67108864 and a 1,024-d input.",
        "Issues are welcome; the issue tracker lists them.",
    ],
)
def test_results_are_not_history(text):
    assert not findings(text)
