"""The guest's SSH server preparation (host keys, authorized keys) on a host folder standing for ``/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sheesh.guest.sshd import AUTHORIZED_KEYS, HOST_KEY, SshError, SshServer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBMa5USXyCPGjrxb9Gmg7etU5TxEynHQAYfgJi0XfDvY me@laptop"


def test_keys_are_made_once_and_again_on_regenerate(tmp_path: Path) -> None:
    ssh = SshServer(str(tmp_path), run_daemon=False)
    ssh.start(regenerate=False)
    first = ssh.authorize([KEY])["hostkeys"]
    assert len(first) == 1 and first[0].startswith("ssh-ed25519 ") and first[0].endswith(" root@sheesh")
    assert (tmp_path / AUTHORIZED_KEYS).read_text() == KEY + "\n"
    assert (tmp_path / AUTHORIZED_KEYS).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root/.ssh").stat().st_mode & 0o777 == 0o700
    ssh.start(regenerate=False)
    assert ssh.authorize([])["hostkeys"] == first, "an existing key is kept"
    assert (tmp_path / AUTHORIZED_KEYS).read_text() == ""


def test_authorize_waits_for_the_newest_preparation(tmp_path: Path) -> None:
    """A restore asks for new keys several times in a row: the keys reported are the ones on disk at the end."""
    ssh = SshServer(str(tmp_path), run_daemon=False)
    ssh.start(regenerate=False)
    before = ssh.authorize([KEY])["hostkeys"]
    for _ in range(4):
        ssh.start(regenerate=True)
    after = ssh.authorize([KEY])["hostkeys"]
    assert after != before
    assert (tmp_path / (HOST_KEY + ".pub")).read_text().strip() == after[0]


@pytest.mark.parametrize("keys", ["ssh-ed25519 AAAA", ["a\nb"], ["x\0"], [1], ["k"] * 65])
def test_malformed_keys_are_refused(tmp_path: Path, keys: object) -> None:
    ssh = SshServer(str(tmp_path), run_daemon=False)
    ssh.start(regenerate=False)
    with pytest.raises(SshError):
        ssh.authorize(keys)
    assert not (tmp_path / AUTHORIZED_KEYS).exists()
