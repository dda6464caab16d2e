#!/bin/sh
# Guest side of the MKT expiry test (tests/tests/vm_expiry.rs); runs inside the qemu VM
# (tests/vm/run.sh) as /opt/aokd/guest.sh with dash, on a kernel with TCP-AO.
#
# Two network namespaces a (10.203.0.1) and b (10.203.0.2) joined by a veth pair, an
# aokd in each (backend tcp-ao, TCP port 179, a initiates, state_dir per namespace)
# with short MKT lifetimes (mkt_rekey 8 s, mkt_lifetime 16 s). One stream-peer
# connection (client in a, server in b, attach API) carries data both ways; tcpdump
# captures b's veth; `aoctl mkts` and `aoctl sockets` of both are sampled once per
# second and the master key of every MKT is collected every 200 ms.
#
#   1. after WARMUP_S of streaming, b's aokd is killed (SIGKILL) and kept down until
#      the newest MKT's hard lifetime (the largest expires_at of a's and b's `aoctl
#      mkts` at the kill) plus MARGIN_S;
#   2. b's aokd is started again with the same configuration and state_dir;
#   3. the script waits for a new MKT in both (a fingerprint never seen before) and
#      for the data to flow again: either the same connection resumes (TCP
#      retransmits) or, if the original connection died, a new stream-peer pair is
#      run over the new MKT;
#   4. the client is told to stop (--stop-file) AFTER_S seconds after the data
#      resumed.
#
# Results (checked here and by the Rust test):
#   expiry   (a) after the hard deadline of each MKT a had at the kill, no segment from
#            a carries its SendID (counted after expires_at and after expires_at +
#            GRACE_MS: expires_at is whole seconds, rounded down from the daemon's
#            monotonic deadline, so the real deadline is up to 2 s later), until a
#            new MKT takes the same KeyID again (KeyIDs are free once expired);
#   unsigned (b) no segment without TCP-AO between the endpoints, anywhere in the capture;
#   guard    (c) a's socket is `guarded` in `aoctl sockets` after the deadline, and while
#            b's aokd is down a's TCP_AO_INFO pkt_good does not move although b's kernel
#            retransmits with the expired key (those are counted by pkt_key_not_found
#            or pkt_bad instead);
#   b-old    b's segments signed with an expired key: before b's aokd restarted
#            (unavoidable: b's kernel still holds the key), during its start, and after
#            it answered on its control socket (it restores and reconciles its sockets
#            before that): the last must be 0;
#   new-mkt  (d) a new MKT in both, new fingerprint, new KeyIDs, mirrored, with no
#            operator command; the time it took;
#   resume   (d) data flows again under that MKT (segments of both ends with its KeyIDs
#            after it appeared), and how (mode=resumed|reconnected,
#            original_survived=true|false);
#   verify   `aoctl verify` of the whole capture with every collected key: no bad MAC,
#            nothing unsigned; the only unknown KeyIDs are the guards' (240-255).
# Every result is one line `E2E-RESULT case=NAME key=value ...`, every check one line
# `E2E-CHECK NAME ok` or `E2E-CHECK NAME FAIL: why`. Exit status 0 only if every check
# passed. Addresses: 10.203.0.0/24 exists only inside the namespaces of this VM.
set -eu

# shellcheck source=lib.sh
. /opt/aokd/lib.sh
stream_defaults
A_IP=10.203.0.1
B_IP=10.203.0.2
WARMUP_S=${E2E_WARMUP_S:-12}
MARGIN_S=${E2E_MARGIN_S:-10}
GRACE_MS=${E2E_GRACE_MS:-2000}
NEW_MKT_S=${E2E_NEW_MKT_S:-30}
RESUME_S=${E2E_RESUME_S:-180}
AFTER_S=${E2E_AFTER_S:-10}
# stream-peer tolerates a stall this long (TCP's retransmission backoff after a
# stall of ~30 s can be another ~50 s).
IO_TIMEOUT=${E2E_IO_TIMEOUT:-600}

