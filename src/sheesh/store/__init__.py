"""Persistence: SQLAlchemy tables, alembic migrations, the ``Store`` protocol and its implementations."""
