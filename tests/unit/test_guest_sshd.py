"""The guest's SSH server preparation (host keys, authorized keys) on a host folder standing for ``/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sheesh.guest.sshd import AUTHORIZED_KEYS, HOST_KEY, SshError, SshServer
from sheesh.node.guests import host_key

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBMa5USXyCPGjrxb9Gmg7etU5TxEynHQAYfgJi0XfDvY me@laptop"


def test_nothing_is_made_before_the_first_authorize_then_the_key_is_kept(tmp_path: Path) -> None:
    ssh = SshServer(str(tmp_path), run_daemon=False)
    ssh.forget()  # a restore of a VM that never used SSH: nothing to do
    assert not (tmp_path / HOST_KEY).exists()
    first = ssh.authorize([KEY])["hostkeys"]
    assert len(first) == 1 and first[0].startswith("ssh-ed25519 ") and first[0].endswith(" root@sheesh")
    assert (tmp_path / AUTHORIZED_KEYS).read_text() == KEY + "\n"
    assert (tmp_path / AUTHORIZED_KEYS).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert ssh.authorize([])["hostkeys"] == first, "an existing key is kept"
    assert (tmp_path / AUTHORIZED_KEYS).read_text() == ""


def test_a_restore_forgets_the_key_and_the_hosts_key_is_taken(tmp_path: Path) -> None:
    ssh = SshServer(str(tmp_path), run_daemon=False)
    before = ssh.authorize([KEY])["hostkeys"]
    ssh.forget()
    private, public = host_key()
    after = ssh.authorize([KEY], private, public)["hostkeys"]
    assert after == [public] and after != before
    assert (tmp_path / HOST_KEY).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (tmp_path / HOST_KEY).stat().st_mode & 0o777 == 0o600
    other, other_pub = host_key()
    assert ssh.authorize([KEY], other, other_pub)["hostkeys"] == [public], "the VM keeps the key it has"


def test_a_key_on_disk_when_the_agent_started_is_forgotten_too(tmp_path: Path) -> None:
    key = tmp_path / HOST_KEY
    key.parent.mkdir(parents=True)
    key.write_text("old private key\n")
    key.with_name(key.name + ".pub").write_text("ssh-ed25519 OLD root@sheesh\n")
    ssh = SshServer(str(tmp_path), run_daemon=False)  # an agent restarted in a VM that used SSH
    ssh.forget()
    assert not key.exists() and not key.with_name(key.name + ".pub").exists()
    made = ssh.authorize([KEY])["hostkeys"]
    ssh.forget()  # and every later restore forgets the key made since
    assert not key.exists()
    assert ssh.authorize([KEY])["hostkeys"] != made


@pytest.mark.parametrize("keys", ["ssh-ed25519 AAAA", ["a\nb"], ["x\0"], [1], ["k"] * 65])
def test_malformed_keys_are_refused(tmp_path: Path, keys: object) -> None:
    ssh = SshServer(str(tmp_path), run_daemon=False)
    with pytest.raises(SshError):
        ssh.authorize(keys)
    assert not (tmp_path / AUTHORIZED_KEYS).exists()
