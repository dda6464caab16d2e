#!/bin/sh
# Guest side of the aokd restart test (tests/tests/vm_restart.rs); runs inside the qemu
# VM (tests/vm/run.sh) as /opt/aokd/guest.sh with dash, on a kernel with TCP-AO.
#
# Two network namespaces a (10.204.0.1) and b (10.204.0.2) joined by a veth pair, an
# aokd in each (backend tcp-ao, TCP port 179, a initiates, state_dir per namespace)
# with short MKT lifetimes (mkt_rekey 8 s, mkt_lifetime 16 s). One stream-peer
# connection (client in a, server in b, attach API) carries data both ways without a
# pause, every octet checked; tcpdump captures b's veth; `aoctl mkts` and `aoctl
# sockets` of both are sampled once per second and the master key of every MKT is
# collected from both daemons every 200 ms (a's collector keeps asking while a's aokd
# is away, so it collects the MKTs of both of a's lives).
#
#   1. once the client's socket has seen BEFORE rollovers, a's aokd is killed with
#      SIGKILL in the middle of the traffic and started again at once with the same
#      configuration and state_dir;
#   2. the stream goes on until both sockets have seen AFTER more rollovers after the
#      restart, and SETTLE s more; then the client is told to stop (--stop-file).
#
# Checks: the connection never dropped or stalled and every octet verified (both
# directions); Current_key kept changing after the restart (>= AFTER rollovers on
# both sockets after it, new MKTs in both daemons); pkt_bad and pkt_key_not_found 0
# at both ends; replaced keys left the sockets (no key lingering > LINGER_S s); after
# the restart `aoctl sockets` in a lists the client's socket again; `aoctl verify` of
# the capture with every collected key verifies every segment, none unsigned, no bad
# MAC, no unknown KeyID.
# Every result is one line `E2E-RESULT case=NAME key=value ...`, every check one line
# `E2E-CHECK NAME ok` or `E2E-CHECK NAME FAIL: why`. Exit status 0 only if every check
# passed. Addresses: 10.204.0.0/24 exists only inside the namespaces of this VM.
set -eu

# shellcheck source=lib.sh
. /opt/aokd/lib.sh
stream_defaults
A_IP=10.204.0.1
B_IP=10.204.0.2
BEFORE=${E2E_BEFORE:-3}
AFTER=${E2E_AFTER:-3}
SETTLE=${E2E_SETTLE:-10}
# Limits of the waits for BEFORE and AFTER rollovers.
WAIT_S=${E2E_WAIT_S:-150}
LINGER_S=${E2E_LINGER_S:-10}

# rollovers ROLE: the rollovers of ROLE's socket so far (its last sample line).
rollovers() {
    v=$(grep '"event":"sample"' "$T/$1.out" | tail -n 1 | sed -n 's/.*"rollovers":\([0-9]*\).*/\1/p')
    echo "${v:-0}"
}

# socket_listed NS PID ROLE: the state (keys/guarded) of PID's socket with ROLE in
# NS's `aoctl sockets`, or "none".
socket_listed() {
    v=$(aoctl_ns "$1" sockets 2>/dev/null | awk -v ns="$1" "$SOCKETS_AWK" | awk -v p="$2" -v r="$3" '$2 == p && $4 == r { print $5; exit }')
    echo "${v:-none}"
}

# ---------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------
stream_setup before="$BEFORE" after="$AFTER"

observe_start 1200
start_tcpdump "$T/stream.pcap"

# ---------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------
stream_begin
start_stream_server server --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --linger-limit "$LINGER_S"
ip netns exec a stream-peer client --connect "$B_IP:$PORT" --attach "$T/a/attach.sock" \
    --seconds 1200 --stop-file "$T/stop" \
    --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --linger-limit "$LINGER_S" \
    >"$T/client.out" 2>"$T/client.err" &
cli=$!
wait_until "the client to connect" 30 grep -q '"event":"connected"' "$T/client.out"
client_state_before=$(socket_listed a "$cli" connect)
echo "E2E-STEP streaming until $BEFORE rollovers"
end=$(($(now_ms) + WAIT_S * 1000))
while [ "$(rollovers client)" -lt "$BEFORE" ]; do
    kill -0 "$cli" 2>/dev/null || fatal "the client ended before $BEFORE rollovers: $(tail -n 3 "$T/client.out")"
    [ "$(now_ms)" -lt "$end" ] || fatal "fewer than $BEFORE rollovers within ${WAIT_S}s"
    sleep 0.2
done
# In the middle of the traffic: not right at a rollover.
sleep 2

# ---------------------------------------------------------------------------------
# a's aokd killed and started again at once
# ---------------------------------------------------------------------------------
aoctl_ns a mkts | awk -v t="$(unix_ms)" "$MKTS_AWK" >"$T/old.a"
cat "$T/mkts.a" "$T/mkts.b" "$T/old.a" | awk '{ print $4 }' | sort -u >"$T/old-fps"
client_rollovers_kill=$(rollovers client)
server_rollovers_kill=$(rollovers server)
# shellcheck disable=SC2154 # set by start_aokd through eval
kill -KILL "$aokd_a"
t_kill=$(unix_ms)
wait_exit "$aokd_a" 10
echo "----- killed (SIGKILL) at $t_kill, restarted -----" >>"$T/a/aokd.log"
start_aokd a
t_ready=$(unix_ms)
client_state_after=$(socket_listed a "$cli" connect)
aoctl_ns a mkts | awk -v t="$(unix_ms)" "$MKTS_AWK" >"$T/restored.a"
restored=$(awk '$5 ~ /^restored/' "$T/restored.a" | wc -l)
restored_line=$(sed -n '/----- killed (SIGKILL)/,$p' "$T/a/aokd.log" | grep "state restored" | head -n 1 | tr -d '"' || true)
echo "E2E-RESULT case=restart t_kill_ms=$t_kill t_ready_ms=$t_ready restart_ms=$((t_ready - t_kill)) a_mkts_at_kill=$(wc -l <"$T/old.a") a_mkts_restored=$restored log_sockets=$(field "$restored_line" sockets) log_sockets_gone=$(field "$restored_line" sockets_gone) log_mkts_kept=$(field "$restored_line" mkts_kept) client_socket_before=$client_state_before client_socket_after=$client_state_after client_rollovers_at_kill=$client_rollovers_kill server_rollovers_at_kill=$server_rollovers_kill"
expect restart-socket-listed "a's aokd lists the client's socket: before the kill $client_state_before, after the restart $client_state_after" \
    "$client_state_before" = keys -a "$client_state_after" != none

