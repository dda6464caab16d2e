#!/bin/sh
# Guest side of the MKT rollover test (tests/tests/vm_rollover.rs); runs inside the qemu
# VM (tests/vm/run.sh) as /opt/aokd/guest.sh with dash, on a kernel with TCP-AO.
#
# Two network namespaces a (10.202.0.1) and b (10.202.0.2) joined by a veth pair, an
# aokd in each (backend tcp-ao, TCP port 179, a initiates) with short MKT lifetimes
# (mkt_rekey 8 s, mkt_lifetime 16 s: a rollover about every 7.6 s, the old MKT deleted
# 4 s after its successor). One connection of stream-peer (attach API, client in a,
# server in b) carries data both ways without a pause until the client's socket has
# seen ROLLOVERS changes of Current_key and SETTLE seconds more (at most MAX_S s).
# Meanwhile:
#   - `aoctl --json mkts` is sampled once per second in both namespaces (fingerprints,
#     KeyIDs, state), and `stream-peer mkt-keys` collects the master key of every MKT
#     from both daemons every 200 ms (the root-only `mkt-keys` control command);
#   - tcpdump captures b's veth;
#   - stream-peer prints its socket's TCP_AO_INFO and key list once per second.
# Checks: the stream never dropped or stalled and every octet verified; at least
# ROLLOVERS+1 distinct MKTs; both sockets saw at least ROLLOVERS rollovers, at most 3
# keys at once, and every replaced key left the socket within LINGER_S seconds (from
# the per-second key lists); pkt_bad and pkt_key_not_found 0 at both ends; `aoctl
# verify` of the capture with every collected key verifies every segment, none
# unsigned or bad.
# On failure the aokd logs, the per-second samples, the collected KeyIDs and the
# capture's KeyID/RNextKeyID runs per sender are printed. (A known way to fail: a
# simultaneous rekey by both sides, logged as "simultaneous MKT rekey resolved",
# whose redundant MKT is installed and selected as RNext_key and deleted again within
# milliseconds: the peer signs a few segments with it, which are dropped as
# key-not-found and, since its key lived too briefly to be collected, show up as
# unknown_key_id in the verification.)
# Every result is one line `E2E-RESULT case=NAME key=value ...`, every check one line
# `E2E-CHECK NAME ok` or `E2E-CHECK NAME FAIL: why`. Exit status 0 only if every check
# passed. Addresses: 10.202.0.0/24 exists only inside the namespaces of this VM.
set -eu

# shellcheck source=lib.sh
. /opt/aokd/lib.sh
stream_defaults
A_IP=10.202.0.1
B_IP=10.202.0.2
ROLLOVERS=${E2E_ROLLOVERS:-20}
# The client streams until ROLLOVERS+1 rollovers and SETTLE s more (or MAX_S s).
SETTLE=${E2E_SETTLE:-10}
MAX_S=${E2E_MAX_S:-300}
# A replaced key must leave the socket within LINGER_S s (the overlap is 4 s).
LINGER_S=${E2E_LINGER_S:-10}

# ---------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------
stream_setup rollovers="$ROLLOVERS"

# ---------------------------------------------------------------------------------
# Observers: MKT samples, key collectors, capture
# ---------------------------------------------------------------------------------
observe_start $((MAX_S + 120))
start_tcpdump "$T/stream.pcap"

# ---------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------
stream_begin
start_stream_server server --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --linger-limit "$LINGER_S"
ip netns exec a stream-peer client --connect "$B_IP:$PORT" --attach "$T/a/attach.sock" \
    --seconds "$MAX_S" --min-rollovers $((ROLLOVERS + 1)) --settle "$SETTLE" \
    --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --linger-limit "$LINGER_S" \
    >"$T/client.out" 2>"$T/client.err" &
cli=$!
echo "E2E-STEP streaming (at most $MAX_S s)"
stream_finish "$cli" $((MAX_S + 60))

