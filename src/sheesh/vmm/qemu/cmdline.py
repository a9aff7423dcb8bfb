"""QEMU command lines for sheesh microVMs (pure functions, unit-tested)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sheesh.guest.protocol import PORT_NAME
from sheesh.vmm.driver import AGENT_SOCKET, SERIAL_LOG, SERIAL_SOCKET, VNC_SOCKET, MachineSpec

QMP_SOCKET = "qmp.sock"
CDROM_ID = "cdrom0"
"""QOM id of a full machine's CD-ROM drive (target of ``blockdev-change-medium``)."""
PIDFILE = "qemu.pid"
DISK_FILE = "disk.qcow2"


@dataclass(frozen=True)
class HostFacts:
    binary: str
    accel: str  # "kvm" or "tcg"
    tsc_khz: int
    tcg_tb_mb: int | None = None
    """TCG's translated-code cache per VM (None: ``tcg_tb_mb``). When it fills, QEMU drops all translated code
    and the guest runs several times slower until it is translated again: with 32 MiB that happened every
    few execs (exec ``true`` p90 147 ms against 40 ms with 128 MiB; run-ts 8 s apart 1549 -> 394 ms, 286 ms
    with 256 MiB). QEMU touches it as used, so an idle VM holds little of it."""
    tcg_guest_aslr: bool = False
    """Whether sandbox guests randomize their processes' address spaces under TCG. QEMU finds translated code by
    virtual address, so with randomization every new process translates its libraries again: exec ``true``
    back to back p50 110-128 ms against 33-42 ms without, and the translated-code cache filled every 15
    execs. Under KVM there is nothing to translate, and full (VPS-style) VMs always randomize."""


