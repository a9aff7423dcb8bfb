from pathlib import Path

from sheesh.guest.protocol import PORT_NAME
from sheesh.vmm.driver import MachineSpec, RestoreSource
from sheesh.vmm.qemu.cmdline import HostFacts, build_argv, overlay_argv

SPEC = MachineSpec("vm-1", 2, 256, Path("/img/vmlinux"), Path("/img/initrd.cpio"), Path("/w/disk.qcow2"), Path("/w"))


def _arg(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_microvm_tcg_command_line() -> None:
    argv = build_argv(SPEC, HostFacts("/usr/bin/qemu-system-x86_64", "tcg", 2_500_000), Path("/shm/vm-1.ram"))
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert _arg(argv, "-M")[0].startswith("microvm,")
    assert _arg(argv, "-accel") == ["tcg,tb-size=32"]
    assert _arg(argv, "-smp") == ["2"] and _arg(argv, "-m") == ["256M"]
    append = _arg(argv, "-append")[0]
    assert "tsc_early_khz=2500000" in append and "root=/dev/vda" in append
    assert f"virtserialport,chardev=agent,name={PORT_NAME}" in _arg(argv, "-device")
    assert any("path=/w/agent.sock" in c for c in _arg(argv, "-chardev"))
    assert any("logfile=/w/serial.log" in c for c in _arg(argv, "-chardev"))
    assert _arg(argv, "-qmp") == ["unix:/w/qmp.sock,server=on,wait=off"]
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_kvm_accel() -> None:
    argv = build_argv(SPEC, HostFacts("qemu", "kvm", 1), Path("/shm/vm-1.ram"))
    assert _arg(argv, "-accel") == ["kvm"]


def test_ram_is_a_shared_file_and_restore_maps_the_snapshot_privately() -> None:
    host = HostFacts("qemu", "tcg", 1)
    argv = build_argv(SPEC, host, Path("/shm/vm-1.ram"))
    assert "memory-backend=ram" in _arg(argv, "-M")[0]
    assert _arg(argv, "-object") == ["memory-backend-file,id=ram,size=256M,mem-path=/shm/vm-1.ram,share=on"]
    assert "-incoming" not in argv
    restored = MachineSpec(**{**SPEC.__dict__, "restore": RestoreSource(Path("/s/state"), Path("/s/memory"))})
    argv = build_argv(restored, host, Path("/shm/vm-1.ram"))
    assert _arg(argv, "-object") == ["memory-backend-file,id=ram,size=256M,mem-path=/s/memory,share=off"]
    assert _arg(argv, "-incoming") == ["defer"]
    streamed = MachineSpec(**{**SPEC.__dict__, "restore": RestoreSource(Path("/s/state"), None)})
    argv = build_argv(streamed, host, Path("/shm/vm-1.ram"))
    assert "mem-path=/shm/vm-1.ram,share=on" in _arg(argv, "-object")[0]
    assert _arg(argv, "-incoming") == ["defer"]


def test_overlay_uses_backing_file() -> None:
    argv = overlay_argv("qemu-img", Path("/b/rootfs.ext4"), Path("/w/disk.qcow2"), 2048)
    assert argv[-3:] == ["/b/rootfs.ext4", "/w/disk.qcow2", "2048M"]
    assert argv[argv.index("-F") + 1] == "raw"
    argv = overlay_argv("qemu-img", Path("/s/disk.qcow2"), Path("/w/disk.qcow2"), None, "qcow2")
    assert argv[-2:] == ["/s/disk.qcow2", "/w/disk.qcow2"] and argv[argv.index("-F") + 1] == "qcow2"