# ---------------------------------------------------------------------------------
# Helpers of this script
# ---------------------------------------------------------------------------------

# The sample lines of stream-peer output $1 as a table:
#   UNIX_MS PKT_GOOD PKT_BAD PKT_KEY_NOT_FOUND BYTES_IN (null values as -)
sample_table() {
    awk '/"event":"sample"/ {
        n = split("unix_ms pkt_good pkt_bad pkt_key_not_found bytes_in", f, " "); out = ""
        for (i = 1; i <= n; i++) {
            v = "-"
            if (match($0, "\"" f[i] "\":[0-9]+")) v = substr($0, RSTART + length(f[i]) + 3, RLENGTH - length(f[i]) - 3)
            out = out (i > 1 ? " " : "") v
        }
        print out
    }' "$1"
}

# sample_at TABLE T_MS COL: column COL (2 good, 3 bad, 4 key_not_found, 5 bytes_in) of
# the last sample at or before T_MS ("-" if none).
sample_at() {
    awk -v t="$2" -v c="$3" '$1 <= t { v = $c } END { print (v == "" ? "-" : v) }' "$1"
}

# sample_after TABLE T_MS COL: the same for the first sample at or after T_MS.
sample_after() {
    awk -v t="$2" -v c="$3" '$1 >= t { print $c; found = 1; exit } END { if (!found) print "-" }' "$1"
}

# delta A B: B - A, or "-" when either is not a number.
delta() {
    case "$1$2" in
    *[!0-9]* | "") echo - ;;
    *) echo $(($2 - $1)) ;;
    esac
}

# seg_count SRC_IP KEYID FROM_MS TO_MS: segments of the capture's table from SRC_IP
# with that KeyID ("guard": 240-255, "-": no TCP-AO option) with FROM_MS < t <= TO_MS.
seg_count() {
    awk -v src="$1." -v k="$2" -v from="$3" -v to="$4" '
        index($2, src) == 1 {
            t = $1 * 1000; if (t <= from || t > to) next
            if (k == "guard") { if ($4 != "-" && $4 + 0 >= 240) n++ }
            else if ($4 == k) n++
        }
        END { print n + 0 }' "$T/segments.txt"
}

# seg_new SRC_IP FROM_MS TO_MS: segments from SRC_IP with FROM_MS < t <= TO_MS signed
# with a KeyID that is neither in $T/old-keyids nor a guard's.
seg_new() {
    awk -v src="$1." -v from="$2" -v to="$3" '
        NR == FNR { old[$1] = 1; next }
        index($2, src) == 1 {
            t = $1 * 1000; if (t <= from || t > to) next
            if ($4 != "-" && $4 + 0 < 240 && !($4 in old)) n++
        }
        END { print n + 0 }' "$T/old-keyids" "$T/segments.txt"
}

# log_ms LOG PATTERN: the time (Unix ms) of the first line of LOG ("-": standard input; the
# VM has no /dev/stdin) matching PATTERN
# (the RFC 3339 UTC timestamp aokd's log lines start with), or "-".
log_ms() {
    ts=$(grep -m 1 -e "$2" "$1" | cut -d' ' -f1)
    case "$ts" in
    ????-??-??T??:??:??.???*Z)
        s=$(date -u -d "$(echo "$ts" | cut -c1-10) $(echo "$ts" | cut -c12-19)" +%s)
        ms=$(echo "$ts" | cut -c21-23 | sed 's/^0*//;s/^$/0/')
        echo $((s * 1000 + ms))
        ;;
    *) echo - ;;
    esac
}

# keyid_reused_ms LOG SEND_ID AFTER_MS: when (Unix ms) the aokd of LOG first
# negotiated an MKT with SendID SEND_ID after AFTER_MS (a KeyID is free again once its
# MKT has expired), or nothing.
keyid_reused_ms() {
    grep -e "MKT negotiated .* send_id=$2 " "$1" | while IFS= read -r line; do
        t=$(printf '%s\n' "$line" | log_ms - .)
        if [ "$t" != - ] && [ "$t" -gt "$3" ]; then
            echo "$t"
            break
        fi
    done
}

