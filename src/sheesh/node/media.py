"""Install media into full VMs: ISOs in the CD-ROM drive (downloaded or uploaded) and cloud-init images
as the VM's disk with a NoCloud seed. Used by the node's ``/downloadIso``, ``/uploadIso`` and
``/cloudInit`` WebSocket endpoints; one media operation per VM at a time.

Files live in the VM's folder (``CDROM_FILE``, ``SEED_FILE``, ``DISK_FILE``, ``INSTALLED_MARK``); the next
boot of the VM picks them up (see ``NodeAgent.machine_spec``); an ISO is also inserted live into a running VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

import pycdlib

from sheesh.models import VmKind
from sheesh.node.agent import NodeAgent
from sheesh.node.contract import NodeVmSpec
from sheesh.node.errors import MediaError, NodeError
from sheesh.node.fetch import Network, check_url, fetch, room_for
from sheesh.node.plumbing import GuestNet
from sheesh.node.vmfiles import CDROM_FILE, DISK_FILE, INSTALLED_MARK, SEED_FILE

MIB = 1024 * 1024
ISO_MAGIC_OFFSET = 0x8001
"""ISO 9660: the primary volume descriptor at sector 16 begins with type byte 1 and ``CD001``."""
MAX_UPLOAD_CHUNK = MIB


class MediaBusyError(MediaError):
    """Another media operation on the same VM is in progress."""


class Reporter(Protocol):
    """Where a media operation reports to (the WebSocket: ``<n><message>`` and ``!PR<n>``)."""

    async def stage(self, number: int, message: str) -> None: ...

    async def progress(self, percent: int) -> None: ...


def is_iso9660(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(ISO_MAGIC_OFFSET)
            return fh.read(5) == b"CD001"
    except OSError:
        return False


def cloud_config(vm_id: str, password: str | None, ssh_key: str | None) -> str:
    """NoCloud ``user-data``: the hostname, and the default user's password and SSH key when given (JSON is
    valid YAML, so no YAML writer is needed)."""
    config: dict[str, object] = {"hostname": vm_id, "preserve_hostname": False}
    if password:
        config.update(password=password, chpasswd={"expire": False}, ssh_pwauth=True)
    if ssh_key:
        config["ssh_authorized_keys"] = [ssh_key]
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def network_config(net: GuestNet) -> str:
    """NoCloud ``network-config`` (version 2): the VM's static address on the NIC with its MAC (there is no
    DHCP on the sheesh bridge)."""
    nic: dict[str, object] = {
        "match": {"macaddress": net.mac},
        "set-name": "eth0",
        "addresses": [f"{net.ip}/{net.prefix}"],
        "routes": [{"to": "0.0.0.0/0", "via": net.gateway}],
    }
    if net.dns:
        nic["nameservers"] = {"addresses": list(net.dns)}
    return json.dumps({"version": 2, "ethernets": {"eth0": nic}}, indent=2) + "\n"


def write_seed(path: Path, vm_id: str, password: str | None, ssh_key: str | None, net: GuestNet | None = None) -> None:
    """A NoCloud seed ISO (volume label ``cidata``) with ``meta-data`` (a fresh instance id, so cloud-init
    runs again after each install), ``user-data`` and, when the VM has a NIC, ``network-config``."""
    files = {
        "meta-data": f"instance-id: {vm_id}-{secrets.token_hex(4)}\nlocal-hostname: {vm_id}\n".encode(),
        "user-data": cloud_config(vm_id, password, ssh_key).encode(),
    }
    if net is not None:
        files["network-config"] = network_config(net).encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, data in files.items():
        short = name.replace("-", "").upper()[:8]  # ISO 9660 level-1 names; Rock Ridge/Joliet carry the real ones
        iso.add_fp(io.BytesIO(data), len(data), f"/{short}.;1", rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()


class MediaService:
    """Media operations on the full VMs of one node. ``max_bytes`` caps ISOs and downloaded images;
    ``max_disk_mb`` caps an image's virtual disk size; URLs whose host is in ``blocked`` are refused."""

    def __init__(
        self,
        node: NodeAgent,
        max_bytes: int = 10 * 1024**3,
        max_disk_mb: int = 64 * 1024,
        blocked: Sequence[Network] = (),
    ) -> None:
        self.node = node
        self.max_bytes = max_bytes
        self.max_disk_mb = max_disk_mb
        self.blocked = tuple(blocked)
        self._busy: set[str] = set()

    def full_vm(self, vm_id: str) -> NodeVmSpec:
        """The spec of ``vm_id`` if it is a full VM on this node; else MediaError."""
        spec = self.node.spec_of(vm_id)
        if spec.kind != VmKind.FULL:
            raise MediaError(f'VM {vm_id} is a sandbox VM; CD-ROMs and cloud images need a VM of kind "full"')
        return spec

    @contextlib.asynccontextmanager
    async def operation(self, vm_id: str) -> AsyncIterator[NodeVmSpec]:
        """Exclusive media access to the full VM ``vm_id``; MediaBusyError if another operation holds it."""
        spec = self.full_vm(vm_id)
        if vm_id in self._busy:
            raise MediaBusyError(f"another ISO or cloud-init operation on VM {vm_id} is in progress")
        self._busy.add(vm_id)
        try:
            yield spec
        finally:
            self._busy.discard(vm_id)

    def _path(self, vm_id: str, name: str) -> Path:
        return self.node.files.path(vm_id, name)

    async def download_iso(self, vm_id: str, url: str | None, report: Reporter) -> None:
        """Stages: 1 download (with ``!PR``), 2 check, 3 mount."""
        url = check_url(url)
        async with self.operation(vm_id):
            staged = self._path(vm_id, CDROM_FILE + ".new")
            try:
                await report.stage(1, "Downloading ISO")
                await fetch(url, staged, self.max_bytes, report.progress, blocked=self.blocked)
                await report.stage(2, "Checking ISO")
                await report.stage(3, "Mounting ISO")
                await self._mount(vm_id, staged)
            finally:
                staged.unlink(missing_ok=True)

    def upload_path(self, vm_id: str) -> Path:
        return self._path(vm_id, CDROM_FILE + ".upload")

    def check_space(self, vm_id: str, more: int) -> None:
        """MediaError unless ``more`` bytes fit on the node's disk with the safety margin."""
        if not room_for(self.node.workdir(vm_id), more):
            raise MediaError("not enough disk space on the node")

    async def mount_upload(self, vm_id: str) -> None:
        """Check the completed upload and put it into the drive (call inside ``operation``)."""
        await self._mount(vm_id, self.upload_path(vm_id))

    async def _mount(self, vm_id: str, staged: Path) -> None:
        if not await asyncio.to_thread(is_iso9660, staged):
            raise MediaError("the file is not an ISO 9660 image (no CD001 volume descriptor)")
        cdrom = self._path(vm_id, CDROM_FILE)
        os.replace(staged, cdrom)
        await self.node.change_cdrom(vm_id, cdrom)

    async def cloud_init(
        self, vm_id: str, url: str | None, password: str | None, ssh_key: str | None, report: Reporter
    ) -> None:
        """Stages: 1 download (``!PR``), 2 check, 3 convert (``!PR``), 4 seed, 5 install (a running VM is
        restarted into the image). The VM's disk is replaced only once everything before worked."""
        url = check_url(url)
        async with self.operation(vm_id) as spec:
            download = self._path(vm_id, "cloud-image.download")
            new_disk = self._path(vm_id, DISK_FILE + ".new")
            new_seed = self._path(vm_id, SEED_FILE + ".new")
            try:
                await report.stage(1, "Downloading image")
                await fetch(url, download, self.max_bytes, report.progress, blocked=self.blocked)
                await report.stage(2, "Checking image")
                fmt = await self._check_image(download, spec.disk_size_mb)
                await report.stage(3, f"Converting {fmt} image")
                try:
                    await self.node.convert_disk(download, fmt, new_disk, spec.disk_size_mb, report.progress)
                except NodeError as exc:
                    raise MediaError(exc.message) from exc
                download.unlink()
                await report.stage(4, "Writing cloud-init seed")
                net = self.node.guest_net(spec)
                await asyncio.to_thread(write_seed, new_seed, vm_id, password, ssh_key, net)
                running = self.node.runs(vm_id)
                await report.stage(5, "Installing image, restarting the VM" if running else "Installing image")

                def swap() -> None:
                    os.replace(new_disk, self._path(vm_id, DISK_FILE))
                    os.replace(new_seed, self._path(vm_id, SEED_FILE))
                    self._path(vm_id, CDROM_FILE).unlink(missing_ok=True)
                    self._path(vm_id, INSTALLED_MARK).touch()

                await self.node.replace_machine(vm_id, swap)
            finally:
                for leftover in (download, new_disk, new_seed):
                    leftover.unlink(missing_ok=True)

    async def _check_image(self, path: Path, disk_mb: int) -> str:
        """The image's format, if it is a standalone image that fits the VM's disk."""
        try:
            info = await self.node.inspect_disk(path)
        except NodeError as exc:
            raise MediaError(exc.message) from exc
        if info.backing_file:
            raise MediaError("images with a backing file are not accepted")
        if info.virtual_size > min(disk_mb, self.max_disk_mb) * MIB:
            raise MediaError(
                f"the image's disk is {-(-info.virtual_size // MIB)} MiB; the VM's disk is {disk_mb} MiB "
                "(create the VM with a larger diskSizeMb)"
            )
        return info.format
