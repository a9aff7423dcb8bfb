import dataclasses
from pathlib import Path

from sheesh.guest.protocol import PORT_NAME
from sheesh.vmm.driver import MachineSpec, RestoreSource
from sheesh.vmm.process import ManagedProcess
from sheesh.vmm.qemu.cmdline import CDROM_ID, HostFacts, build_argv, overlay_argv, tcg_tb_mb
from sheesh.vmm.qemu.driver import QemuDriver

SPEC = MachineSpec("vm-1", 2, 256, Path("/img/vmlinux"), Path("/img/initrd.cpio"), Path("/w/disk.qcow2"), Path("/w"))


def _arg(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_microvm_tcg_command_line() -> None:
    argv = build_argv(SPEC, HostFacts("/usr/bin/qemu-system-x86_64", "tcg", 2_500_000), Path("/shm/vm-1.ram"))
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert _arg(argv, "-M")[0].startswith("microvm,")
    assert _arg(argv, "-accel") == ["tcg,tb-size=128"]  # half of the VM's 256 MiB
    assert _arg(argv, "-smp") == ["2"] and _arg(argv, "-m") == ["256M"]
    append = _arg(argv, "-append")[0]
    assert "tsc_early_khz=2500000" in append and "root=/dev/vda" in append
    assert f"virtserialport,chardev=agent,name={PORT_NAME}" in _arg(argv, "-device")
    assert any("path=/w/agent.sock" in c for c in _arg(argv, "-chardev"))
    assert any("logfile=/w/serial.log" in c for c in _arg(argv, "-chardev"))
    assert _arg(argv, "-qmp") == ["unix:/w/qmp.sock,server=on,wait=off"]
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_tcg_translation_cache_follows_the_vm_size_unless_set() -> None:
    assert [tcg_tb_mb(m) for m in (64, 256, 512, 1024, 8192)] == [64, 128, 256, 512, 512]
    argv = build_argv(SPEC, HostFacts("qemu", "tcg", 1, tcg_tb_mb=48), Path("/shm/vm-1.ram"))
    assert _arg(argv, "-accel") == ["tcg,tb-size=48"]


def test_tcg_guests_do_not_randomize_address_spaces_unless_asked() -> None:
    def append(host: HostFacts) -> list[str]:
        return _arg(build_argv(SPEC, host, Path("/shm/vm-1.ram")), "-append")[0].split()

    assert "norandmaps" in append(HostFacts("qemu", "tcg", 1))
    assert "norandmaps" not in append(HostFacts("qemu", "tcg", 1, tcg_guest_aslr=True))
    assert "norandmaps" not in append(HostFacts("qemu", "kvm", 1))
    full = MachineSpec(**{**SPEC.__dict__, "full": True})
    assert "norandmaps" not in _arg(build_argv(full, HostFacts("qemu", "tcg", 1), Path("/r")), "-append")[0]


def test_guests_keep_no_timers_an_idle_microvm_does_not_need() -> None:
    """No clocksource watchdog (the TSC is the only clock: reliable) and no lockup detector: each woke an idle
    guest several times a second (idle CPU per VM 0.53 -> 0.30 % of a core under TCG, with rc.sysinit's
    vm settings)."""
    for spec in (SPEC, MachineSpec(**{**SPEC.__dict__, "full": True})):
        append = _arg(build_argv(spec, HostFacts("qemu", "tcg", 1), Path("/r")), "-append")[0].split()
        assert {"tsc=reliable", "nowatchdog"} <= set(append), append


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


def test_full_machine_boots_the_sheesh_kernel_with_display_and_empty_cdrom() -> None:
    spec = dataclasses.replace(SPEC, full=True)
    argv = build_argv(spec, HostFacts("qemu", "tcg", 1), Path("/shm/vm-1.ram"))
    assert _arg(argv, "-M") == ["q35,memory-backend=ram"]
    assert "-no-reboot" not in argv, "a full VM reboots in place"
    append = _arg(argv, "-append")[0]
    assert "sheesh.full=1" in append and append.index("console=tty0") < append.index("console=ttyS0")
    devices = _arg(argv, "-device")
    assert "virtio-blk-pci,drive=root" in devices and f"ide-cd,drive=cd0,id={CDROM_ID},bus=ide.1" in devices
    assert f"virtserialport,chardev=agent,name={PORT_NAME}" in devices and "virtio-serial-pci" in devices
    assert _arg(argv, "-drive")[1] == "if=none,id=cd0,media=cdrom,readonly=on"
    assert _arg(argv, "-vga") == ["std"] and _arg(argv, "-vnc") == ["unix:/w/vnc.sock,password=on"]


def test_full_machine_firmware_boot_prefers_the_cdrom_and_attaches_the_seed() -> None:
    spec = dataclasses.replace(
        SPEC, full=True, firmware_boot=True, cdrom=Path("/w/cdrom.iso"), seed=Path("/w/seed.iso")
    )
    argv = build_argv(spec, HostFacts("qemu", "tcg", 1), Path("/shm/vm-1.ram"))
    assert "-kernel" not in argv and "-append" not in argv
    devices = _arg(argv, "-device")
    assert f"ide-cd,drive=cd0,id={CDROM_ID},bus=ide.1,bootindex=0" in devices
    assert "virtio-blk-pci,drive=root,bootindex=1" in devices
    assert "ide-cd,drive=seed0,bus=ide.2" in devices
    assert not any("virtserialport" in d for d in devices), "no agent outside the sheesh kernel"
    drives = _arg(argv, "-drive")
    assert "if=none,id=cd0,media=cdrom,readonly=on,file=/w/cdrom.iso,format=raw" in drives
    assert "if=none,id=seed0,media=cdrom,readonly=on,file=/w/seed.iso,format=raw" in drives


async def test_driver_frees_the_ram_of_vms_whose_process_is_gone(tmp_path: Path) -> None:
    """A VM's RAM file lives while its process does: a process found dead, a VM that cannot be re-attached
    and files no live VM owns (pruned at start-up) are deleted; a running VM's file is kept."""
    ram = tmp_path / "ram"
    ram.mkdir()
    driver = QemuDriver(tmp_path / "state", accel="tcg", ram_dir=ram)
    for vm_id in ("vm-live", "vm-dies", "vm-gone", "vm-orphan", "vm-kept"):
        driver.ram_file(vm_id).write_bytes(b"guest memory")
    wd = tmp_path / "vms"
    wd.mkdir()
    live = ManagedProcess.spawn(["sh", "-c", "exec sleep 30", "vm-live"], "vm-live", wd / "o", wd / "e")
    dies = ManagedProcess.spawn(["sh", "-c", "exit 0", "vm-dies"], "vm-dies", wd / "o", wd / "e")
    driver._table.add("vm-live", live, wd)
    driver._table.add("vm-dies", dies, wd)
    try:
        assert await dies.wait(5)
        assert driver.is_running("vm-live") and not driver.is_running("vm-dies")
        assert not driver.ram_file("vm-dies").exists() and driver.ram_file("vm-live").exists()
        assert await driver.attach("vm-gone", wd) is False  # no pid file: it died while nobody watched
        assert not driver.ram_file("vm-gone").exists()
        assert driver.prune({"vm-kept"}) == ["vm-orphan"]
        assert sorted(f.name for f in ram.iterdir()) == ["vm-kept.ram", "vm-live.ram"]
    finally:
        await driver.kill("vm-live")
    assert not driver.ram_file("vm-live").exists()
