"""Authentication: users and roles, argon2 passwords, API keys (hashed at rest), principals, rate limits."""