# keyid_free_until LOG SEND_ID TO_MS: TO_MS, or earlier the time LOG's aokd took
# SEND_ID again after the kill (keyid_reused_ms): segments with that KeyID from then on
# belong to the new MKT.
keyid_free_until() {
    reused=$(keyid_reused_ms "$1" "$2" "$t_kill")
    if [ -n "$reused" ] && [ "$reused" -lt "$3" ]; then echo "$reused"; else echo "$3"; fi
}

# seg_last SRC_IP KEYID FROM_MS TO_MS: the time (Unix ms) of the last such segment,
# or "-".
seg_last() {
    awk -v src="$1." -v k="$2" -v from="$3" -v to="$4" '
        index($2, src) == 1 {
            t = $1 * 1000; if (t <= from || t > to) next
            if (k == "guard") { if ($4 != "-" && $4 + 0 >= 240) last = t }
            else if ($4 == k) last = t
        }
        END { if (last == "") print "-"; else printf "%.0f\n", last }' "$T/segments.txt"
}

# seg_first: as seg_last, the first one.
seg_first() {
    awk -v src="$1." -v k="$2" -v from="$3" -v to="$4" '
        index($2, src) == 1 {
            t = $1 * 1000; if (t <= from || t > to) next
            if ((k == "guard" && $4 != "-" && $4 + 0 >= 240) || (k != "guard" && $4 == k)) { printf "%.0f\n", t; found = 1; exit }
        }
        END { if (!found) print "-" }' "$T/segments.txt"
}

# The MKTs of NS now (MKTS_AWK records, t = now) into FILE; live ones only.
mkts_now() {
    aoctl_ns "$1" mkts 2>/dev/null | awk -v t="$(unix_ms)" "$MKTS_AWK" | awk '$5 !~ /^restored/' >"$2" || true
}

# new_mkt NS: true when NS has a live MKT whose fingerprint is not in $T/old-fps;
# its record (MKTS_AWK) in $T/new.NS.
new_mkt() {
    mkts_now "$1" "$T/now.$1"
    awk 'NR == FNR { old[$1] = 1; next } !($4 in old)' "$T/old-fps" "$T/now.$1" | tail -n 1 >"$T/new.$1"
    [ -s "$T/new.$1" ]
}

# client_bytes: bytes_in of the client's last sample line.
client_bytes() {
    v=$(grep '"event":"sample"' "$T/client.out" | tail -n 1 | sed -n 's/.*"bytes_in":\([0-9]*\).*/\1/p')
    echo "${v:-0}"
}

# ---------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------
stream_setup margin_s="$MARGIN_S" grace_ms="$GRACE_MS"

observe_start 1200
start_tcpdump "$T/stream.pcap"

# ---------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------
stream_opts="--interval-ms $INTERVAL_MS --chunk $CHUNK --io-timeout $IO_TIMEOUT --linger-limit 3600"
# shellcheck disable=SC2086 # a word list
start_stream_server server $stream_opts
server_pid=$srv
# shellcheck disable=SC2086
ip netns exec a stream-peer client --connect "$B_IP:$PORT" --attach "$T/a/attach.sock" \
    --seconds 1200 --stop-file "$T/stop" $stream_opts >"$T/client.out" 2>"$T/client.err" &
client_pid=$!
wait_until "the client to connect" 30 grep -q '"event":"connected"' "$T/client.out"
echo "E2E-STEP streaming for $WARMUP_S s before b's aokd is killed"
sleep "$WARMUP_S"
kill -0 "$client_pid" 2>/dev/null || fatal "the client ended during the warm-up: $(tail -n 3 "$T/client.out")"

