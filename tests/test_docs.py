"""Docs that the code cites exist, and say what the code does.

Code comments and docstrings point readers at docs (`docs/firmware.md,
"Connection numbers"`); a pointer to a file or section that is not there sends
them nowhere. Checked here for every .py file of the product and the tests."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("firmware", "gateway", "sim", "app", "tests", "bench", "scripts")
                 if (ROOT / folder).exists()
                 for p in (ROOT / folder).rglob("*.py")
                 if "__pycache__" not in p.parts and p != Path(__file__).resolve())

# `docs/x.md, "Section"` or `docs/x.md "Section"`, possibly wrapped over comment lines
SECTION_REF = re.compile(r'((?:docs/)?[\w.-]+\.md),?\s+"([^"]+)"')
FILE_REF = re.compile(r"(?<![\w/.-])((?:docs/|hardware/|protos/)?[\w-]+\.md)\b")


# Sections cited by work that is still landing, with who writes them. Listed,
# not skipped: once a section exists its entry must go (the test says so).
PENDING: dict[tuple[str, str], str] = {}


def _flat(text: str) -> str:
    """Comment and docstring lines joined, so a reference wrapped over two lines reads as one."""
    return re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)


def _headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")]


def _resolve(name: str, source: Path) -> Path | None:
    for base in (ROOT, source.parent):
        if (base / name).is_file():
            return base / name
    return None


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_docs_and_sections_exist(source: Path) -> None:
    text = _flat(source.read_text())
    wrong = []
    for name in set(FILE_REF.findall(text)):
        if _resolve(name, source) is None:
            wrong.append(f"cites {name}, which is not in the repository")
    for name, section in SECTION_REF.findall(text):
        doc = _resolve(name, source)
        if doc is None:
            continue  # reported above
        found = any(h == section or h.startswith(section + " ") or h.startswith(section + ":")
                    for h in _headings(doc))
        if (name, section) in PENDING:
            if found:
                wrong.append(f'{name}, "{section}" exists now: remove it from PENDING in tests/test_docs.py')
        elif not found:
            wrong.append(f'cites {name}, "{section}": no such heading there')
    assert not wrong, f"{source.relative_to(ROOT)}: " + "; ".join(wrong)


def test_the_check_finds_a_missing_section(tmp_path: Path) -> None:
    assert SECTION_REF.findall(_flat('# see (docs/firmware.md, "Connection\n# numbers").')) == \
        [("docs/firmware.md", "Connection numbers")]
    assert FILE_REF.findall("the journal (ARCHITECTURE.md, ...)") == ["ARCHITECTURE.md"]
    assert _resolve("ARCHITECTURE.md", ROOT / "gateway" / "hub.py") is None


def test_refusal_kinds_named_in_the_code_are_the_kinds_it_counts() -> None:
    """refusals.py names the gateway's own kinds; each must be one the code refuses with."""
    doc = (ROOT / "gateway" / "refusals.py").read_text().split('"""')[1]
    counted = set(re.findall(r'refuse\(\s*"(\w+)"', "".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))))
    named = set(re.findall(r"\b([a-z]+_[a-z_]+)\b", doc))
    assert named and named <= counted, f"named in refusals.py but never counted: {named - counted}"


def test_simulator_docs_do_not_promise_that_a_seed_replays_boot_ids() -> None:
    """Decision D6: a seed replays sensor values, never boot ids (those come from
    os.urandom so two runs are two boots to the gateway).
    tests/firmware/test_device_books.py checks the code side."""
    for path in (ROOT / "docs" / "simulator.md", ROOT / "sim" / "fleet.py", ROOT / "sim" / "cli.py"):
        text = _flat(path.read_text()).lower()
        for m in re.finditer(r"seed[^.|]*?(replays?|same)[^.|]*", text):
            assert "boot id" not in m.group(0) or re.search(r"\bnot\b|never|fresh|new every", m.group(0)), \
                f"{path.relative_to(ROOT)}: {m.group(0)!r}"
