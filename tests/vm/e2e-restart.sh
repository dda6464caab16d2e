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

T=/tmp/e2e
A_IP=10.204.0.1
B_IP=10.204.0.2
PORT=179
PSK=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
MKT_REKEY=${E2E_MKT_REKEY:-8}
MKT_LIFETIME=${E2E_MKT_LIFETIME:-16}
BEFORE=${E2E_BEFORE:-3}
AFTER=${E2E_AFTER:-3}
SETTLE=${E2E_SETTLE:-10}
# Limits of the waits for BEFORE and AFTER rollovers.
WAIT_S=${E2E_WAIT_S:-150}
LINGER_S=${E2E_LINGER_S:-10}
INTERVAL_MS=${E2E_INTERVAL_MS:-10}
CHUNK=${E2E_CHUNK:-1024}

# shellcheck source=lib.sh
. /opt/aokd/lib.sh

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
script_start=$(now_ms)
rm -rf "$T"
mkdir -p "$T/a" "$T/b"
setup_link "$A_IP" "$B_IP"
t0=$(now_ms)
start_pair "$A_IP" "$B_IP"
echo "E2E-RESULT case=setup mkt_rekey_s=$MKT_REKEY mkt_lifetime_s=$MKT_LIFETIME before=$BEFORE after=$AFTER a_mkts=$(mkt_count a) b_mkts=$(mkt_count b) elapsed_ms=$(($(now_ms) - t0))"

observe_start 1200
start_tcpdump "$T/stream.pcap"

# ---------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------
bad_a0=$(ns_counter a TCPAOBad)
bad_b0=$(ns_counter b TCPAOBad)
t_stream=$(now_ms)
ip netns exec b stream-peer server --listen "$B_IP:$PORT" --attach "$T/b/attach.sock" \
    --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --linger-limit "$LINGER_S" \
    >"$T/server.out" 2>"$T/server.err" &
srv=$!
end=$(($(now_ms) + 30000))
until grep -q '"event":"\(listening\|attach-error\)"' "$T/server.out"; do
    kill -0 "$srv" 2>/dev/null || fatal "stream-peer server exited before listening: $(cat "$T/server.out" "$T/server.err")"
    [ "$(now_ms)" -lt "$end" ] || fatal "stream-peer server did not report listening within 30 s"
    sleep 0.1
done
grep -q '"event":"listening"' "$T/server.out" || fatal "stream-peer server is not listening: $(cat "$T/server.out")"
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
wait_exit "$cli" 60
client_status=$exit_status
wait_exit "$srv" 30
server_status=$exit_status
stream_ms=$(($(now_ms) - t_stream))
bad_a=$(($(ns_counter a TCPAOBad) - bad_a0))
bad_b=$(($(ns_counter b TCPAOBad) - bad_b0))
observe_stop
stop_tcpdump "$T/stream.pcap"

# ---------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------
cline=$(grep '"event":"summary"' "$T/client.out" | tail -n 1 || true)
sline=$(grep '"event":"summary"' "$T/server.out" | tail -n 1 || true)
echo "E2E-CLIENT $cline"
echo "E2E-SERVER $sline"
for role in client server; do
    if [ "$role" = client ]; then l=$cline st=$client_status; else l=$sline st=$server_status; fi
    k=$(awk -v limit=$((LINGER_S * 1000)) -v after="$t_ready" "$KEYS_AWK" "$T/$role.out")
    echo "E2E-RESULT case=$role status=$st ok=$(jget "$l" ok) disconnected=$(jget "$l" disconnected) stalled=$(jget "$l" stalled) bytes_in=$(jget "$l" bytes_in) bytes_out=$(jget "$l" bytes_out) max_gap_ms=$(jget "$l" max_gap_ms) rollovers=$(jget "$l" rollovers) rollovers_after_restart=$(field "$k" rollovers_after) max_keys=$(jget "$l" max_keys) lingering=$(field "$k" lingering) pending=$(field "$k" pending) max_linger_ms=$(field "$k" max_linger_ms) pkt_good=$(jget "$l" pkt_good) pkt_bad=$(jget "$l" pkt_bad) pkt_key_not_found=$(jget "$l" pkt_key_not_found) elapsed_ms=$(jget "$l" elapsed_ms)"
    expect "$role-ok" "$role exited $st: $l $(tail -n 5 "$T/$role.err" | tr '\n' ' ')" "$st" = 0 -a "$(jget "$l" ok)" = true
    expect "$role-connected" "$role: disconnected=$(jget "$l" disconnected) stalled=$(jget "$l" stalled)" \
        "$(jget "$l" disconnected)" = false -a "$(jget "$l" stalled)" = false
    expect "$role-rollovers-after-restart" "$role's socket saw $(field "$k" rollovers_after) rollovers after the restart, want >= $AFTER" \
        "$(field "$k" rollovers_after)" -ge "$AFTER"
    expect "$role-pkt-bad-zero" "$role: pkt_bad $(jget "$l" pkt_bad)" "$(jget "$l" pkt_bad)" = 0
    expect "$role-pkt-key-not-found-zero" "$role: pkt_key_not_found $(jget "$l" pkt_key_not_found)" "$(jget "$l" pkt_key_not_found)" = 0
    expect "$role-old-keys-removed" "$role: $(field "$k" lingering) replaced keys still on the socket after ${LINGER_S}s" "$(field "$k" lingering)" = 0
