"""Guest image builder: Debian kernel (vmlinux), initramfs with virtio modules, debootstrap ext4 rootfs."""