# ---------------------------------------------------------------------------------
# b's aokd killed, kept down past the newest MKT's hard lifetime
# ---------------------------------------------------------------------------------
aoctl_ns b mkts | awk -v t="$(unix_ms)" "$MKTS_AWK" >"$T/old.b"
# shellcheck disable=SC2154 # set by start_aokd through eval
kill -KILL "$aokd_b"
t_kill=$(unix_ms)
wait_exit "$aokd_b" 10
# a's MKTs after the kill: with b gone no rekey can complete any more, so
# these are the MKTs whose deadlines the checks below use (read before the
# kill, a rekey finishing in between made the deadline that of an older MKT).
aoctl_ns a mkts | awk -v t="$(unix_ms)" "$MKTS_AWK" >"$T/old.a"
echo "----- killed (SIGKILL) at $t_kill -----" >>"$T/b/aokd.log"
# Every fingerprint seen so far: a new MKT is one with another fingerprint.
cat "$T/mkts.a" "$T/mkts.b" "$T/old.a" "$T/old.b" | awk '{ print $4 }' | sort -u >"$T/old-fps"
cat "$T/old.a" "$T/old.b" | awk '{ print $2; print $3 }' | sort -un >"$T/old-keyids"
deadline_a=$(awk '$6 > m { m = $6 } END { print m + 0 }' "$T/old.a")
deadline_b=$(awk '$6 > m { m = $6 } END { print m + 0 }' "$T/old.b")
deadline=$deadline_a
[ "$deadline_b" -gt "$deadline" ] && deadline=$deadline_b
down_until=$(((deadline + MARGIN_S) * 1000))
echo "E2E-RESULT case=kill t_kill_ms=$t_kill a_mkts=$(wc -l <"$T/old.a") b_mkts=$(wc -l <"$T/old.b") a_deadline=$deadline_a b_deadline=$deadline_b down_until_ms=$down_until a_keyids=$(awk '{ printf "%s%s/%s", (NR > 1 ? "," : ""), $2, $3 }' "$T/old.a") client_bytes_in=$(client_bytes)"
echo "E2E-STEP b's aokd down until $down_until (deadline $deadline + ${MARGIN_S}s)"
while [ "$(unix_ms)" -lt "$down_until" ]; do
    sleep 0.5
done

# ---------------------------------------------------------------------------------
# b's aokd back, same configuration and state_dir
# ---------------------------------------------------------------------------------
echo "----- restarted -----" >>"$T/b/aokd.log"
t_restart=$(unix_ms)
start_aokd b
t_ready=$(unix_ms)
aoctl_ns b sockets >"$T/b-sockets-restart.json" 2>&1 || true
b_restored=$(awk -v ns=b "$SOCKETS_AWK" "$T/b-sockets-restart.json" | awk -v p="$server_pid" '$2 == p && $4 == "accepted"' | wc -l)
b_restored_state=$(awk -v ns=b "$SOCKETS_AWK" "$T/b-sockets-restart.json" | awk -v p="$server_pid" '$2 == p && $4 == "accepted" { print $5 }' | head -n 1)
restored_line=$(sed -n '/----- restarted -----/,$p' "$T/b/aokd.log" | grep "state restored" | head -n 1 || true)
echo "E2E-RESULT case=restart t_restart_ms=$t_restart t_ready_ms=$t_ready start_ms=$((t_ready - t_restart)) down_ms=$((t_restart - t_kill)) b_socket_restored=$b_restored b_socket_state=${b_restored_state:-none} log_sockets=$(field "$(echo "$restored_line" | tr -d '"')" sockets) log_mkts_expired=$(field "$(echo "$restored_line" | tr -d '"')" mkts_expired)"

# A new MKT, with no operator command.
end=$(($(now_ms) + NEW_MKT_S * 1000))
t_new_a="" t_new_b=""
while [ -z "$t_new_a" ] || [ -z "$t_new_b" ]; do
    [ -z "$t_new_a" ] && new_mkt a && t_new_a=$(unix_ms)
    [ -z "$t_new_b" ] && new_mkt b && t_new_b=$(unix_ms)
    [ "$(now_ms)" -lt "$end" ] || break
    sleep 0.5
