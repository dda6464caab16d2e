# shellcheck shell=bash disable=SC2034 # variables here are used by the scripts that source it
# Helpers shared by build-kernel.sh, mkinitramfs.sh and run.sh. Source it; do not run it.

# Debian package that provides the kernel source, and where it puts the tarball.
AOKD_VM_SRC_PKG=linux-source-6.12
AOKD_VM_SRC_TAR=/usr/src/linux-source-6.12.tar.xz

aokd_vm_cache_dir() {
    printf '%s\n' "${AOKD_VM_CACHE:-${HOME:-/root}/.cache/aokd-vm}"
}

vm_log() {
    printf '[aokd-vm] %s\n' "$*" >&2
}

vm_die() {
    printf '[aokd-vm] ERROR: %s\n' "$*" >&2
    exit 1
}

# pkg_installed PKG: true if dpkg says PKG is installed.
pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# ensure_packages PKG...: installs the missing ones with apt-get (root only; runs
# `apt-get update` once per process first). Fails naming the packages otherwise.
ensure_packages() {
    local missing=() p
    command -v dpkg-query >/dev/null 2>&1 ||
        vm_die "dpkg-query not found: these scripts need a Debian/Ubuntu host (packages wanted: $*)"
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ "$(id -u)" != 0 ]]; then
        vm_die "missing Debian packages: ${missing[*]} (not root, cannot install; run: sudo apt-get install -y ${missing[*]})"
    fi
    if [[ -z "${AOKD_VM_APT_UPDATED:-}" ]]; then
        vm_log "apt-get update (for: ${missing[*]})"
        DEBIAN_FRONTEND=noninteractive apt-get update >&2 ||
            vm_die "apt-get update failed (wanted: ${missing[*]})"
        export AOKD_VM_APT_UPDATED=1
    fi
    vm_log "apt-get install -y ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        vm_die "apt-get install failed for: ${missing[*]}"
}

# Packages the kernel build needs.
AOKD_VM_BUILD_PKGS=("$AOKD_VM_SRC_PKG" gcc make libc6-dev flex bison bc libelf-dev libssl-dev xz-utils cpio util-linux)
# Packages the initramfs and the VM need (iproute2: busybox's ip has no `netns`).
AOKD_VM_RUN_PKGS=(qemu-system-x86 busybox-static dash cpio gzip iproute2 tcpdump util-linux)
