#!/usr/bin/env bash
# Set up sheesh on a fresh Debian/Ubuntu machine and start it.
#   scripts/setup.sh            install system packages, Python deps, build the guest image, start `sheesh serve`
#   scripts/setup.sh --no-start same, without starting the service
#   scripts/setup.sh --no-start --test-deps   also the packages only tests need (Chromium for the console test)
# Idempotent: packages already present and a cached guest image are not fetched again. Runs as root (via sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

START=1
TEST_DEPS=0
for arg in "$@"; do
    case $arg in
    --no-start) START=0 ;;
    --test-deps) TEST_DEPS=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
    esac
done

if [[ $(id -u) -ne 0 ]]; then
    echo "==> sheesh runs VMs as root: re-running with sudo"
    exec sudo -E "$0" "$@"
fi

APT_PACKAGES=(qemu-system-x86 qemu-utils seabios debootstrap e2fsprogs cpio kmod xorriso iproute2 nftables git openvpn python3-venv python3-dev gcc libc6-dev)
((TEST_DEPS)) && APT_PACKAGES+=(chromium openssh-client postgresql redis-server)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
command -v npm >/dev/null || missing+=(npm)  # Deno for the guest comes from its npm package
if ((${#missing[@]})); then
    echo "==> installing system packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating virtualenv .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.sheesh-deps
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "==> installing Python dependencies"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi

echo "==> guest image"
.venv/bin/sheesh image build

echo "==> browser console assets"
.venv/bin/sheesh web fetch

if ((START)); then
    echo "==> starting sheesh on http://${SHEESH_HOST:-127.0.0.1}:${SHEESH_PORT:-3000} (Ctrl-C to stop)"
    exec .venv/bin/sheesh serve
fi