# ---------------------------------------------------------------------------------
# AFTER more rollovers on both sockets
# ---------------------------------------------------------------------------------
echo "E2E-STEP streaming until $AFTER rollovers after the restart"
end=$(($(now_ms) + WAIT_S * 1000))
t_new=""
while [ "$(rollovers client)" -lt $((client_rollovers_kill + AFTER)) ] ||
    [ "$(rollovers server)" -lt $((server_rollovers_kill + AFTER)) ]; do
    kill -0 "$cli" 2>/dev/null || break
    kill -0 "$srv" 2>/dev/null || break
    if [ -z "$t_new" ] && aoctl_ns a mkts 2>/dev/null | awk -v t=0 "$MKTS_AWK" | awk 'NR == FNR { old[$1] = 1; next } !($4 in old) && $5 !~ /^restored/' "$T/old-fps" - | grep -q .; then
        t_new=$(unix_ms)
    fi
    [ "$(now_ms)" -lt "$end" ] || break
    sleep 0.2
done
sleep "$SETTLE"
client_state_end=$(socket_listed a "$cli" connect)
: >"$T/stop"
stream_finish "$cli" 60

# ---------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------
stream_summaries
for role in client server; do
    if [ "$role" = client ]; then l=$cline st=$client_status; else l=$sline st=$server_status; fi
    k=$(awk -v limit=$((LINGER_S * 1000)) -v after="$t_ready" "$KEYS_AWK" "$T/$role.out")
    echo "E2E-RESULT case=$role status=$st ok=$(jget "$l" ok) disconnected=$(jget "$l" disconnected) stalled=$(jget "$l" stalled) bytes_in=$(jget "$l" bytes_in) bytes_out=$(jget "$l" bytes_out) max_gap_ms=$(jget "$l" max_gap_ms) rollovers=$(jget "$l" rollovers) rollovers_after_restart=$(field "$k" rollovers_after) max_keys=$(jget "$l" max_keys) lingering=$(field "$k" lingering) pending=$(field "$k" pending) max_linger_ms=$(field "$k" max_linger_ms) pkt_good=$(jget "$l" pkt_good) pkt_bad=$(jget "$l" pkt_bad) pkt_key_not_found=$(jget "$l" pkt_key_not_found) elapsed_ms=$(jget "$l" elapsed_ms)"
    expect_stream_end "$role" "$l" "$st"
    expect "$role-rollovers-after-restart" "$role's socket saw $(field "$k" rollovers_after) rollovers after the restart, want >= $AFTER" \
        "$(field "$k" rollovers_after)" -ge "$AFTER"
    expect "$role-old-keys-removed" "$role: $(field "$k" lingering) replaced keys still on the socket after ${LINGER_S}s" "$(field "$k" lingering)" = 0
done
expect_stream_octets "$bad_a" "$bad_b"

# MKTs after the restart (fingerprints never seen before it), in both daemons.
new_a=$(awk -v t="$t_ready" 'NR == FNR { old[$1] = 1; next } $1 > t && !($4 in old) && $5 !~ /^restored/ { print $4 }' "$T/old-fps" "$T/mkts.a" | sort -u | wc -l)
new_b=$(awk -v t="$t_ready" 'NR == FNR { old[$1] = 1; next } $1 > t && !($4 in old) { print $4 }' "$T/old-fps" "$T/mkts.b" | sort -u | wc -l)
warn_a=$(sed -n '/----- killed (SIGKILL)/,$p' "$T/a/aokd.log" | grep -c " WARN \| ERROR " || true)
warn_b=$(grep -c " WARN \| ERROR " "$T/b/aokd.log" || true)
keys_distinct=$(cut -d: -f3 "$T/keys.all" | sort -u | wc -l)
echo "E2E-RESULT case=mkts a_new_after_restart=$new_a b_new_after_restart=$new_b first_new_after_ready_ms=$([ -n "$t_new" ] && echo $((t_new - t_ready)) || echo -) keys_distinct=$keys_distinct a_warn_lines_after_restart=$warn_a b_warn_lines=$warn_b client_socket_end=$client_state_end stream_ms=$stream_ms"
expect mkts-after-restart "new MKTs after the restart: a $new_a, b $new_b; want >= $AFTER" "$new_a" -ge "$AFTER" -a "$new_b" -ge "$AFTER"

# The capture, verified with every collected key.
verify_stream "$T/stream.pcap"

stop_pair
if [ "$fails" != 0 ]; then
    stream_failure_dump "$T/stream.pcap"
    echo "----- a's MKTs at the kill and after the restart (t send recv fp state expires_at) -----"
    cat "$T/old.a" "$T/restored.a"
    echo "----- aoctl verify -----"
    cat "$T/verify.json" "$T/verify.err"
    for role in client server; do
        echo "----- $role: per-second samples -----"
        grep '"event":"sample"' "$T/$role.out" || true
    done
fi
e2e_done
