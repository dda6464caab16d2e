#!/usr/bin/env bash
# Builds the initramfs for the qemu test VM.
#
# Usage: mkinitramfs.sh OUT.cpio.gz [PROGRAM...] [-- SCRIPT]
#   PROGRAM   a host file copied to /opt/aokd/bin/<name>, or HOST_PATH=GUEST_PATH to
#             choose where it goes (GUEST_PATH absolute), or @COMMAND: the host's
#             installed COMMAND (found on PATH, /usr/sbin and /sbin included) copied to
#             the same path in the image (e.g. @bird: /usr/sbin/bird). Dynamically
#             linked ELF files get the shared libraries that ldd lists, and the dynamic
#             loader, copied to the same paths in the image.
#   SCRIPT    a shell script the guest runs (as /opt/aokd/guest.sh, with sh, working
#             directory /opt/aokd, PATH starting with /opt/aokd/bin; it may source
#             /opt/aokd/lib.sh, a copy of tests/vm/lib.sh). Without one the guest
#             runs an interactive shell on the console.
#
# The image holds busybox (static) with all its applet links, iproute2's ip, tc, ss and
# nstat (busybox's ip has no `netns`), tcpdump, and an /init that mounts proc, sysfs,
# devtmpfs, devpts, tmpfs (/tmp, /run), brings up lo, runs SCRIPT with /bin/sh (dash:
# busybox's ash would prefer its own applets over iproute2's), prints
#     AOKD-VM-EXIT <status>
# on the console and ends the VM with `reboot -f` (with qemu -no-reboot: qemu exits).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

usage() {
    vm_die "usage: mkinitramfs.sh OUT.cpio.gz [PROGRAM | HOST=GUEST]... [-- SCRIPT]"
}

(($# >= 1)) || usage
out="$1"
shift
programs=()
script=""
while (($#)); do
    if [[ "$1" == "--" ]]; then
        (($# == 2)) || usage
        script="$2"
        [[ -r "$script" ]] || vm_die "guest script not found or not readable: $script"
        break
    fi
    programs+=("$1")
    shift
done

ensure_packages "${AOKD_VM_RUN_PKGS[@]}"

busybox=/bin/busybox
[[ -x "$busybox" ]] || vm_die "$busybox not found (package busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
    vm_die "$busybox is dynamically linked; install busybox-static (it replaces busybox)"
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/aokd-initramfs.XXXXXX")"
trap 'rm -rf "$root"' EXIT

# copy_file HOST GUEST: copies one file (following symlinks), plus, for a dynamically
# linked ELF, its libraries and loader (at the paths ldd shows).
copy_file() {
    local src="$1" dst="$2" line lib
    [[ -f "$src" ]] || vm_die "file to copy into the initramfs not found: $src"
    mkdir -p "$root$(dirname "$dst")"
    cp -L "$src" "$root$dst"
    if [[ "$(head -c 4 "$src" | od -An -c | tr -d ' ')" != '177ELF' ]]; then
        return 0
    fi
    local deps
    if ! deps="$(ldd "$src" 2>/dev/null)"; then
        return 0 # static (ldd: "not a dynamic executable")
    fi
    while IFS= read -r line; do
        case "$line" in
        *"not found"*) vm_die "$src needs a library that is not installed: $line" ;;
        *"=> /"*) lib="${line#*=> }" lib="${lib%% (*}" ;;
        *"/"*" ("*) lib="${line#"${line%%[![:space:]]*}"}" lib="${lib%% (*}" ;;
        *) continue ;;
        esac
        [[ "$lib" == /* ]] || continue
        if [[ ! -e "$root$lib" ]]; then
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        fi
    done <<<"$deps"
}

# Directory layout and busybox.
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,opt/aokd/bin,var}
ln -s ../run "$root/var/run"
cp "$busybox" "$root/bin/busybox"
while IFS= read -r applet; do
    [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)
if [[ "$(id -u)" == 0 ]]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
fi # else: the kernel's built-in initramfs provides /dev/console

# /bin/sh is dash, not busybox ash: Debian's busybox-static is built with
# FEATURE_SH_STANDALONE, so its ash runs its own applets (ip, tc, ...) even where PATH
# has the real program. Busybox's shell stays available as /bin/ash.
rm -f "$root/bin/sh"
copy_file "$(command -v dash || vm_die "dash not found (package dash)")" /bin/sh

# iproute2 (ip netns, veth, tc netem, ss, nstat) and tcpdump, replacing busybox applets.
find_tool() {
    local t
    t="$(PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" command -v "$1" || true)"
    [[ -n "$t" ]] || vm_die "$1 not found on the host (package $2)"
    printf '%s\n' "$t"
}
for tool in ip tc ss; do
    rm -f "$root/sbin/$tool" "$root/bin/$tool" "$root/usr/bin/$tool" "$root/usr/sbin/$tool"
    copy_file "$(find_tool "$tool" iproute2)" "/sbin/$tool"
done
copy_file "$(find_tool nstat iproute2)" /usr/bin/nstat
copy_file "$(find_tool tcpdump tcpdump)" /usr/sbin/tcpdump
[[ -d /etc/iproute2 ]] && cp -r /etc/iproute2 "$root/etc/"
for dist in /usr/lib/x86_64-linux-gnu/tc/*.dist; do
    [[ -e "$dist" ]] && copy_file "$dist" "$dist"
done

# Minimal /etc: users (tcpdump drops privileges to user tcpdump), names, services.
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tcpdump:x:104:108::/nonexistent:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
tcpdump:x:108:
nogroup:x:65534:
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files
services: files
protocols: files
EOF
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
for f in /etc/services /etc/protocols; do
    [[ -r "$f" ]] && cp "$f" "$root$f"
done

# The programs under test.
for p in ${programs[@]+"${programs[@]}"}; do
    if [[ "$p" == @* ]]; then
        host="$(PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" command -v "${p#@}" || true)"
        [[ "$host" == /* ]] || vm_die "$p: no command ${p#@} installed on the host"
        guest="$host"
    elif [[ "$p" == *=* ]]; then
        host="${p%%=*}" guest="${p#*=}"
        [[ "$guest" == /* ]] || vm_die "guest path must be absolute in '$p'"
    else
        host="$p" guest="/opt/aokd/bin/$(basename "$p")"
    fi
    copy_file "$host" "$guest"
done

if [[ -n "$script" ]]; then
    cp "$script" "$root/opt/aokd/guest.sh"
fi
# The guest scripts' helpers (its first part is POSIX sh for dash).
cp "$here/lib.sh" "$root/opt/aokd/lib.sh"

cat >"$root/init" <<'EOF'
#!/bin/sh
# /init of the aokd test VM (generated by tests/vm/mkinitramfs.sh).
export PATH=/opt/aokd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1
hostname aokd-vm
ip link set lo up
echo "AOKD-VM-BOOT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)s"
cd /opt/aokd
if [ -f /opt/aokd/guest.sh ]; then
    sh /opt/aokd/guest.sh
    status=$?
else
    echo "no guest script: interactive shell (exit to power off)"
    setsid cttyhack sh
    status=$?
fi
echo "AOKD-VM-EXIT $status"
reboot -f
sleep 5
EOF
chmod 755 "$root/init"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner 0:0 --quiet) | gzip -1 >"$out.tmp.$$"
mv "$out.tmp.$$" "$out"
vm_log "initramfs: $out ($(du -h "$out" | cut -f1))"
