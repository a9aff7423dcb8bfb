"""Errors of the image package."""

from sheesh.errors import SheeshError


class ImageBuildError(SheeshError):
    """Building or validating a guest image failed."""