done
new_a=$(cat "$T/new.a" 2>/dev/null || true)
new_b=$(cat "$T/new.b" 2>/dev/null || true)
# shellcheck disable=SC2086 # split the record
set -- ${new_a:-x - - - - -}
na_send=$2 na_recv=$3 na_fp=$4
# shellcheck disable=SC2086
set -- ${new_b:-x - - - - -}
nb_send=$2 nb_recv=$3 nb_fp=$4
keyids_new=1
for id in $na_send $na_recv; do
    grep -qx "$id" "$T/old-keyids" && keyids_new=0
done
echo "E2E-RESULT case=new-mkt found_a=$([ -n "$t_new_a" ] && echo 1 || echo 0) found_b=$([ -n "$t_new_b" ] && echo 1 || echo 0) a_after_ready_ms=$((${t_new_a:-0} - t_ready)) b_after_ready_ms=$((${t_new_b:-0} - t_ready)) a_send_id=$na_send a_recv_id=$na_recv b_send_id=$nb_send b_recv_id=$nb_recv a_fp=$na_fp b_fp=$nb_fp keyids_new=$keyids_new old_keyids=$(tr '\n' ',' <"$T/old-keyids" | sed 's/,$//')"
expect new-mkt "no new MKT within ${NEW_MKT_S}s after b's aokd restarted: a '$new_a', b '$new_b'" -n "$t_new_a" -a -n "$t_new_b"
expect new-mkt-same "a's new MKT $na_fp $na_send/$na_recv, b's $nb_fp $nb_send/$nb_recv" \
    "$na_fp" = "$nb_fp" -a "$na_send" = "$nb_recv" -a "$na_recv" = "$nb_send"
expect new-mkt-keyids "new KeyIDs $na_send/$na_recv, old ones $(tr '\n' ' ' <"$T/old-keyids")" "$keyids_new" = 1

# The data flows again: the same connection, or a new one.
[ -n "$t_new_a" ] || t_new_a=$(unix_ms)
bytes_stalled=$(client_bytes)
mode=none t_resume=""
end=$(($(now_ms) + RESUME_S * 1000))
while [ "$(now_ms)" -lt "$end" ]; do
    if ! kill -0 "$client_pid" 2>/dev/null; then
        mode=reconnect
        break
    fi
    if [ "$(client_bytes)" -gt "$bytes_stalled" ]; then
        mode=resumed
        t_resume=$(unix_ms)
        break
    fi
    sleep 0.2
done
if [ "$mode" = resumed ]; then
    sleep "$AFTER_S"
fi
: >"$T/stop"
wait_exit "$client_pid" 60
client_status=$exit_status
wait_exit "$server_pid" 30
server_status=$exit_status
stream_summaries
original_survived=false
[ "$mode" = resumed ] && [ "$(jget "$cline" disconnected)" = false ] && [ "$(jget "$cline" stalled)" = false ] &&
    original_survived=true
r_status=-
if [ "$mode" != resumed ]; then
    # The original connection is gone (or never resumed): a new one over the new MKT.
    mode=reconnected
    t_reconnect=$(unix_ms)
    start_stream_server server2 --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --io-timeout 20 --linger-limit 3600
    r_status=0
    ip netns exec a stream-peer client --connect "$B_IP:$PORT" --attach "$T/a/attach.sock" \
        --seconds "$AFTER_S" --interval-ms "$INTERVAL_MS" --chunk "$CHUNK" --io-timeout 20 --linger-limit 3600 \
        >"$T/client2.out" 2>"$T/client2.err" || r_status=$?
    wait_exit "$srv" 30
    c2=$(grep '"event":"summary"' "$T/client2.out" | tail -n 1 || true)
    echo "E2E-CLIENT2 $c2"
    [ "$r_status" = 0 ] && [ "$(jget "$c2" ok)" = true ] && t_resume=$t_reconnect
fi
t_end=$(unix_ms)
observe_stop
stop_tcpdump "$T/stream.pcap"

# ---------------------------------------------------------------------------------
# The capture
# ---------------------------------------------------------------------------------
ao_segments "$T/stream.pcap" >"$T/segments.txt"
sample_table "$T/client.out" >"$T/client.samples"
sample_table "$T/server.out" >"$T/server.samples"
segments=$(wc -l <"$T/segments.txt")

