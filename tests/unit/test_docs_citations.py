"""Every section of docs/ that the code, the tests or the documents cite (`docs/NAME.md, "Section"`)
exists there, as a heading or a bold paragraph title, so that a reader following a citation finds it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r'docs/([a-z0-9_-]+\.md)`?,? \(?"([^"\n]+)"')
TREES = ("velcro_ref", "simulator", "scripts", "benchmarks", "tests", "docs")


def _citing_files():
    for tree in TREES:
        yield from (p for p in (ROOT / tree).rglob("*") if p.suffix in (".py", ".md"))
    yield ROOT / "README.md"


def _titles(doc: str) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", doc, re.M)
    bold = re.findall(r"\*\*([^*\n]+?)\.?\*\*", doc)
    return {t.strip() for t in heads + bold}


def test_every_cited_docs_section_exists():
    cited = {}
    for path in _citing_files():
        for doc, section in CITATION.findall(path.read_text(encoding="utf-8")):
            cited.setdefault((doc, section), path.relative_to(ROOT))
    assert len(cited) >= 10  # the pattern still finds the citations
    missing = []
    for (doc, section), where in sorted(cited.items()):
        target = ROOT / "docs" / doc
        titles = _titles(target.read_text(encoding="utf-8")) if target.exists() else set()
        if not any(t == section or t.startswith(section + " ") or t.startswith(section + " (") for t in titles):
            missing.append(f'{where}: docs/{doc}, "{section}"')
    assert not missing, missing
