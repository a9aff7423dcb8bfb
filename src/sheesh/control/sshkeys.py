"""SSH keys of rerobots instances: a fresh Ed25519 pair when the user sends no public key, and a check of the
public keys users send (one OpenSSH ``authorized_keys`` line, no options)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sheesh.errors import InvalidInputError

MAX_PUBLIC_KEY_CHARS = 16 * 1024


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    """``-----BEGIN OPENSSH PRIVATE KEY-----`` ..., unencrypted: what ``ssh -i`` reads."""
    public: str
    """One ``authorized_keys`` line."""


def generate_key_pair(comment: str) -> KeyPair:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private, f"{public.decode()} {comment}")


def check_public_key(text: object) -> str:
    """``text`` as one normalised public-key line (type, base64, optional comment); else InvalidInputError."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("sshkey must be an OpenSSH public key (e.g. ssh-ed25519 AAAA... comment)")
    line = text.strip()
    if len(line) > MAX_PUBLIC_KEY_CHARS or "\n" in line or "\r" in line or "\0" in line:
        raise InvalidInputError("sshkey must be one line of at most 16 KiB")
    kind, _, rest = line.partition(" ")
    blob, _, comment = rest.strip().partition(" ")
    try:
        serialization.load_ssh_public_key(f"{kind} {blob}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInputError("sshkey is not a valid OpenSSH public key") from None
    return f"{kind} {blob} {comment.strip()}".strip()