# (a) a's segments with an expired MKT's SendID after its deadline. If a new MKT
# reused a KeyID (the first one after the restart, or any later one), only the time
# before it appeared counts.
a_after=0 a_after_grace=0 a_last_rel=- b_before=0 b_during=0 b_after=0 b_last_rel=-
while read -r _t s r _fp _st ex; do
    to=$t_end
    [ "$s" = "$na_send" ] && to=$t_new_a
    to=$(keyid_free_until "$T/a/aokd.log" "$s" "$to")
    n=$(seg_count "$A_IP" "$s" $((ex * 1000)) "$to")
    a_after=$((a_after + n))
    a_after_grace=$((a_after_grace + $(seg_count "$A_IP" "$s" $((ex * 1000 + GRACE_MS)) "$to")))
    last=$(seg_last "$A_IP" "$s" 0 "$to")
    if [ "$last" != - ]; then
        rel=$((last - ex * 1000))
        if [ "$a_last_rel" = - ] || [ "$rel" -gt "$a_last_rel" ]; then a_last_rel=$rel; fi
    fi
    # b's segments with the same MKT (its SendID is a's RecvID) after a's deadline.
    to=$t_end
    [ "$r" = "$na_recv" ] && to=$t_new_a
    to=$(keyid_free_until "$T/b/aokd.log" "$r" "$to")
    b_before=$((b_before + $(seg_count "$B_IP" "$r" $((ex * 1000)) "$t_restart")))
    b_during=$((b_during + $(seg_count "$B_IP" "$r" "$t_restart" "$t_ready")))
    b_after=$((b_after + $(seg_count "$B_IP" "$r" "$t_ready" "$to")))
    last=$(seg_last "$B_IP" "$r" "$t_restart" "$to")
    if [ "$last" != - ]; then
        rel=$((last - t_ready))
        if [ "$b_last_rel" = - ] || [ "$rel" -gt "$b_last_rel" ]; then b_last_rel=$rel; fi
    fi
done <"$T/old.a"
a_guard=$(seg_count "$A_IP" guard 0 "$t_end")
a_guard_first=$(seg_first "$A_IP" guard 0 "$t_end")
b_guard=$(seg_count "$B_IP" guard 0 "$t_end")
a_guard_first_rel=-
[ "$a_guard_first" != - ] && a_guard_first_rel=$((a_guard_first - deadline_a * 1000))
# When a's aokd put the guard on (its log), relative to expires_at; a's last
# expired-KeyID segment relative to that.
t_guard_log=$(log_ms "$T/a/aokd.log" "guarded=true")
guard_log_rel=- a_last_rel_guard=-
[ "$t_guard_log" != - ] && guard_log_rel=$((t_guard_log - deadline_a * 1000))
[ "$t_guard_log" != - ] && [ "$a_last_rel" != - ] && a_last_rel_guard=$((a_last_rel + deadline_a * 1000 - t_guard_log))
echo "E2E-RESULT case=expiry deadline=$deadline_a a_old_after_deadline=$a_after a_old_after_grace=$a_after_grace a_old_last_rel_ms=$a_last_rel guard_log_rel_ms=$guard_log_rel a_old_last_rel_guard_ms=$a_last_rel_guard a_guard_segments=$a_guard a_guard_first_rel_ms=$a_guard_first_rel b_guard_segments=$b_guard segments=$segments"
expect expiry-a-old-keyid "a sent $a_after_grace segments with an expired MKT's KeyID more than ${GRACE_MS} ms after its expires_at ($a_after after it; the last $a_last_rel ms after)" \
    "$a_after_grace" = 0
expect expiry-a-guard-on-wire "a's segments with the guard's KeyID: $a_guard (first $a_guard_first_rel ms after the deadline)" "$a_guard" -gt 0

