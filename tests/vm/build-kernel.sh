#!/usr/bin/env bash
# Builds (or finds in the cache) a small x86-64 kernel with CONFIG_TCP_AO=y for the
# qemu tests, from Debian's linux-source-6.12 and tinyconfig + tests/vm/kernel.config.
#
# Usage: build-kernel.sh [--print-headers]
#   Last line of stdout: the path of the cached bzImage, or with --print-headers the
#   include directory of the kernel's sanitized uapi headers (for <linux/tcp.h> with
#   TCP_AO_*; the host's linux-libc-dev may be too old).
# Environment:
#   AOKD_VM_CACHE  cache directory (default ~/.cache/aokd-vm)
#   AOKD_VM_JOBS   make -j value (default 2)
# Everything but the last line goes to stderr; the build's own output goes to a log
# file in the cache, whose tail is shown if the build fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

print_headers=0
case "${1:-}" in
"") ;;
--print-headers) print_headers=1 ;;
-h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*) vm_die "build-kernel.sh: unknown argument '$1' (usage: build-kernel.sh [--print-headers])" ;;
esac

config="$here/kernel.config"
[[ -r "$config" ]] || vm_die "kernel config fragment not found: $config"

# The VM's packages too, so that a fresh machine runs `apt-get update` only once.
ensure_packages "${AOKD_VM_BUILD_PKGS[@]}" "${AOKD_VM_RUN_PKGS[@]}"
[[ -r "$AOKD_VM_SRC_TAR" ]] ||
    vm_die "kernel source tarball $AOKD_VM_SRC_TAR not found although $AOKD_VM_SRC_PKG is installed"

src_version="$(dpkg-query -W -f='${Version}' "$AOKD_VM_SRC_PKG")"
hash="$({
    cat "$config"
    printf '%s\n' "$AOKD_VM_SRC_PKG=$src_version"
} | sha256sum | cut -d' ' -f1)"

cache="$(aokd_vm_cache_dir)"
mkdir -p "$cache" || vm_die "cannot create cache directory $cache"
cache="$(cd "$cache" && pwd)"
image="$cache/bzImage-$hash"
headers="$cache/uapi-$src_version"

done_already() {
    [[ -s "$image" ]] && { ((print_headers == 0)) || [[ -d "$headers/include/linux" ]]; }
}

finish() {
    if ((print_headers)); then
        printf '%s\n' "$headers/include"
    else
        printf '%s\n' "$image"
    fi
    exit 0
}

if done_already; then
    vm_log "cached kernel: $image ($AOKD_VM_SRC_PKG $src_version)"
    finish
fi

# One build at a time per cache (parallel test runs wait here instead of racing).
exec 9>"$cache/build.lock"
if ! flock -n 9; then
    vm_log "another build holds $cache/build.lock; waiting"
    flock 9
fi
if done_already; then
    vm_log "cached kernel (built meanwhile): $image"
    finish
fi

src_root="$cache/src/$src_version"
src="$src_root/linux-source-6.12"
build="$cache/build/$src_version"
log="$cache/build-$hash.log"
mkdir -p "$build"
printf "=== %s build-kernel.sh\n" "$(date)" >>"$log"
vm_log "build log: $log"

fail_with_log() {
    vm_log "FAILED: $1"
    vm_log "---- last 60 lines of $log ----"
    tail -n 60 "$log" >&2 || true
    vm_log "---- end of log ----"
    exit 1
}

if [[ ! -e "$src_root/.unpacked" ]]; then
    vm_log "unpacking $AOKD_VM_SRC_TAR into $src_root"
    rm -rf "$src_root"
    mkdir -p "$src_root.tmp.$$"
    nice -n 19 tar -xf "$AOKD_VM_SRC_TAR" -C "$src_root.tmp.$$" >>"$log" 2>&1 ||
        fail_with_log "could not unpack $AOKD_VM_SRC_TAR"
    [[ -f "$src_root.tmp.$$/linux-source-6.12/Makefile" ]] ||
        fail_with_log "$AOKD_VM_SRC_TAR does not contain linux-source-6.12/Makefile"
    touch "$src_root.tmp.$$/.unpacked"
    mv "$src_root.tmp.$$" "$src_root"
fi

kmake() {
    nice -n 19 make -C "$src" O="$build" "$@" >>"$log" 2>&1
}

if [[ ! -s "$image" ]]; then
    vm_log "configuring: tinyconfig + $config"
    kmake tinyconfig || fail_with_log "make tinyconfig"
    (cd "$src" && scripts/kconfig/merge_config.sh -m -O "$build" "$build/.config" "$config") >>"$log" 2>&1 ||
        fail_with_log "merge_config.sh"
    kmake olddefconfig || fail_with_log "make olddefconfig"

    # Every option the fragment sets must have survived olddefconfig (a dependency
    # that is not met silently drops an option).
    lost=()
    while IFS= read -r line; do
        [[ "$line" =~ ^CONFIG_[A-Za-z0-9_]+= ]] || continue
        grep -qxF -- "$line" "$build/.config" || lost+=("$line")
    done <"$config"
    if ! grep -qx 'CONFIG_TCP_AO=y' "$build/.config"; then
        vm_die "CONFIG_TCP_AO=y is not in the final $build/.config (found: $(grep -E '^(# )?CONFIG_TCP_AO[= ]' "$build/.config" || echo nothing)); the kernel would have no TCP-AO"
    fi
    if ((${#lost[@]})); then
        vm_die "options from $config not set in the final .config (unmet dependencies?): ${lost[*]}"
    fi

    vm_log "building bzImage (nice -n 19 make -j${AOKD_VM_JOBS:-2}); takes ~5 min on 2 cores"
    start=$SECONDS
    nice -n 19 make -C "$src" O="$build" -j"${AOKD_VM_JOBS:-2}" bzImage >>"$log" 2>&1 ||
        fail_with_log "make bzImage"
    [[ -s "$build/arch/x86/boot/bzImage" ]] || fail_with_log "make bzImage produced no arch/x86/boot/bzImage"
    cp "$build/arch/x86/boot/bzImage" "$image.tmp.$$"
    cp "$build/.config" "$cache/config-$hash"
    mv "$image.tmp.$$" "$image"
    vm_log "built $image in $((SECONDS - start)) s"
fi

if ((print_headers)) && [[ ! -d "$headers/include/linux" ]]; then
    vm_log "installing uapi headers into $headers"
    # `make headers` leaves the sanitized uapi headers in $build/usr/include
    # (headers_install would only copy them, with rsync).
    kmake headers || fail_with_log "make headers"
    rm -rf "$headers.tmp.$$"
    mkdir -p "$headers.tmp.$$"
    cp -a "$build/usr/include" "$headers.tmp.$$/include"
    rm -rf "$headers"
    mv "$headers.tmp.$$" "$headers"
fi

finish
