"""Harnesses live in tests/support/ (and fuzz/'s own helper modules): no test file imports a test
module or a conftest.py, so that moving or deleting a test never breaks another, and a conftest.py
holds fixtures only."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
#: The coverage-guided runner drives the fuzz targets themselves: importing them is its job.
DRIVERS = {TESTS / "fuzz" / "atheris_main.py"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file; relative imports keep their leading dots."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name.startswith("test_")]
    return found


def is_test_or_conftest(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest" or module.endswith("_harness")


def test_no_file_under_tests_imports_a_test_module_or_a_conftest() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{line}: {module}"
        for path in sorted(TESTS.rglob("*.py"))
        if path not in DRIVERS
        for line, module in imported_modules(path)
        if is_test_or_conftest(module)
    ]
    assert not offenders, "move what these import to tests/support/:\n" + "\n".join(offenders)


def test_the_check_sees_each_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom .conftest import World\nfrom protocol.test_x import Term\n"
        "import reliability_harness\nfrom support.world import World\nfrom fuzz import guard, test_y\n"
    )
    flagged = [m for _, m in imported_modules(sample) if is_test_or_conftest(m)]
    assert flagged == [".conftest", "protocol.test_x", "reliability_harness", "fuzz.test_y"]
