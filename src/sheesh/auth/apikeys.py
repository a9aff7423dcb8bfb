"""API keys: random secrets shown once, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sheesh.store.repo import Store


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "sk_" + secrets.token_urlsafe(32)


class ApiKeyAuth:
    """Accepts the configured key (``SHEESH_API_KEY``) and any key whose hash is in the store."""

    def __init__(self, store: Store, configured_key: str | None = None) -> None:
        self.store = store
        self._configured_hash = hash_key(configured_key) if configured_key else None

    def verify(self, presented: str | None) -> bool:
        if not presented:
            return False
        digest = hash_key(presented)
        if self._configured_hash is not None and hmac.compare_digest(digest, self._configured_hash):
            return True
        return self.store.api_key_exists(digest)

    def create(self, label: str) -> str:
        """Make a new key, store its hash, return the plaintext (the only time it is available)."""
        key = generate_key()
        self.store.add_api_key(f"key-{secrets.token_hex(6)}", hash_key(key), label)
        return key

    def bootstrap(self) -> str | None:
        """On a first start without a configured key, create one and return it to be printed."""
        if self._configured_hash is None and self.store.count_api_keys() == 0:
            return self.create("initial")
        return None
