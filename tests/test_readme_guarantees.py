"""The README's "Guarantees" section names real tests: every ``r_<file>::test_<name>`` it cites exists.

Keeps the guarantee table honest when tests are renamed or removed (issue: reliability, "the README's
Guarantees section lists each guarantee with its test").
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _guarantees_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Guarantees")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_cited_test_exists():
    cited = re.findall(r"`r_(\w+)::(test_\w+)", _guarantees_section())
    assert len(cited) >= 20, "the Guarantees section should cite the reliability tests"
    missing = []
    for module, name in cited:
        path = REPO / "tests" / f"test_reliability_{module}.py"
        if not path.is_file() or name not in _test_functions(path):
            missing.append(f"r_{module}::{name}")
    assert not missing, f"README Guarantees cites tests that do not exist: {missing}"


def test_every_reliability_test_is_cited():
    section = _guarantees_section()
    uncited = []
    for path in sorted((REPO / "tests").glob("test_reliability_*.py")):
        module = path.stem.removeprefix("test_reliability_")
        uncited += [f"r_{module}::{n}" for n in sorted(_test_functions(path)) if f"r_{module}::{n}" not in section]
    assert not uncited, f"reliability tests missing from the README's Guarantees section: {uncited}"
