"""Errors of the node package."""

from sheesh.errors import SheeshError


class NodeError(SheeshError):
    """Root of node agent failures."""


class MediaError(NodeError):
    """A media operation (ISO, cloud image) failed for a reason the user can act on (sent as ``!ERR``)."""
