#!/usr/bin/env bash
# Boots the TCP-AO test kernel in qemu (TCG) with an initramfs holding PROGRAMs, runs
# SCRIPT in the guest, streams the serial console to stdout, and exits with the guest
# script's status.
#
# Usage: run.sh [--timeout SECONDS] [--keep-initramfs PATH] SCRIPT [PROGRAM | HOST=GUEST | @COMMAND]...
#   --timeout   kill qemu after SECONDS (default 300, or $AOKD_VM_TIMEOUT)
#   --keep-initramfs  also write the initramfs to PATH (for debugging)
# Exit status: the guest script's (from the "AOKD-VM-EXIT <status>" console line);
#   124 if qemu had to be killed at the timeout; 125 if qemu ended without that line
#   (kernel panic, init failure); 1 for a host-side failure (kernel build, packages).
# Environment: AOKD_VM_CACHE (see build-kernel.sh), AOKD_VM_MEM (MiB, default 512),
#   AOKD_VM_QEMU_ARGS (extra qemu arguments, split on spaces).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

timeout_s="${AOKD_VM_TIMEOUT:-300}"
keep=""
while (($#)); do
    case "$1" in
    --timeout)
        (($# >= 2)) || vm_die "--timeout needs a value"
        timeout_s="$2"
        shift 2
        ;;
    --keep-initramfs)
        (($# >= 2)) || vm_die "--keep-initramfs needs a path"
        keep="$2"
        shift 2
        ;;
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    --)
        shift
        break
        ;;
    -*) vm_die "run.sh: unknown option $1" ;;
    *) break ;;
    esac
done
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || vm_die "--timeout must be a positive number of seconds, got '$timeout_s'"
(($# >= 1)) || vm_die "usage: run.sh [--timeout SECONDS] SCRIPT [PROGRAM]..."
script="$1"
shift
[[ -r "$script" ]] || vm_die "guest script not found: $script"

ensure_packages "${AOKD_VM_RUN_PKGS[@]}"
command -v qemu-system-x86_64 >/dev/null ||
    vm_die "qemu-system-x86_64 not found (package qemu-system-x86)"

kernel="$("$here/build-kernel.sh" | tail -n 1)"
[[ -s "$kernel" ]] || vm_die "build-kernel.sh did not produce a kernel image"

work="$(mktemp -d "${TMPDIR:-/tmp}/aokd-vm-run.XXXXXX")"
qemu_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n "$qemu_pid" ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$here/mkinitramfs.sh" "$work/initrd.gz" "$@" -- "$script"
if [[ -n "$keep" ]]; then
    cp "$work/initrd.gz" "$keep"
fi

console="$work/console.log"
# shellcheck disable=SC2206 # deliberate word splitting of the extra arguments
extra=(${AOKD_VM_QEMU_ARGS:-})
vm_log "booting qemu (TCG, timeout ${timeout_s}s)"
start=$SECONDS
# The console goes to a file that is streamed to stdout; qemu runs in the background so
# that the timeout can kill exactly it.
: >"$console"
qemu-system-x86_64 -accel tcg -cpu max -m "${AOKD_VM_MEM:-512}" -smp 1 \
    -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    ${extra[@]+"${extra[@]}"} </dev/null >"$console" 2>&1 &
qemu_pid=$!
tail -n +1 -f --pid="$qemu_pid" "$console" &
tail_pid=$!

timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    if ((SECONDS - start >= timeout_s)); then
        timed_out=1
        kill -KILL "$qemu_pid" 2>/dev/null || true
        break
    fi
    sleep 0.2
done
qemu_status=0
wait "$qemu_pid" 2>/dev/null || qemu_status=$? # 2>/dev/null: no "Killed" job notice
qemu_pid=""
wait "$tail_pid" 2>/dev/null || true
elapsed=$((SECONDS - start))

if ((timed_out)); then
    vm_log "TIMEOUT: the guest did not finish within ${timeout_s}s; qemu killed"
    exit 124
fi
exit_line="$(tr -d '\r' <"$console" | grep -E '^AOKD-VM-EXIT [0-9]+$' | tail -n 1 || true)"
if [[ -z "$exit_line" ]]; then
    vm_log "qemu ended (status $qemu_status) after ${elapsed}s without an AOKD-VM-EXIT line (kernel panic or init failure?)"
    exit 125
fi
status="${exit_line#AOKD-VM-EXIT }"
vm_log "guest script exited with status $status (VM ran ${elapsed}s)"
exit "$status"
