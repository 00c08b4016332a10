"""The repository's docs stand alone: no link leaves the repository."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_link_only_to_files_in_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).resolve().is_relative_to(ROOT), (
                doc,
                target,
            )
            assert (doc.parent / target).exists(), (doc, target)


def test_the_readme_points_to_the_olm_equations():
    assert "docs/olm.md" in (ROOT / "README.md").read_text()
    olm = (ROOT / "docs" / "olm.md").read_text()
    for equation in ("(Eq. 6)", "(Eq. 7)", "(Eq. 8)", "(Eq. 2)", "(Eq. 4)"):
        assert equation in olm