done
expect bytes-client-to-server "client wrote $(jget "$cline" bytes_out), server verified $(jget "$sline" bytes_in)" \
    "$(jget "$cline" bytes_out)" -gt 0 -a "$(jget "$cline" bytes_out)" = "$(jget "$sline" bytes_in)"
expect bytes-server-to-client "server wrote $(jget "$sline" bytes_out), client verified $(jget "$cline" bytes_in)" \
    "$(jget "$sline" bytes_out)" -gt 0 -a "$(jget "$sline" bytes_out)" = "$(jget "$cline" bytes_in)"
expect ns-ao-bad "TcpExtTCPAOBad during the stream: a +$bad_a, b +$bad_b" "$bad_a" = 0 -a "$bad_b" = 0

# MKTs after the restart (fingerprints never seen before it), in both daemons.
new_a=$(awk -v t="$t_ready" 'NR == FNR { old[$1] = 1; next } $1 > t && !($4 in old) && $5 !~ /^restored/ { print $4 }' "$T/old-fps" "$T/mkts.a" | sort -u | wc -l)
new_b=$(awk -v t="$t_ready" 'NR == FNR { old[$1] = 1; next } $1 > t && !($4 in old) { print $4 }' "$T/old-fps" "$T/mkts.b" | sort -u | wc -l)
warn_a=$(sed -n '/----- killed (SIGKILL)/,$p' "$T/a/aokd.log" | grep -c " WARN \| ERROR " || true)
warn_b=$(grep -c " WARN \| ERROR " "$T/b/aokd.log" || true)
keys_distinct=$(cut -d: -f3 "$T/keys.all" | sort -u | wc -l)
echo "E2E-RESULT case=mkts a_new_after_restart=$new_a b_new_after_restart=$new_b first_new_after_ready_ms=$([ -n "$t_new" ] && echo $((t_new - t_ready)) || echo -) keys_distinct=$keys_distinct a_warn_lines_after_restart=$warn_a b_warn_lines=$warn_b client_socket_end=$client_state_end stream_ms=$stream_ms"
expect mkts-after-restart "new MKTs after the restart: a $new_a, b $new_b; want >= $AFTER" "$new_a" -ge "$AFTER" -a "$new_b" -ge "$AFTER"

# The capture, verified with every collected key.
verify_all "$T/stream.pcap" "$T/verify.json"
echo "E2E-RESULT case=verify status=$verify_status connections=${v_conn:-0} segments=${v_seg:-0} verified=${v_ver:-0} unsigned=${v_uns:-0} bad_mac=${v_bad:-0} unknown_key_id=${v_unk:-0} no_isn=${v_noisn:-0} truncated=${v_trunc:-0} keys=$keys_args"
expect verify-status "aoctl verify exited $verify_status: $(head -c 2000 "$T/verify.err")" "$verify_status" = 0
expect verify-connections "captured ${v_conn:-0} connections, want 1" "${v_conn:-0}" = 1
expect verify-all-segments "verified ${v_ver:-0} of ${v_seg:-0} segments" "${v_seg:-0}" -gt 0 -a "${v_ver:-0}" = "${v_seg:-0}"
expect verify-no-unsigned "${v_uns:-?} unsigned segments" "${v_uns:-1}" = 0
expect verify-no-bad "${v_bad:-?} bad MACs, ${v_unk:-?} unknown KeyIDs" "${v_bad:-1}" = 0 -a "${v_unk:-1}" = 0

stop "$aokd_a"
# shellcheck disable=SC2154
stop "$aokd_b"
if [ "$fails" != 0 ]; then
    dump_logs
    echo "----- the capture: per sender, runs of segments with the same KeyID and RNextKeyID -----"
    keyid_runs "$T/stream.pcap"
    echo "----- a's MKTs at the kill and after the restart (t send recv fp state expires_at) -----"
    cat "$T/old.a" "$T/restored.a"
    echo "----- collected keys (KeyID:algorithm:first octets) -----"
    cut -c1-30 "$T/keys.all"
    echo "----- aoctl verify -----"
    cat "$T/verify.json" "$T/verify.err"
    for role in client server; do
        echo "----- $role: per-second samples -----"
        grep '"event":"sample"' "$T/$role.out" || true
    done
fi
echo "E2E-DONE failures=$fails elapsed_ms=$(($(now_ms) - script_start))"
[ "$fails" = 0 ]
