"""Build the built-in guest image: ``vmlinux`` + ``initrd.cpio`` + ``rootfs.ext4`` + ``manifest.json``.

Layout under ``image_dir``::

    cache/base-<hash>/          debootstrap tree (reused while suite/mirror/packages are unchanged)
    cache/kernel-<version>/     extracted Debian kernel package
    builds/<recipe-hash>/       finished image; rebuilt only when the recipe (including agent code) changes

Needs root (debootstrap, chroot) and the host tools debootstrap, mkfs.ext4, depmod, gcc (with libc6-dev).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from sheesh import guest as guest_package
from sheesh.guest.execution import RUNAS
from sheesh.image.built import BuiltImage
from sheesh.image.cpio import CpioWriter
from sheesh.image.errors import ImageBuildError
from sheesh.image.kernel import extract_vmlinux, module_load_order

BUILDER_VERSION = 4
"""Part of the image hash: raise it when a change here changes what the image holds."""
RUNAS_SOURCE = "usr/local/src/sheesh/runas.c"
"""Where the image keeps the source of ``sheesh-runas`` (compiled static by the host's gcc into ``RUNAS``)."""
BASH_DYNAMIC = "/bin/bash.dynamic"
"""Where the image keeps Debian's dynamically linked bash (its /bin/bash is bash-static)."""
Progress = Callable[[str, int, int], None]
"""``progress(message, step, total_steps)``."""

GUEST_MODULES = [
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_rng",
    "virtio_net",
    "crc32c_generic",
    "ext4",
    "evdev",
    "button",
]
FULL_VM_MODULES = ["bochs", "ahci", "sr_mod", "isofs"]
"""Loaded only in full VMs (kernel argument ``sheesh.full=1``): VGA console (bochs DRM), SATA CD-ROM, ISO 9660."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the image bytes; its hash names the build."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = (
        "python3",
        "busybox-static",
        "bash-static",
        "e2fsprogs",
        "procps",
        "ca-certificates",
    )
    toolbox: tuple[str, ...] = (
        "git",
        "curl",
        "iproute2",
        "nodejs",
        "npm",
        "unzip",
        "jq",
        "less",
        "xz-utils",
        "openssh-server",
    )
    """Installed with apt into the base tree: what sandbox users reach for first, and the SSH server of
    rerobots instances (started by the guest agent with per-VM host keys, root login by key only)."""
    kernel_package: str = "linux-image-amd64"
    modules: tuple[str, ...] = tuple(GUEST_MODULES)
    full_vm_modules: tuple[str, ...] = tuple(FULL_VM_MODULES)
    deno_package: str = "@deno/linux-x64-glibc@2.9.6"
    rootfs_size_mb: int = 1024
    uid: int = 1000
    files_digest: str = field(default="")

    def base_hash(self) -> str:
        key = json.dumps([self.suite, self.mirror, sorted(self.packages), sorted(self.toolbox)]).encode()
        return hashlib.sha256(key).hexdigest()[:16]

    def hash(self) -> str:
        payload = json.dumps({**asdict(self), "builder": BUILDER_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


AGENT_LAUNCHER = b"""import sys
sys.path.insert(0, "/opt/sheesh")
from sheesh.guest.agent import main
sys.exit(main())
"""


def guest_files() -> dict[str, bytes]:
    """Files copied into the image: the whole ``sheesh.guest`` package (standard library only) under
    /opt/sheesh with a launcher, and the init scripts."""
    files = resources.files("sheesh.image") / "files"
    package = Path(guest_package.__file__).parent
    code = {f"opt/sheesh/sheesh/guest/{p.name}": p.read_bytes() for p in sorted(package.glob("*.py"))}
    return {
        "opt/sheesh/agent.py": AGENT_LAUNCHER,
        "opt/sheesh/sheesh/__init__.py": b"",
        **code,
        "etc/sheesh/rc.sysinit": (files / "rc.sysinit").read_bytes(),
        "etc/sheesh/console": (files / "console").read_bytes(),
        "etc/sheesh/vt-console": (files / "vt-console").read_bytes(),
        "etc/inittab": (files / "inittab").read_bytes(),
        "etc/ssh/sshd_config.d/sheesh.conf": (files / "sshd.conf").read_bytes(),
        "initramfs/init": (files / "initramfs-init").read_bytes(),
        RUNAS_SOURCE: (files / "runas.c").read_bytes(),
    }


def default_recipe() -> Recipe:
    digest = hashlib.sha256()
    for name, data in sorted(guest_files().items()):
        digest.update(name.encode() + b"\0" + data)
    return Recipe(files_digest=digest.hexdigest()[:16])


def _run(cmd: list[str], log: Callable[[str], None] | None = None) -> str:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if log is not None:
            log(line.rstrip())
    if proc.wait() != 0:
        tail = "".join(lines[-20:])
        raise ImageBuildError(f"{cmd[0]} failed (exit {proc.returncode}):\n{tail}")
    return "".join(lines)


class ImageBuilder:
    """Builds (or finds cached) the built-in image for a recipe."""

    STEPS = 6

    def __init__(self, image_dir: Path, recipe: Recipe | None = None) -> None:
        self.image_dir = image_dir
        self.recipe = recipe or default_recipe()

    @property
    def build_path(self) -> Path:
        return self.image_dir / "builds" / self.recipe.hash()

    def cached(self) -> BuiltImage | None:
        try:
            return BuiltImage.load(self.build_path)
        except ImageBuildError:
            return None

    def build(self, progress: Progress | None = None, force: bool = False) -> BuiltImage:
        """Return the image for the recipe, building what is missing. Idempotent."""
        report: Progress = progress or (lambda _m, _s, _t: None)
        if not force and (done := self.cached()) is not None:
            report("cached", self.STEPS, self.STEPS)
            return done
        if os.geteuid() != 0:
            raise ImageBuildError("building the guest image needs root (debootstrap, chroot)")
        for tool in ("debootstrap", "mkfs.ext4", "depmod", "gcc"):
            if shutil.which(tool) is None:
                raise ImageBuildError(f"{tool} is not installed (run scripts/setup.sh)")
        (self.image_dir / "builds").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=self.image_dir / "builds"))
        try:
            base = self._base_tree(lambda m: report(f"debootstrap: {m}", 1, self.STEPS))
            report("fetching kernel", 2, self.STEPS)
            kernel_root, version = self._kernel(base)
            report("extracting vmlinux", 3, self.STEPS)
            (work / "vmlinux").write_bytes(extract_vmlinux((kernel_root / f"boot/vmlinuz-{version}").read_bytes()))
            report("writing initramfs", 4, self.STEPS)
            self._initramfs(kernel_root, version, work / "initrd.cpio")
            report("customising rootfs", 5, self.STEPS)
            tree = work / "tree"
            _run(["cp", "-a", str(base), str(tree)])
            self._customise(tree)
            self._install_deno(tree)
            report("making ext4 rootfs", 6, self.STEPS)
            rootfs = work / "rootfs.ext4"
            with open(rootfs, "wb") as fh:
                fh.truncate(self.recipe.rootfs_size_mb * 1024 * 1024)
            _run(["mkfs.ext4", "-q", "-F", "-L", "sheesh-root", "-E", "root_owner=0:0", "-d", str(tree), str(rootfs)])
            shutil.rmtree(tree)
            rootfs.chmod(0o444)
            manifest = {
                "recipe_hash": self.recipe.hash(),
                "kernel_version": version,
                "rootfs_size_mb": self.recipe.rootfs_size_mb,
                "recipe": asdict(self.recipe),
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if self.build_path.exists():
                shutil.rmtree(self.build_path)
            work.rename(self.build_path)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        report("done", self.STEPS, self.STEPS)
        return BuiltImage.load(self.build_path)

    def _base_tree(self, log: Callable[[str], None]) -> Path:
        base = self.image_dir / "cache" / f"base-{self.recipe.base_hash()}"
        if (base / ".complete").exists():
            log("cached")
            return base
        shutil.rmtree(base, ignore_errors=True)
        base.parent.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(self.recipe.packages)}",
                self.recipe.suite,
                str(base),
                self.recipe.mirror,
            ],
            log,
        )
        self._install_toolbox(base, log)
        (base / ".complete").touch()
        return base

    def _install_toolbox(self, base: Path, log: Callable[[str], None]) -> None:
        """apt-get install the toolbox into the debootstrapped tree (apt resolves the large dependency trees
        of nodejs/npm and git much faster than debootstrap's own resolver)."""
        with self._apt_sources(base, f"deb {self.recipe.mirror} {self.recipe.suite} main\n"):
            env = ["env", "DEBIAN_FRONTEND=noninteractive"]
            _run(["chroot", str(base), *env, "apt-get", "-q", "update"], log)
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *self.recipe.toolbox]
            _run(["chroot", str(base), *env, *install], log)
            _run(["chroot", str(base), "apt-get", "clean"], log)

    @contextlib.contextmanager
    def _apt_sources(self, base: Path, line: str) -> Iterator[None]:
        """An extra apt source and the host's resolver in the tree while the block runs; lists dropped after."""
        sources = base / "etc/apt/sources.list.d/sheesh-build.list"
        sources.write_text(line)
        with contextlib.suppress(OSError):
            shutil.copyfile("/etc/resolv.conf", base / "etc/resolv.conf")
        try:
            yield
        finally:
            sources.unlink(missing_ok=True)
            for lists in (base / "var/lib/apt/lists").glob("*_dists_*"):
                lists.unlink()

    def _kernel(self, base: Path) -> tuple[Path, str]:
        """Download and unpack the Debian kernel package using the base tree's own apt."""
        with self._apt_sources(base, f"deb {self.recipe.security_mirror} {self.recipe.suite}-security main\n"):
            _run(["chroot", str(base), "apt-get", "-q", "update"])
            depends = _run(["chroot", str(base), "apt-cache", "depends", self.recipe.kernel_package])
            pkg = next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in depends.splitlines()
                    if ln.strip().startswith("Depends:") and "linux-image-" in ln
                ),
                None,
            )
            if pkg is None:
                raise ImageBuildError(f"cannot resolve {self.recipe.kernel_package}")
            version = pkg.removeprefix("linux-image-")
            cache = self.image_dir / "cache" / f"kernel-{version}"
            if not (cache / ".complete").exists():
                shutil.rmtree(cache, ignore_errors=True)
                _run(["chroot", str(base), "sh", "-c", f"cd /tmp && apt-get -q download {pkg}"])
                debs = list((base / "tmp").glob(f"{pkg}_*.deb"))
                if not debs:
                    raise ImageBuildError(f"download of {pkg} produced no package")
                _run(["chroot", str(base), "dpkg-deb", "-x", f"/tmp/{debs[0].name}", "/tmp/kernel"])
                shutil.move(str(base / "tmp/kernel"), cache)
                for deb in debs:
                    deb.unlink()
                _run(["depmod", "-b", str(cache), version])
                (cache / ".complete").touch()
            return cache, version

    def _install_deno(self, tree: Path) -> None:
        """Deno from its npm package (``npm pack``; the binary is ``package/deno`` in the tarball)."""
        name = self.recipe.deno_package.replace("@", "").replace("/", "-")
        cache = self.image_dir / "cache" / name
        binary = cache / "deno"
        if not binary.exists():
            if shutil.which("npm") is None:
                raise ImageBuildError("npm is not installed (run scripts/setup.sh)")
            cache.mkdir(parents=True, exist_ok=True)
            out = _run(["npm", "pack", "--silent", "--pack-destination", str(cache), self.recipe.deno_package])
            tgz = cache / out.strip().splitlines()[-1]
            with tarfile.open(tgz) as tar:
                member = tar.extractfile("package/deno")
                if member is None:
                    raise ImageBuildError(f"{self.recipe.deno_package} has no package/deno")
                tmp = binary.with_suffix(".tmp")
                with open(tmp, "wb") as fh:
                    shutil.copyfileobj(member, fh)
                tmp.chmod(0o755)
                tmp.rename(binary)
            tgz.unlink()
        dest = tree / "usr/local/bin/deno"
        shutil.copyfile(binary, dest)
        dest.chmod(0o755)

    def _initramfs(self, kernel_root: Path, version: str, out: Path) -> None:
        moddir = kernel_root / "lib/modules" / version
        order = module_load_order(moddir / "modules.dep", list(self.recipe.modules))
        busybox = Path(self.image_dir / "cache" / f"base-{self.recipe.base_hash()}" / "bin/busybox")
        files = guest_files()
        with open(out, "wb") as fh:
            cpio = CpioWriter(fh)
            for d in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "newroot"):
                cpio.directory(d)
            cpio.char_device("dev/console", 5, 1)
            cpio.file_from("bin/busybox", busybox, 0o755)
            cpio.symlink("bin/sh", "busybox")
            cpio.file("init", files["initramfs/init"], 0o755)
            names = []
            for rel in order:
                name = Path(rel).name
                cpio.file_from(f"lib/modules/{name}", moddir / rel)
                names.append(name)
            cpio.file("modules.order", ("\n".join(names) + "\n").encode())
            full_names = []
            for rel in module_load_order(moddir / "modules.dep", list(self.recipe.full_vm_modules)):
                if rel not in order:
                    cpio.file_from(f"lib/modules/{Path(rel).name}", moddir / rel)
                    full_names.append(Path(rel).name)
            cpio.file("modules.full", ("\n".join(full_names) + "\n").encode())
            cpio.close()

    def _customise(self, tree: Path) -> None:
        uid = self.recipe.uid
        _run(["chroot", str(tree), "groupadd", "-g", str(uid), "user"])
        _run(["chroot", str(tree), "useradd", "-m", "-u", str(uid), "-g", str(uid), "-s", "/bin/bash", "user"])
        workspace = tree / "workspace"
        workspace.mkdir(mode=0o755)
        os.chown(workspace, uid, uid)
        for name, data in guest_files().items():
            if name.startswith("initramfs/"):
                continue
            dest = tree / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(0o755 if name.startswith("etc/sheesh/") else 0o644)
        init = tree / "sbin/init"
        init.unlink(missing_ok=True)
        init.symlink_to("/bin/busybox")
        profile = tree / "etc/profile"  # sourced by every exec's login shell: spare it a process start
        profile.write_text(profile.read_text().replace('"$(id -u)"', '"${EUID:-$(id -u)}"'))
        runas = tree / RUNAS.lstrip("/")  # what each exec's shell takes the exec user on through (runas.c)
        runas.parent.mkdir(parents=True, exist_ok=True)
        _run(["gcc", "-static", "-Os", "-Wall", "-o", str(runas), str(tree / RUNAS_SOURCE)])
        # /bin/bash is Debian's bash-static (the same bash, linked statically): every exec starts one, and
        # under TCG the dynamic linker's faults and relocations were a third of its start (bash -lc true
        # 15.2 -> 11.1 ms); the packaged binary stays as /bin/bash.dynamic, dpkg keeps the diversion on upgrades
        _run(
            ["chroot", str(tree), "dpkg-divert", "--local", "--rename", "--divert", BASH_DYNAMIC, "--add", "/bin/bash"]
        )
        shutil.copy2(tree / "bin/bash-static", tree / "bin/bash")
        # every process started with LANG=C.UTF-8 loads the locale: from the archive it is one file mapped
        # instead of thirteen opened (bash -c true 13.4 -> 11 ms under TCG)
        _run(["chroot", str(tree), "localedef", "--add-to-archive", "--replace", "/usr/lib/locale/C.utf8"])
        (tree / "etc/hostname").write_text("sheesh\n")
        (tree / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 sheesh\n")
        (tree / "etc/fstab").write_text("")
        (tree / "etc/resolv.conf").unlink(missing_ok=True)
        for host_key in (tree / "etc/ssh").glob("ssh_host_*"):
            host_key.unlink()  # made by apt's postinst: every VM makes its own (guest/sshd.py)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt/archives"):
            shutil.rmtree(tree / junk, ignore_errors=True)
        (tree / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
