"""Print pyproject.toml's runtime dependencies pinned at their floors (`>=X` becomes `==X`), one a
line, for the CI step that runs the unit and in-memory layers on the lowest allowed versions."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*>=\s*([0-9][^,;\s]*)(?:,.*)?", requirement.strip())
    if match is None:
        sys.exit(f"no floor (>=) in dependency {requirement!r}")
    print(f"{match[1]}=={match[2]}")