# (b) nothing unsigned.
unsigned=$(seg_count "$A_IP" - 0 "$t_end")
unsigned_b=$(seg_count "$B_IP" - 0 "$t_end")
echo "E2E-RESULT case=unsigned from_a=$unsigned from_b=$unsigned_b segments=$segments"
expect no-unsigned "unsigned segments: from a $unsigned, from b $unsigned_b" "$unsigned" = 0 -a "$unsigned_b" = 0

# (c) a's socket guarded after the deadline; b's expired-key segments not accepted.
w0=$((deadline_a * 1000 + GRACE_MS))
awk -v ns=a -v p="$client_pid" '$2 == "a" && $3 == p && $5 == "connect"' "$T/socks.a" >"$T/socks.a.client" || true
guarded=$(awk -v from="$w0" -v to="$t_restart" '$1 > from && $1 < to && $6 == "guarded"' "$T/socks.a.client" | wc -l)
keyed=$(awk -v from="$w0" -v to="$t_restart" '$1 > from && $1 < to && $6 != "guarded"' "$T/socks.a.client" | wc -l)
first_guarded=$(awk '$6 == "guarded" { print $1; exit }' "$T/socks.a.client")
first_guarded_rel=-
[ -n "$first_guarded" ] && first_guarded_rel=$((first_guarded - deadline_a * 1000))
# The counters of a's socket from its first sample after the guard went on (a's log;
# expires_at + GRACE_MS if not found) to its last sample before b's aokd restarted:
# meanwhile b's kernel can only retransmit under the expired key.
c0=$w0
[ "$t_guard_log" != - ] && c0=$t_guard_log
s0=$(sample_after "$T/client.samples" "$c0" 1)
s1=$(sample_at "$T/client.samples" "$t_restart" 1)
[ "$s0" != - ] || s0=$c0
[ "$s1" != - ] || s1=$t_restart
g0=$(sample_after "$T/client.samples" "$s0" 2)
g1=$(sample_at "$T/client.samples" "$s1" 2)
k0=$(sample_after "$T/client.samples" "$s0" 4)
k1=$(sample_at "$T/client.samples" "$s1" 4)
x0=$(sample_after "$T/client.samples" "$s0" 3)
x1=$(sample_at "$T/client.samples" "$s1" 3)
b_old_window=0
while read -r _t _s r _fp _st _ex; do
    b_old_window=$((b_old_window + $(seg_count "$B_IP" "$r" "$s0" "$s1")))
done <"$T/old.a"
good_delta=$(delta "$g0" "$g1")
knf_delta=$(delta "$k0" "$k1")
bad_delta=$(delta "$x0" "$x1")
refused_delta=-
[ "$knf_delta" != - ] && [ "$bad_delta" != - ] && refused_delta=$((knf_delta + bad_delta))
echo "E2E-RESULT case=guard a_guarded_samples=$guarded a_keyed_samples=$keyed a_first_guarded_rel_ms=$first_guarded_rel window_ms=$((s1 - s0)) b_old_in_window=$b_old_window a_pkt_good_delta=$good_delta a_refused_delta=$refused_delta a_key_not_found_delta=$knf_delta a_pkt_bad_delta=$bad_delta"
expect guard-a-socket "a's socket in aoctl sockets between the deadline (+${GRACE_MS} ms) and b's restart: $guarded samples guarded, $keyed not" \
    "$guarded" -gt 0 -a "$keyed" = 0
expect guard-a-refuses-old "while b's aokd was down after the deadline: b sent $b_old_window segments with the expired key; a's pkt_good +$good_delta, pkt_key_not_found+pkt_bad +$refused_delta" \
    "$good_delta" = 0 -a "$b_old_window" -gt 0 -a "$refused_delta" -gt 0

# b's expired-key segments: before its aokd restarted, during the start, after.
echo "E2E-RESULT case=b-old before_restart=$b_before during_start=$b_during after_ready=$b_after last_rel_ready_ms=$b_last_rel"
expect b-old-after-restart "b sent $b_after segments with an expired key after its aokd restarted and reconciled its sockets (last $b_last_rel ms after it answered)" "$b_after" = 0

