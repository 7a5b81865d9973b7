#!/usr/bin/env bash
# Installs what flint needs on a fresh Debian 12 machine (run as root):
# the guest-kernel toolchain and source, busybox for initramfs images, QEMU
# for the nested test harness and benchmarks, binutils/gcc for tests, and
# dmsetup for the failing disks of the nested disk-fault test.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
  build-essential python3 bc bison flex libelf-dev libssl-dev xz-utils cpio kmod \
  linux-source-6.1 busybox-static qemu-system-x86 acpica-tools binutils e2fsprogs iproute2 time tmux dmsetup procps
