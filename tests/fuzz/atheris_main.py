"""Coverage-guided runs of the fuzz targets with atheris (libFuzzer), for long runs by hand.

    pip install atheris   # a manylinux wheel for CPython 3.11 on x86-64; not needed by the test suite
    PYTHONPATH=. python tests/fuzz/atheris_main.py TARGET [libFuzzer options] [CORPUS_DIR ...]

TARGET is one of: authorized_keys, certificates, config, transport, terminal, command_line. Each
runs the same check as the Hypothesis target of that name (same properties, same time bound),
seeded from tests/fuzz/corpus/TARGET/ (read only: new inputs go to a scratch directory unless
CORPUS_DIRs are given). An input that fails is written by libFuzzer as crash-*; save it under
tests/fuzz/corpus/TARGET/ with a name that says what it is, as a regression.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

with atheris.instrument_imports(include=["conchcmd"]):
    from support.sshclient import ClientTransport
    from support.terminal import Term
    from support.world import make_world

    import fuzz.conftest  # noqa: F401  (registers the Hypothesis profile the target modules use)
    from fuzz import test_fuzz_config, test_fuzz_keyfiles, test_fuzz_shell, test_fuzz_transport
    from fuzz.guard import CORPUS, LogWatch


def targets() -> dict[str, Callable[[bytes], None]]:
    watch = LogWatch(ignore_sources=(ClientTransport,))
    watch.start()
    scratch = Path(tempfile.mkdtemp(prefix="conchcmd-atheris-"))
    trusted = test_fuzz_keyfiles.TrustedCAs(str(scratch / "ca.pub"))
    (scratch / "ca.pub").write_text(test_fuzz_keyfiles.CA_LINE + "\n")
    shell_base = scratch / "shell"
    shell_base.mkdir()
    Term(shell_base)
    worlds: list = []

    def world() -> object:
        if not worlds:
            worlds.append(make_world(scratch / "world"))
        return worlds[0]

    def transport(data: bytes) -> None:
        size = data[0] + 1 if data else 1
        test_fuzz_transport.run(world(), watch, test_fuzz_transport.VERSION + data[1:], [size])  # type: ignore[arg-type]

    return {
        "authorized_keys": lambda data: test_fuzz_keyfiles.check_authorized_keys(data.decode("utf-8", "replace")),
        "certificates": lambda data: test_fuzz_keyfiles.check_certificate(data, trusted) and None,
        "config": lambda data: test_fuzz_config.check_config(data.decode("utf-8", "replace")),
        "transport": transport,
        "terminal": lambda data: test_fuzz_shell.check_terminal(shell_base, watch, data, []),
        "command_line": lambda data: test_fuzz_shell.check_exec(shell_base, watch, data.decode("utf-8", "replace")),
    }


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets():
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(targets())}}} [libFuzzer options] [CORPUS_DIR ...]")
    name, rest = sys.argv[1], sys.argv[2:]
    if not any(not a.startswith("-") for a in rest):
        # libFuzzer adds what it finds to the first directory: a scratch one, never the saved corpus.
        seeds = CORPUS / ("kexinit" if name == "transport" else name)
        rest += [tempfile.mkdtemp(prefix=f"conchcmd-atheris-{name}-"), str(seeds)]
    atheris.Setup([sys.argv[0], *rest], targets()[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