# (d) the data flows again, under the new MKT.
# Under the new MKT or its successors (rekeys go on every 8 s meanwhile): any KeyID
# negotiated after the restart; `aoctl verify` below checks their MACs.
a_new=$(seg_new "$A_IP" "$t_new_a" "$t_end")
b_new=$(seg_new "$B_IP" "$t_new_a" "$t_end")
a_new_first=-
[ "$na_send" != - ] && a_new_first=$(seg_first "$A_IP" "$na_send" "$t_new_a" "$t_end")
b_bytes_end=$(jget "$sline" bytes_in)
echo "E2E-RESULT case=resume mode=$mode original_survived=$original_survived resume_after_ready_ms=$((${t_resume:-0} - t_ready)) resume_after_new_mkt_ms=$((${t_resume:-0} - t_new_a)) a_new_key_segments=$a_new b_new_key_segments=$b_new a_new_first_rel_ready_ms=$([ "$a_new_first" != - ] && echo $((a_new_first - t_ready)) || echo -) client_status=$client_status server_status=$server_status client_ok=$(jget "$cline" ok) disconnected=$(jget "$cline" disconnected) stalled=$(jget "$cline" stalled) client_bytes_in=$(jget "$cline" bytes_in) client_bytes_out=$(jget "$cline" bytes_out) server_bytes_in=${b_bytes_end:-0} server_bytes_out=$(jget "$sline" bytes_out) bytes_at_stall=$bytes_stalled max_gap_ms=$(jget "$cline" max_gap_ms) reconnect_status=$r_status"
expect resume "the data did not flow again (mode $mode): client $cline" -n "${t_resume:-}"
expect resume-new-key "segments under MKTs negotiated after the restart: from a $a_new, from b $b_new" "$a_new" -gt 0 -a "$b_new" -gt 0
if [ "$mode" = resumed ]; then
    expect resume-all-data "client wrote $(jget "$cline" bytes_out), server verified $(jget "$sline" bytes_in); server wrote $(jget "$sline" bytes_out), client verified $(jget "$cline" bytes_in)" \
        "$(jget "$cline" bytes_out)" = "$(jget "$sline" bytes_in)" -a "$(jget "$sline" bytes_out)" = "$(jget "$cline" bytes_in)" -a "$client_status" = 0 -a "$server_status" = 0
fi

# The whole capture, verified with every collected key.
verify_all "$T/stream.pcap" "$T/verify.json"
guards=$((a_guard + b_guard))
echo "E2E-RESULT case=verify status=$verify_status connections=${v_conn:-0} segments=${v_seg:-0} verified=${v_ver:-0} unsigned=${v_uns:-0} bad_mac=${v_bad:-0} unknown_key_id=${v_unk:-0} guard_segments=$guards no_isn=${v_noisn:-0} truncated=${v_trunc:-0} keys=$keys_args"
expect verify-no-bad "aoctl verify: ${v_bad:-?} bad MACs, ${v_uns:-?} unsigned" "${v_bad:-1}" = 0 -a "${v_uns:-1}" = 0
expect verify-unknown-are-guards "unknown KeyIDs ${v_unk:-?}, guard segments $guards" "${v_unk:--1}" = "$guards"
expect verify-rest-verified "verified ${v_ver:-0} + unknown ${v_unk:-0} of ${v_seg:-0}" "$((${v_ver:-0} + ${v_unk:-0}))" = "${v_seg:--1}"

stop_pair
if [ "$fails" != 0 ]; then
    stream_failure_dump "$T/stream.pcap"
    echo "----- a's MKTs at the kill (t send recv fp state expires_at) -----"
    cat "$T/old.a"
    echo "----- a's client socket in aoctl sockets (t ns pid fd role state good bad) -----"
    cat "$T/socks.a.client"
    echo "----- client samples (unix_ms good bad key_not_found bytes_in) -----"
    cat "$T/client.samples"
    echo "----- aoctl verify -----"
    cat "$T/verify.json" "$T/verify.err"
fi
e2e_done
