"""Authentication: API keys (hashed at rest)."""
