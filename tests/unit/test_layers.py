"""The package's layers (README, "Architecture"): every module sits in one layer, and imports only go
down. Read from the source's own import statements (function-level and TYPE_CHECKING ones too), so a
lazy import cannot hide an arrow that runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import conchcmd

PACKAGE = Path(conchcmd.__file__).parent
PLUGIN = PACKAGE / "_devpath" / "twisted" / "plugins" / "conchcmd_plugin.py"

#: From the ground up. Layers on one floor are independent: none imports another of its floor.
FLOORS: list[tuple[str, ...]] = [
    ("conchcmd",),  # the package itself: only __version__
    ("core",),
    ("keys",),
    ("wire", "policy", "commands"),
    ("session",),
    ("server",),
    ("app",),
    ("edge",),
    ("__main__", "plugin"),
]
FLOOR = {layer: n for n, layers in enumerate(FLOORS) for layer in layers}


def layer_of(module: str) -> str | None:
    """The layer of a conchcmd name ("conchcmd.core.config" -> "core"); a name of the package itself
    (`__version__`) is layer "conchcmd"; None outside conchcmd."""
    parts = module.split(".")
    if parts[0] != "conchcmd":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FLOOR else "conchcmd"


def module_name(path: Path) -> str:
    """The dotted name of a source file of the package; the twistd plugin is layer "plugin"."""
    if path == PLUGIN:
        return "conchcmd.plugin"
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every conchcmd module `source` imports, with its line (relative imports resolved)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from conchcmd.commands import lastlog` imports conchcmd.commands.lastlog.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if layer_of(name) is not None]


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What in one module breaks the layering: an import of a higher floor, or of another layer of
    its own floor; and a module in no layer at all."""
    own = module.split(".")[1] if "." in module else "conchcmd"
    if own not in FLOOR:
        return [f"{module}: in no layer (place it in a folder of FLOORS and the README's Architecture)"]
    problems = []
    for line, name in imported(source, module, is_package):
        target = layer_of(name)
        if target != own and FLOOR[target] >= FLOOR[own]:
            problems.append(f"{module}:{line} imports {name}: layer {own} may not import layer {target}")
    return problems


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p == PLUGIN or "_devpath" not in p.parts)


def test_every_import_goes_down() -> None:
    problems = []
    for path in sources():
        problems += violations(module_name(path), path.read_text(), path.name == "__init__.py")
    assert problems == []


def test_every_layer_is_a_folder_with_modules() -> None:
    """The floors name what is there: no layer without a module, no folder missing from the floors."""
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == {layer for layer in FLOOR if (PACKAGE / layer).is_dir()}
    assert all(list((PACKAGE / folder).glob("[!_]*.py")) for folder in folders)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("conchcmd.core.config", "from conchcmd.policy.authorized_keys import valid_user_name\n"),
        ("conchcmd.core.audit", "def f():\n    from conchcmd.edge import cli\n"),  # lazy, one floor over the other
        ("conchcmd.wire.framing", "import conchcmd.server.transport\n"),
        ("conchcmd.policy.auth", "from conchcmd.commands.framework import BlockingRunner\n"),  # a sibling
        ("conchcmd.session.channel", "from ..server import factory\n"),  # relative
        ("conchcmd.server.factory", "from conchcmd import app\n"),
        ("conchcmd.app", "from conchcmd.edge.service import ConchService\n"),
        ("conchcmd.newmodule", ""),  # in no layer
    ],
)
def test_the_check_catches_an_arrow_that_runs_up(module: str, source: str) -> None:
    """The check itself: each of these would break the layering, and is reported."""
    assert violations(module, source) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("conchcmd.edge.cli", "from conchcmd import __version__\nfrom conchcmd.app import build_server\n"),
        ("conchcmd.session.realm", "from conchcmd.policy.auth import Identity\nfrom . import shell\n"),
        ("conchcmd.core.audit", "from conchcmd.core.filetrust import symlink_followable\n"),
    ],
)
def test_the_check_lets_imports_that_go_down_pass(module: str, source: str) -> None:
    assert violations(module, source) == []


def test_the_readme_architecture_names_every_module() -> None:
    """The README's Architecture section is drawn from the code: each module by its path, each layer in
    the picture of the floors."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Architecture\n") :].split("\n## ", 1)[0]
    named = {p.relative_to(PACKAGE).as_posix() for p in sources() if p.name != "__init__.py" and p != PLUGIN}
    named.discard("__main__.py")
    assert sorted(path for path in named if f"`{path}`" not in section) == []
    assert [layer for layer in FLOOR if (PACKAGE / layer).is_dir() and f"  {layer}/" not in section] == []
