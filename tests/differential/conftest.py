"""Fixtures for the differential layer; the harness itself is support/differential.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.differential import ConchServer, Files, Pair
from support.sshd import Sshd, ipv6_loopback, secure_directory, sshd_available, system_user


@pytest.fixture(scope="session")
def server_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if not sshd_available():
        if os.environ.get("CI") == "true":
            pytest.fail("sshd (openssh-server) and root are needed for the differential tests")
        pytest.skip("needs root and /usr/sbin/sshd (openssh-server)")
    with secure_directory("conchcmd-diff-") as directory, system_user(directory) as user:
        files = Files(directory, user)
        files.authorized_keys.parent.mkdir(mode=0o755)
        files.write([])
        sshd = Sshd(
            tmp_path_factory.mktemp("sshd"),
            authorized_keys=str(directory / "authorized_keys" / "%u"),
            trusted_user_ca_keys=files.trusted,
            revoked_keys=files.revoked,
            ipv6=ipv6_loopback(),
        )
        conch = ConchServer(tmp_path_factory.mktemp("conchcmd"), files, ipv6=sshd.ipv6)
        try:
            sshd.start()
            conch.start()
            yield Pair(sshd, conch, files)
        finally:
            sshd.stop()
            conch.stop()
        text = conch.log_text()
        assert "Traceback" not in text and "Unhandled" not in text, f"conchcmd logged an error:\n{text[-20000:]}"
