"""Image registry: registers the built-in image and resolves image ids to files."""

from __future__ import annotations

from datetime import UTC, datetime

from sheesh.errors import NotFoundError, UnavailableError
from sheesh.image.builder import BuiltImage
from sheesh.models import Image
from sheesh.store.repo import Store, StoredImage


def builtin_image_id(built: BuiltImage) -> str:
    return f"img-{built.recipe_hash[:12]}"


def register_builtin(store: Store, built: BuiltImage) -> Image:
    """Record the built-in image; it becomes the default when there is none or the old one was built-in."""
    image_id = builtin_image_id(built)
    current = store.get_image(image_id)
    if current is None:
        image = Image(
            image_id,
            "debian-bookworm",
            f"Debian bookworm, kernel {built.kernel_version}, python3, guest agent (built-in)",
            built.rootfs_size_mb,
            False,
            datetime.now(UTC),
        )
        store.add_image(image, built.path)
    defaults = [s for s in store.list_images() if s.image.is_default]
    if not defaults or defaults[0].image.name == "debian-bookworm":
        store.set_default_image(image_id)
    stored = store.get_image(image_id)
    assert stored is not None
    return stored.image


def resolve_image(store: Store, image_id: str | None) -> StoredImage:
    """The image to boot: ``image_id`` or the default. NotFoundError if unknown."""
    if image_id is not None:
        stored = store.get_image(image_id)
        if stored is None:
            raise NotFoundError(f"image {image_id} not found")
        return stored
    for stored in store.list_images():
        if stored.image.is_default:
            return stored
    raise UnavailableError("no default image is registered (run `sheesh image build`)")