# ---------------------------------------------------------------------------------
# The stream's results
# ---------------------------------------------------------------------------------
stream_summaries
for role in client server; do
    if [ "$role" = client ]; then l=$cline st=$client_status; else l=$sline st=$server_status; fi
    k=$(grep '"event":"sample"' "$T/$role.out" | awk -v limit=$((LINGER_S * 1000)) "$KEYS_AWK")
    echo "E2E-RESULT case=$role status=$st ok=$(jget "$l" ok) disconnected=$(jget "$l" disconnected) stalled=$(jget "$l" stalled) bytes_in=$(jget "$l" bytes_in) bytes_out=$(jget "$l" bytes_out) max_gap_ms=$(jget "$l" max_gap_ms) rollovers=$(jget "$l" rollovers) distinct_current_keys=$(jget "$l" distinct_current_keys) max_keys=$(jget "$l" max_keys) replaced=$(jget "$l" replaced) removed=$(jget "$l" removed) lingering=$(jget "$l" lingering) pending=$(jget "$l" pending) max_linger_ms=$(jget "$l" max_linger_ms) pkt_good=$(jget "$l" pkt_good) pkt_bad=$(jget "$l" pkt_bad) pkt_key_not_found=$(jget "$l" pkt_key_not_found) elapsed_ms=$(jget "$l" elapsed_ms)"
    echo "E2E-RESULT case=$role-keys $k"
    expect_stream_end "$role" "$l" "$st"
    expect "$role-rollovers" "$role's socket saw $(jget "$l" rollovers) rollovers, want >= $ROLLOVERS" \
        "$(jget "$l" rollovers)" -ge "$ROLLOVERS"
    expect "$role-pkt-good" "$role: pkt_good $(jget "$l" pkt_good)" "$(jget "$l" pkt_good)" -gt 0
    expect "$role-max-keys" "$role: up to $(jget "$l" max_keys) keys on the socket (per-second lines: $(field "$k" max_keys))" \
        "$(jget "$l" max_keys)" -le 3 -a "$(field "$k" max_keys)" -le 3
    expect "$role-old-keys-removed" "$role: of $(field "$k" replaced) replaced keys $(field "$k" removed) left the socket, $(field "$k" lingering) still there after ${LINGER_S}s (stream-peer: $(jget "$l" lingering) lingering, max ${LINGER_S}s limit)" \
        "$(field "$k" lingering)" = 0 -a "$(jget "$l" lingering)" = 0 -a "$(field "$k" replaced)" -ge "$ROLLOVERS"
done
expect_stream_octets "$bad_a" "$bad_b"

# MKTs: distinct fingerprints seen by the samples, most at once, keys collected.
mkts_a=$(awk '{ print $4 }' "$T/mkts.a" | sort -u | wc -l)
mkts_b=$(awk '{ print $4 }' "$T/mkts.b" | sort -u | wc -l)
max_at_once_a=$(awk '{ n[$1]++ } END { m = 0; for (t in n) if (n[t] > m) m = n[t]; print m }' "$T/mkts.a")
max_at_once_b=$(awk '{ n[$1]++ } END { m = 0; for (t in n) if (n[t] > m) m = n[t]; print m }' "$T/mkts.b")
keys_args=$(wc -l <"$T/keys.all")
keys_distinct=$(cut -d: -f3 "$T/keys.all" | sort -u | wc -l)
updates_a=$(grep -c "socket keys updated" "$T/a/aokd.log" || true)
updates_b=$(grep -c "socket keys updated" "$T/b/aokd.log" || true)
warn_a=$(grep -c " WARN \| ERROR " "$T/a/aokd.log" || true)
warn_b=$(grep -c " WARN \| ERROR " "$T/b/aokd.log" || true)
collisions_a=$(grep -c "simultaneous MKT rekey" "$T/a/aokd.log" || true)
collisions_b=$(grep -c "simultaneous MKT rekey" "$T/b/aokd.log" || true)
echo "E2E-RESULT case=mkts a_distinct=$mkts_a b_distinct=$mkts_b a_max_at_once=$max_at_once_a b_max_at_once=$max_at_once_b keys_distinct=$keys_distinct keys_args=$keys_args a_socket_updates=$updates_a b_socket_updates=$updates_b a_collisions=$collisions_a b_collisions=$collisions_b a_warn_lines=$warn_a b_warn_lines=$warn_b stream_ms=$stream_ms"
expect mkts-distinct "MKTs seen: a $mkts_a, b $mkts_b, keys collected $keys_distinct; want >= $((ROLLOVERS + 1))" \
    "$mkts_a" -ge $((ROLLOVERS + 1)) -a "$mkts_b" -ge $((ROLLOVERS + 1)) -a "$keys_distinct" -ge $((ROLLOVERS + 1))
expect mkts-collected "master keys collected for $keys_distinct MKTs, fingerprints seen for $mkts_a" "$keys_distinct" -ge "$mkts_a"

# ---------------------------------------------------------------------------------
# The capture, verified with every collected key
# ---------------------------------------------------------------------------------
verify_stream "$T/stream.pcap"

stop_pair
echo "E2E-RESULT case=memory $(awk '$1 == "MemTotal:" || $1 == "MemAvailable:" { printf "%s=%s ", $1, $2 }' /proc/meminfo | tr -d ':')"

if [ "$fails" != 0 ]; then
    stream_failure_dump "$T/stream.pcap"
    echo "----- aoctl verify -----"
    cat "$T/verify.json" "$T/verify.err"
    for role in client server; do
        echo "----- $role: per-second samples -----"
        grep '"event":"sample"' "$T/$role.out" || true
    done
fi
e2e_done
