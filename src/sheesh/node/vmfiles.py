"""A node's files for its VMs: one folder per VM under ``vms_dir`` (disk, spec, marks, ISOs, logs).

The node keeps its copy of each VM's spec (``SPEC_FILE``) so it can restart a VM it re-attached after a
restart; marks record what the VM's machine is (``NIC_MARK``, ``INSTALLED_MARK``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sheesh.errors import NotFoundError
from sheesh.node.contract import NodeVmSpec, from_wire, to_wire
from sheesh.vmm.driver import SERIAL_LOG, STDERR_LOG, STDOUT_LOG

DISK_FILE = "disk.qcow2"
SPEC_FILE = "vm.json"
CDROM_FILE = "cdrom.iso"
"""Full VMs: the ISO in the CD-ROM drive (downloaded or uploaded)."""
SEED_FILE = "seed.iso"
"""Full VMs: the cloud-init NoCloud seed of an installed cloud image."""
NIC_MARK = "nic"
"""Present when the VM's machine has a network device (booted with networking on, or restored from a snapshot
that had one): a restore must recreate exactly the devices of the saved machine."""
INSTALLED_MARK = "installed"
"""Full VMs: present once the disk holds a user's OS (a cloud image or an ISO install); the firmware boots it."""
LOG_FILES = {"serial": SERIAL_LOG, "stdout": STDOUT_LOG, "stderr": STDERR_LOG}


def tail_lines(path: Path, lines: int, block: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a file, reading backwards in blocks (logs can be large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            pos = fh.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except OSError:
        return []
    return [ln.decode(errors="replace") for ln in data.splitlines()[-lines:]] if lines > 0 else []


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """Spec files written before the node contract kept firewall rules and ports as lists."""
    net = raw.get("net")
    if isinstance(net, dict):
        net["firewall"] = [{"src": r[0], "action": r[1]} if isinstance(r, list) else r for r in net.get("firewall", [])]
        net["ports"] = [
            {"guest_port": p[0], "host_port": p[1], "protocol": p[2]} if isinstance(p, list) else p
            for p in net.get("ports", [])
        ]
    return raw


class VmFiles:
    """The VM folders of one node, and the specs the node keeps of its VMs."""

    def __init__(self, vms_dir: Path, node_name: str) -> None:
        self.vms_dir = vms_dir
        self.node_name = node_name
        self._specs: dict[str, NodeVmSpec] = {}

    def workdir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id

    def path(self, vm_id: str, name: str) -> Path:
        """A file of the VM's folder (``DISK_FILE``, ``CDROM_FILE``, ...)."""
        return self.vms_dir / vm_id / name

    def remember(self, spec: NodeVmSpec) -> None:
        self._specs[spec.vm_id] = spec
        self.path(spec.vm_id, SPEC_FILE).write_text(json.dumps(to_wire(spec)))

    def forget(self, vm_id: str) -> None:
        self._specs.pop(vm_id, None)

    def spec_of(self, vm_id: str) -> NodeVmSpec:
        """The spec the VM was last created or started with; NotFoundError if the node does not hold it."""
        spec = self._specs.get(vm_id)
        if spec is not None:
            return spec
        try:
            spec = from_wire(NodeVmSpec, _upgrade(json.loads(self.path(vm_id, SPEC_FILE).read_text())))
        except (OSError, ValueError) as exc:
            raise NotFoundError(f"VM {vm_id} is not on node {self.node_name}") from exc
        self._specs[vm_id] = spec
        return spec

    def has(self, vm_id: str, mark: str) -> bool:
        return self.path(vm_id, mark).exists()

    def mark(self, vm_id: str, mark: str, present: bool = True) -> None:
        path = self.path(vm_id, mark)
        if present:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def local_vms(self) -> list[str]:
        """Ids of every VM folder (records or not)."""
        if not self.vms_dir.is_dir():
            return []
        return sorted(p.name for p in self.vms_dir.iterdir() if p.is_dir())

    def log_tail(self, vm_id: str, kind: str, lines: int) -> list[str]:
        """Last lines of the VM's ``serial`` (console), ``stdout`` or ``stderr`` (VMM process) log."""
        return tail_lines(self.path(vm_id, LOG_FILES[kind]), lines)
