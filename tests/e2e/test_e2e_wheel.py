"""The wheel (`python -m pip wheel .`) installed into a fresh venv outside the source tree works:
`conchcmd --version`, `conchcmd contrib [NAME]` (the shipped files are in the wheel) and the
twistd plugin. The dependencies come from this test's own environment, without a network: a
.pth line in the new venv puts this environment's site-packages after the venv's own, so the
wheel's conchcmd is the one imported (checked), never the checkout's."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import conchcmd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "conchcmd" / "contrib"


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    # Built with this environment's hatchling (the `test` extra): no download of a build backend.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("conchcmd-*.whl")
    assert wheel.name.startswith(f"conchcmd-{conchcmd.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"conchcmd/contrib/{p.name}" for p in CONTRIB.iterdir()} <= names
    assert "twisted/plugins/conchcmd_plugin.py" in names
    assert not any(n.startswith("conchcmd/_devpath") for n in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env))
    site = Path(str(site).strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        tmp_path,
        env,
    )
    where = run(
        [str(python), "-c", "import conchcmd, twisted; print(conchcmd.__file__); print(twisted.__file__)"],
        tmp_path,
        env,
    ).split()
    assert Path(where[0]).is_relative_to(site), f"the wheel's conchcmd must be imported, not {where[0]}"
    assert not Path(where[1]).is_relative_to(venv), "twisted comes from this environment"

    conchcmd_bin = str(venv / "bin" / "conchcmd")
    assert run([conchcmd_bin, "--version"], tmp_path, env) == f"conchcmd {conchcmd.__version__}\n"
    listing = run([conchcmd_bin, "contrib"], tmp_path, env)
    for path in CONTRIB.iterdir():
        assert f"\n{path.name} " in "\n" + listing
        assert run([conchcmd_bin, "contrib", path.name], tmp_path, env) == path.read_text(encoding="utf-8")

    twistd = [str(python), "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
    help_text = run([*twistd, "--help"], tmp_path, env)
    assert any(line.split()[:1] == ["conchcmd"] for line in help_text.splitlines()), help_text
    # This environment's editable install has a copy of the same plugin file in Twisted's own
    # plugins directory, which comes first; so check that the wheel's directory is searched too
    # and that the service maker the plugin loads is the wheel's.
    found = run(
        [
            str(python),
            "-c",
            "import sys, twisted.plugins; from twisted.plugin import getPlugins; "
            "from twisted.application.service import IServiceMaker; "
            "(maker,) = [p for p in getPlugins(IServiceMaker) if p.tapname == 'conchcmd']; "
            "print(*twisted.plugins.__path__, sep='\\n'); print(sys.modules[type(maker).__module__].__file__)",
        ],
        tmp_path,
        env,
    ).splitlines()
    assert str(site / "twisted" / "plugins") in found[:-1]
    assert (site / "twisted" / "plugins" / "conchcmd_plugin.py").is_file()
    assert Path(found[-1]) == site / "conchcmd" / "edge" / "twistd.py"
