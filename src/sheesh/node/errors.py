"""Errors of the node package."""

from sheesh.errors import SheeshError


class NodeError(SheeshError):
    """Root of node agent failures."""