def kernel_cmdline(spec: MachineSpec, tsc_khz: int, *, aslr: bool = True) -> str:
    """Kernel arguments: serial console, root on the virtio disk, no reboot loops, fixed TSC (microvm hangs
    without ``tsc_early_khz``); ``aslr=False``: processes' address spaces are not randomized
    (``norandmaps``, see ``HostFacts.tcg_guest_aslr``)."""
    # full machines: the VGA console too (the last console= is /dev/console), and the full-VM modules
    machine = ["sheesh.full=1"] if spec.full else ["8250.nr_uarts=1"]
    args = [
        *(["console=tty0"] if spec.full else []),
        "console=ttyS0",
        "root=/dev/vda",
        "rw",
        "panic=-1",
        "quiet",
        f"tsc_early_khz={tsc_khz}",
        *machine,
        "random.trust_cpu=on",
        "tsc=reliable",  # no clocksource watchdog: it woke an idle guest twice a second
        "nowatchdog",  # no lockup detector timers
        *([] if aslr else ["norandmaps"]),
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


TB_MIN_MB = 64
TB_MAX_MB = 512


def tcg_tb_mb(mem_mb: int) -> int:
    """The default translated-code cache: half the VM's memory, 64 to 512 MiB (bigger VMs run bigger
    programs; a 256 MiB sandbox gets 128, a 512 MiB one running Deno 256)."""
    return max(TB_MIN_MB, min(TB_MAX_MB, mem_mb // 2))


def _accel(spec: MachineSpec, host: HostFacts) -> str:
    if host.accel == "kvm":
        return "kvm"
    return f"tcg,tb-size={host.tcg_tb_mb or tcg_tb_mb(spec.mem_mb)}"


def _kernel(spec: MachineSpec, host: HostFacts) -> list[str]:
    aslr = host.accel == "kvm" or host.tcg_guest_aslr or spec.full  # full VMs: a VPS keeps what Linux does
    append = kernel_cmdline(spec, host.tsc_khz, aslr=aslr)
    return ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", append]


def _ram(spec: MachineSpec, mem_path: Path, shared: bool) -> list[str]:
    return [
        "-name",
        f"sheesh-{spec.vm_id},process=sheesh-{spec.vm_id}",
        "-object",
        f"memory-backend-file,id=ram,size={spec.mem_mb}M,mem-path={mem_path},share={'on' if shared else 'off'}",
        "-smp",
        str(spec.cpu),
        "-m",
        f"{spec.mem_mb}M",
    ]


def _consoles(wd: Path) -> list[str]:
    """Serial console on a socket with a log file, QMP on a socket, pid file."""
    return [
        "-chardev",
        f"socket,id=serial0,path={wd / SERIAL_SOCKET},server=on,wait=off,logfile={wd / SERIAL_LOG},logappend=on",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{wd / QMP_SOCKET},server=on,wait=off",
        "-pidfile",
        str(wd / PIDFILE),
    ]


def _agent_port(wd: Path, bus_device: str) -> list[str]:
    return [
        "-device",
        bus_device,
        "-chardev",
        f"socket,id=agent,path={wd / AGENT_SOCKET},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={PORT_NAME}",
    ]


def _nic(spec: MachineSpec, device: str) -> list[str]:
    """The virtio NIC on the node's tap (QEMU opens the existing tap; it never runs scripts)."""
    if spec.tap is None:
        return []
    return [
        "-netdev",
        f"tap,id=net0,ifname={spec.tap},script=no,downscript=no",
        "-device",
        f"{device},netdev=net0" + (f",mac={spec.mac}" if spec.mac else ""),
    ]


def build_argv(spec: MachineSpec, host: HostFacts, ram_file: Path) -> list[str]:
    """The argv of a machine: a microVM, or a full machine when ``spec.full`` (see ``build_full_argv``).

    MicroVM: RAM from a file, virtio-blk root overlay, virtio-rng, virtio-serial agent port, serial console on
    a socket with a log file, QMP on a socket, pid file; a restore waits for its incoming migration
    (``-incoming defer``)."""
    if spec.full:
        return build_full_argv(spec, host, ram_file)
    wd = spec.workdir
    mem_path, shared = memory_backend(spec, ram_file)
    incoming = ["-incoming", "defer"] if spec.restore is not None else []
    return [
        *_microvm(host.binary, "rtc=on,memory-backend=ram", _accel(spec, host)),
        *_ram(spec, mem_path, shared),
        *_kernel(spec, host),
        "-drive",
        f"id=root,file={spec.disk},format=qcow2,if=none,discard=unmap",
        "-device",
        "virtio-blk-device,drive=root",
        "-device",
        "virtio-rng-device",
        *_nic(spec, "virtio-net-device"),
        *_agent_port(wd, "virtio-serial-device"),
        *_consoles(wd),
        *incoming,
    ]


def build_full_argv(spec: MachineSpec, host: HostFacts, ram_file: Path) -> list[str]:
    """A full (VPS-style) machine: q35 with SeaBIOS, standard VGA served on a password-protected VNC Unix
    socket, virtio-blk disk, an IDE CD-ROM (``CDROM_ID``, empty unless ``spec.cdrom``) and, with
    ``spec.seed``, a second CD-ROM holding a cloud-init seed. Reboots stay inside the process.

    ``spec.firmware_boot``: the firmware boots the CD-ROM if it holds a disc, else the disk (an installed
    OS). Otherwise the sheesh kernel boots directly on the disk and the guest agent port is attached."""
    wd = spec.workdir
    mem_path, shared = memory_backend(spec, ram_file)
    cdrom = f",file={spec.cdrom},format=raw" if spec.cdrom is not None else ""
    order = ["0", "1"] if spec.firmware_boot else []
    seed = (
        [
            "-drive",
            f"if=none,id=seed0,media=cdrom,readonly=on,file={spec.seed},format=raw",
            "-device",
            "ide-cd,drive=seed0,bus=ide.2",
        ]
        if spec.seed is not None
        else []
    )
    return [
        host.binary,
        "-M",
        "q35,memory-backend=ram",
        "-nodefaults",
        "-no-user-config",
        "-accel",
        _accel(spec, host),
        "-cpu",
        "max",
        *_ram(spec, mem_path, shared),
        *(_kernel(spec, host) if not spec.firmware_boot else []),
        "-drive",
        f"id=root,file={spec.disk},format=qcow2,if=none,discard=unmap",
        "-device",
        "virtio-blk-pci,drive=root" + (f",bootindex={order[1]}" if order else ""),
        "-drive",
        f"if=none,id=cd0,media=cdrom,readonly=on{cdrom}",
        "-device",
        f"ide-cd,drive=cd0,id={CDROM_ID},bus=ide.1" + (f",bootindex={order[0]}" if order else ""),
        *seed,
        "-device",
        "virtio-rng-pci",
        *_nic(spec, "virtio-net-pci"),
        *(_agent_port(wd, "virtio-serial-pci") if not spec.firmware_boot else []),
        "-vga",
        "std",
        "-display",
        "none",
        "-vnc",
        f"unix:{wd / VNC_SOCKET},password=on",
        *_consoles(wd),
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
