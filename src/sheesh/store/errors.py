"""Errors of the store package."""

from sheesh.errors import SheeshError


class StoreError(SheeshError):
    """Root of persistence failures."""
