"""QEMU command lines for sheesh microVMs (pure functions, unit-tested)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sheesh.guest.protocol import PORT_NAME
from sheesh.vmm.driver import AGENT_SOCKET, SERIAL_LOG, SERIAL_SOCKET, MachineSpec

QMP_SOCKET = "qmp.sock"
PIDFILE = "qemu.pid"
DISK_FILE = "disk.qcow2"


@dataclass(frozen=True)
class HostFacts:
    binary: str
    accel: str  # "kvm" or "tcg"
    tsc_khz: int


def kernel_cmdline(spec: MachineSpec, tsc_khz: int) -> str:
    """Kernel arguments: serial console, root on the virtio disk, no reboot loops, fixed TSC (microvm hangs
    without ``tsc_early_khz``)."""
    args = [
        "console=ttyS0",
        "root=/dev/vda",
        "rw",
        "panic=-1",
        "quiet",
        f"tsc_early_khz={tsc_khz}",
        "8250.nr_uarts=1",
        "random.trust_cpu=on",
        *spec.kernel_args,
    ]
    return " ".join(args)


def _microvm(binary: str, machine_options: str, accel: str) -> list[str]:
    """The flags every sheesh microVM shares: no defaults, no display, exit instead of rebooting."""
    machine = "microvm,x-option-roms=off,isa-serial=on" + (f",{machine_options}" if machine_options else "")
    return [
        binary,
        "-M",
        machine,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-accel",
        accel,
        "-cpu",
        "max",
    ]


def memory_backend(spec: MachineSpec, ram_file: Path) -> tuple[Path, bool]:
    """Guest RAM file and whether it is shared: a snapshot's RAM is mapped privately (copy-on-write, the
    snapshot stays intact); otherwise the VM's own shared file, which snapshots can copy without streaming."""
    if spec.restore is not None and spec.restore.memory is not None:
        return spec.restore.memory, False
    return ram_file, True


def build_argv(spec: MachineSpec, host: HostFacts, ram_file: Path) -> list[str]:
    """The full argv of a microVM: RAM from a file, virtio-blk root overlay, virtio-rng, virtio-serial
    agent port, serial console on a socket with a log file, QMP on a socket, pid file; a restore waits for
    its incoming migration (``-incoming defer``)."""
    wd = spec.workdir
    accel = "kvm" if host.accel == "kvm" else "tcg,tb-size=32"
    mem_path, shared = memory_backend(spec, ram_file)
    incoming = ["-incoming", "defer"] if spec.restore is not None else []
    return [
        *_microvm(host.binary, "rtc=on,memory-backend=ram", accel),
        "-name",
        f"sheesh-{spec.vm_id},process=sheesh-{spec.vm_id}",
        "-object",
        f"memory-backend-file,id=ram,size={spec.mem_mb}M,mem-path={mem_path},share={'on' if shared else 'off'}",
        "-smp",
        str(spec.cpu),
        "-m",
        f"{spec.mem_mb}M",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        kernel_cmdline(spec, host.tsc_khz),
        "-drive",
        f"id=root,file={spec.disk},format=qcow2,if=none,discard=unmap",
        "-device",
        "virtio-blk-device,drive=root",
        "-device",
        "virtio-rng-device",
        "-device",
        "virtio-serial-device",
        "-chardev",
        f"socket,id=agent,path={wd / AGENT_SOCKET},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={PORT_NAME}",
        "-chardev",
        f"socket,id=serial0,path={wd / SERIAL_SOCKET},server=on,wait=off,logfile={wd / SERIAL_LOG},logappend=on",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{wd / QMP_SOCKET},server=on,wait=off",
        "-pidfile",
        str(wd / PIDFILE),
        *incoming,
    ]


def probe_argv(binary: str, kernel: Path, accel: str, tsc_khz: int) -> list[str]:
    """Boot ``kernel`` alone with no init: it panics once it got through early boot (the accel works)."""
    return [
        *_microvm(binary, "", accel),
        "-m",
        "128M",
        "-kernel",
        str(kernel),
        "-append",
        f"console=ttyS0 panic=-1 rdinit=/nonexistent tsc_early_khz={tsc_khz}",
        "-serial",
        "stdio",
    ]


def overlay_argv(qemu_img: str, base: Path, disk: Path, size_mb: int | None, base_format: str = "raw") -> list[str]:
    """qcow2 overlay of ``base``; ``size_mb`` None keeps the backing file's size."""
    size = [f"{size_mb}M"] if size_mb is not None else []
    return [qemu_img, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(disk), *size]


def host_tsc_khz() -> int:
    """The host TSC frequency in kHz (sysfs when exposed, else the nominal ``cpu MHz``)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text())
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 2_000_000
