"""Errors of the image package."""

from sheesh.errors import InvalidInputError, SheeshError


class ImageBuildError(SheeshError):
    """Building or validating a guest image failed."""


class InvalidImageError(InvalidInputError):
    """An uploaded kernel or rootfs is not usable (HTTP 400)."""
