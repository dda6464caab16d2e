#!/bin/sh
# Guest side of the BIRD-over-TCP-AO test (tests/tests/vm_bird.rs); runs inside the qemu
# VM (tests/vm/run.sh) as /opt/aokd/guest.sh with dash, on a kernel with TCP-AO.
#
# The same BGP session as the host test (tests/tests/bird.rs), over TCP-AO: two network
# namespaces a (10.202.0.1, AS 65001) and b (10.202.0.2, AS 65002) joined by a veth
# pair, an aokd in each (backend tcp-ao, TCP port 179, a initiates, mkt_rekey 8 s,
# mkt_lifetime 16 s: a rollover about every 7.6 s), and Debian's BIRD 2 in each, under
# the preload library (AOKD_PORTS=179), with no password in its configuration. Each
# BIRD announces a fixed /25 and FLAP_ROUTES /32s from a static protocol `flap` that
# the script disables and enables again with birdc, a and b in turn, once per second:
# withdrawals and announcements flow both ways all the time, besides the KEEPALIVEs
# (keepalive 1 s, hold 9 s).
# Meanwhile `aoctl --json sockets` is sampled twice per second in both namespaces
# (Current_key, RNext_key, pkt_good, pkt_bad, pkt_key_not_found of BIRD's sockets), and
# tcpdump captures b's veth from before the BIRDs start. The flow goes on until the
# session's socket in each namespace has seen ROLLOVERS changes of Current_key (at most
# MAX_S s), then SETTLE s more.
# Checks: both sessions Established (time from the BIRDs' start printed), still
# Established at the end with the same `since` as when they came up, and exactly one
# "State changed to up" and no other state change of the BGP protocol in BIRD's logs;
# ROLLOVERS rollovers on both sockets; pkt_bad and pkt_key_not_found 0 on every one of
# BIRD's sockets in every sample, TcpExtTCPAOBad 0 in both namespaces; the routes
# flowed (BIRD's import update and withdraw counters) and each side has the other's
# fixed route; `aoctl verify --from-daemon` of the capture (a's MKTs, retired ones
# included) verifies every segment: none unsigned, no bad MAC, no unknown KeyID; the
# session's KeyIDs changed ROLLOVERS times on the wire in each direction, and each
# KeyID carried some of BIRD's segments (at least 3) in each direction.
# Results: `E2E-RESULT case=NAME key=value ...`; checks: `E2E-CHECK NAME ok|FAIL: why`.
# Exit status 0 only if every check passed. Addresses exist only inside this VM.
set -eu

# shellcheck source=lib.sh
. /opt/aokd/lib.sh
T=/tmp/e2e
PORT=179
PSK=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
MKT_REKEY=${E2E_MKT_REKEY:-8}
MKT_LIFETIME=${E2E_MKT_LIFETIME:-16}
A_IP=10.202.0.1
B_IP=10.202.0.2
ROLLOVERS=${E2E_ROLLOVERS:-6}
SETTLE=${E2E_SETTLE:-3}
MAX_S=${E2E_MAX_S:-120}
FLAP_ROUTES=${E2E_FLAP_ROUTES:-20}
PRELOAD=/opt/aokd/lib/libaokd_preload.so
export TERM=dumb

# ---------------------------------------------------------------------------------
# BIRD
# ---------------------------------------------------------------------------------

# write_bird NS LOCAL NEIGHBOR LOCAL_AS NEIGHBOR_AS PROTOCOL FIXED FLAP_PREFIX:
# $T/NS/bird.conf: the fixed route FIXED and FLAP_ROUTES /32s FLAP_PREFIX.128... in the
# static protocol `flap`, one BGP session PROTOCOL, no password.
write_bird() {
    {
        echo "log \"$T/$1/bird.log\" all;"
        echo "router id $2;"
        echo "timeformat protocol iso long;"
        echo "protocol device { }"
        echo "protocol static fixed { ipv4; route $7 blackhole; }"
        printf 'protocol static flap { ipv4;'
        i=0
        while [ "$i" -lt "$FLAP_ROUTES" ]; do
            printf ' route %s.%d/32 blackhole;' "$8" $((128 + i))
            i=$((i + 1))
        done
        echo ' }'
        cat <<EOF
protocol bgp $6 {
  debug { states, events };
  local $2 as $4;
  neighbor $3 as $5;
  ipv4 { import all; export all; };
  connect delay time 1;
  connect retry time 3;
  error wait time 1, 5;
  hold time 9;
  keepalive time 1;
}
EOF
    } >"$T/$1/bird.conf"
}

birdc_ns() { # NS ARGS...: birdc on NS's BIRD
    ns=$1
    shift
    birdc -s "$T/$ns/bird.ctl" "$@"
}

# start_bird NS: BIRD in NS under the preload library (its stderr, with the library's
# debug lines, in $T/bird-NS.err); waits until birdc gets an answer.
start_bird() {
    ip netns exec "$1" env LD_PRELOAD="$PRELOAD" AOKD_ATTACH_SOCKET="$T/$1/attach.sock" \
        AOKD_PORTS="$PORT" AOKD_WAIT_MS=1000 AOKD_PRELOAD_DEBUG=1 \
        bird -f -c "$T/$1/bird.conf" -s "$T/$1/bird.ctl" -P "$T/$1/bird.pid" \
        >"$T/bird-$1.out" 2>"$T/bird-$1.err" &
    eval "bird_$1=\$!"
    wait_until "BIRD in $1 answering birdc" 30 sh -c "birdc -s '$T/$1/bird.ctl' show status | grep -q '^Router ID'"
}

# bgp_line NS PROTOCOL: PROTOCOL's line of `birdc show protocols` as
# "STATE SINCE_DATE SINCE_TIME INFO" (e.g. "up 2026-12-02 05:42:54 Established").
bgp_line() {
    birdc_ns "$1" show protocols "$2" 2>/dev/null | awk -v p="$2" '$1 == p { print $4, $5, $6, $7 }'
}

established() { # NS PROTOCOL
    case "$(bgp_line "$1" "$2")" in
    up\ *Established) return 0 ;;
    *) return 1 ;;
    esac
}

# route_stat NS PROTOCOL WHAT: the "received" column of the channel's "Import WHAT:"
# line (updates, withdraws) in `birdc show protocols all`.
route_stat() {
    v=$(birdc_ns "$1" show protocols all "$2" 2>/dev/null | awk -v w="$3:" '$1 == "Import" && $2 == w { print $3; exit }')
    echo "${v:-0}"
}

# ---------------------------------------------------------------------------------
# Sampling BIRD's sockets
# ---------------------------------------------------------------------------------

# `aoctl --json sockets` (pretty JSON) to one record per socket:
#   T NS PID FD ROLE STATE CURRENT RNEXT PKT_GOOD PKT_BAD PKT_KEY_NOT_FOUND
# shellcheck disable=SC2016 # an awk program
SOCK_AWK='
{ line = $0; gsub(/[ ",]/, "", line); i = index(line, ":"); k = substr(line, 1, i - 1); v = substr(line, i + 1) }
k == "pid" { pid = v } k == "fd" { fd = v } k == "role" { role = v } k == "state" { state = v }
k == "current_key" { cur = v } k == "rnext_key" { rn = v }
k == "pkt_good" { good = v } k == "pkt_bad" { bad = v } k == "pkt_key_not_found" { knf = v }
/^ *}/ && pid != "" { print t, ns, pid, fd, role, state, (cur == "" ? "null" : cur), (rn == "" ? "null" : rn), good, bad, knf; pid = ""; cur = ""; rn = ""; knf = "" }
'

# The records of one namespace's samples summed up: "sockets=N sessions=S
# rollovers=R max_pkt_bad=B max_key_not_found=K pkt_good=G guarded=U": a session is a
# socket that is not a listener; R is the most Current_key changes one session saw; G
# the last pkt_good of that session.
# shellcheck disable=SC2016 # an awk program
ROLL_AWK='
{
    key = $3 ":" $4
    if (!(key in seen)) { seen[key] = 1; ns++; if ($5 != "listen") ss++ }
    if ($6 == "guarded") gu++
    if ($10 + 0 > mb) mb = $10 + 0
    if ($11 + 0 > mk) mk = $11 + 0
    if ($5 != "listen") {
        if ($7 != "null" && (key in prev) && prev[key] != $7) n[key]++
        if ($7 != "null") prev[key] = $7
        if (!(key in n)) n[key] = 0
        good[key] = $9
    }
}
END {
    r = 0; g = 0
    for (k in n) if (n[k] > r || (n[k] == r && good[k] + 0 > g)) { r = n[k]; g = good[k] + 0 }
    printf "sockets=%d sessions=%d rollovers=%d max_pkt_bad=%d max_key_not_found=%d pkt_good=%d guarded_samples=%d\n", ns, ss, r, mb, mk, g, gu
}'

sampler_pid=""
sample_start() {
    : >"$T/socks.a"
    : >"$T/socks.b"
    : >"$T/sampling"
    (
        while [ -e "$T/sampling" ]; do
            t=$(unix_ms)
            for ns in a b; do
                if aoctl_ns "$ns" sockets >"$T/socks-sample.$ns" 2>/dev/null; then
                    awk -v t="$t" -v ns="$ns" "$SOCK_AWK" "$T/socks-sample.$ns" >>"$T/socks.$ns"
                fi
            done
            sleep 0.5
        done
    ) &
    sampler_pid=$!
}

sample_stop() {
    rm -f "$T/sampling"
    wait_exit "$sampler_pid" 30
}

rollovers_of() { # NS: the most Current_key changes a session socket of NS saw so far
    field "$(awk "$ROLL_AWK" "$T/socks.$1")" rollovers
}

# ---------------------------------------------------------------------------------
# The flow of routes: `flap` disabled and enabled again, a and b in turn
# ---------------------------------------------------------------------------------
flapper_pid=""
flap_start() {
    : >"$T/flapping"
    : >"$T/flaps"
    (
        while [ -e "$T/flapping" ]; do
            for ns in a b; do
                for op in disable enable; do
                    if birdc_ns "$ns" "$op" flap | grep -q "flap: ${op}d"; then
                        echo "$ns $op" >>"$T/flaps"
                    fi
                    sleep 0.5
                done
            done
        done
    ) &
    flapper_pid=$!
}

flap_stop() {
    rm -f "$T/flapping"
    wait_exit "$flapper_pid" 30
    # flap ends enabled on both sides (the loop ends after a full round)
}

# ---------------------------------------------------------------------------------
# Setup: link, aokds with an MKT each, capture, BIRDs
# ---------------------------------------------------------------------------------
script_start=$(now_ms)
rm -rf "$T"
mkdir -p "$T/a" "$T/b"
[ -f "$PRELOAD" ] || fatal "no preload library at $PRELOAD"
command -v bird >/dev/null || fatal "no bird in the image"
command -v birdc >/dev/null || fatal "no birdc in the image"
setup_link "$A_IP" "$B_IP"
t_setup=$(now_ms)
start_pair "$A_IP" "$B_IP"
echo "E2E-RESULT case=setup mkt_rekey_s=$MKT_REKEY mkt_lifetime_s=$MKT_LIFETIME rollovers=$ROLLOVERS flap_routes=$FLAP_ROUTES a_mkts=$(mkt_count a) b_mkts=$(mkt_count b) elapsed_ms=$(($(now_ms) - t_setup))"

start_tcpdump "$T/bird.pcap"
bad_a0=$(ns_counter a TCPAOBad)
bad_b0=$(ns_counter b TCPAOBad)

write_bird a "$A_IP" "$B_IP" 65001 65002 to_b 192.0.2.0/25 192.0.2
write_bird b "$B_IP" "$A_IP" 65002 65001 to_a 198.51.100.0/25 198.51.100
t_bird=$(now_ms)
start_bird a
start_bird b
echo "E2E-STEP BIRDs started at $(($(now_ms) - script_start)) ms"
wait_until "a's BIRD: to_b Established" 90 established a to_b
t_est_a=$(now_ms)
wait_until "b's BIRD: to_a Established" 30 established b to_a
t_est=$(now_ms)
since_a=$(bgp_line a to_b | awk '{ print $2 "_" $3 }')
since_b=$(bgp_line b to_a | awk '{ print $2 "_" $3 }')
wait_until "a's BIRD: b's fixed route" 30 sh -c "birdc -s '$T/a/bird.ctl' show route 198.51.100.0/25 | grep -q 'to_a\|to_b'"
wait_until "b's BIRD: a's fixed route" 30 sh -c "birdc -s '$T/b/bird.ctl' show route 192.0.2.0/25 | grep -q 'to_a\|to_b'"
echo "E2E-RESULT case=established a_ms=$((t_est_a - t_bird)) b_ms=$((t_est - t_bird)) since_a=$since_a since_b=$since_b"

# ---------------------------------------------------------------------------------
# Rollovers under the flow of routes
# ---------------------------------------------------------------------------------
sample_start
flap_start
t_flow=$(now_ms)
echo "E2E-STEP flowing routes until $ROLLOVERS rollovers on both sockets (at most $MAX_S s)"
end=$((t_flow + MAX_S * 1000))
while [ "$(now_ms)" -lt "$end" ]; do
    ra=$(rollovers_of a)
    rb=$(rollovers_of b)
    [ "${ra:-0}" -ge "$ROLLOVERS" ] && [ "${rb:-0}" -ge "$ROLLOVERS" ] && break
    established a to_b || break
    established b to_a || break
    sleep 1
done
sleep "$SETTLE"
flap_stop
# The routes settle: both flap protocols enabled, the peer's routes back.
wait_until "a's BIRD: b's flap routes back" 30 sh -c "birdc -s '$T/a/bird.ctl' show route 198.51.100.128/32 | grep -q 'to_a\|to_b'"
wait_until "b's BIRD: a's flap routes back" 30 sh -c "birdc -s '$T/b/bird.ctl' show route 192.0.2.128/32 | grep -q 'to_a\|to_b'"
sample_stop
flow_ms=$(($(now_ms) - t_flow))

# ---------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------
line_a=$(bgp_line a to_b)
line_b=$(bgp_line b to_a)
since_a1=$(echo "$line_a" | awk '{ print $2 "_" $3 }')
since_b1=$(echo "$line_b" | awk '{ print $2 "_" $3 }')
ups_a=$(grep -c "to_b: State changed to up" "$T/a/bird.log" || true)
ups_b=$(grep -c "to_a: State changed to up" "$T/b/bird.log" || true)
changes_a=$(grep -c "to_b: State changed to" "$T/a/bird.log" || true)
changes_b=$(grep -c "to_a: State changed to" "$T/b/bird.log" || true)
# "State changed to start" then "up": two changes when the session came up once.
echo "E2E-RESULT case=session a_state=$(echo "$line_a" | awk '{ print $1 "/" $4 }') b_state=$(echo "$line_b" | awk '{ print $1 "/" $4 }') since_a=$since_a1 since_b=$since_b1 a_ups=$ups_a b_ups=$ups_b a_state_changes=$changes_a b_state_changes=$changes_b flow_ms=$flow_ms"
expect a-established "a's to_b at the end: $line_a" "$(echo "$line_a" | awk '{ print $1 "/" $4 }')" = up/Established
expect b-established "b's to_a at the end: $line_b" "$(echo "$line_b" | awk '{ print $1 "/" $4 }')" = up/Established
expect a-no-flap "a's to_b up since $since_a1, was $since_a; $ups_a ups, $changes_a state changes in the log" \
    "$since_a1" = "$since_a" -a "$ups_a" = 1 -a "$changes_a" = 2
expect b-no-flap "b's to_a up since $since_b1, was $since_b; $ups_b ups, $changes_b state changes in the log" \
    "$since_b1" = "$since_b" -a "$ups_b" = 1 -a "$changes_b" = 2

flaps=$(wc -l <"$T/flaps")
upd_a=$(route_stat a to_b updates)
wd_a=$(route_stat a to_b withdraws)
upd_b=$(route_stat b to_a updates)
wd_b=$(route_stat b to_a withdraws)
echo "E2E-RESULT case=routes flaps=$flaps flap_routes=$FLAP_ROUTES a_updates_received=$upd_a a_withdraws_received=$wd_a b_updates_received=$upd_b b_withdraws_received=$wd_b"
# Each disable withdraws FLAP_ROUTES routes, each enable announces them again: every
# second flap of the peer is a withdrawal round.
want=$((FLAP_ROUTES * ROLLOVERS))
expect routes-flowed "updates/withdraws received: a $upd_a/$wd_a, b $upd_b/$wd_b after $flaps flaps; want >= $want each" \
    "$upd_a" -ge "$want" -a "$wd_a" -ge "$want" -a "$upd_b" -ge "$want" -a "$wd_b" -ge "$want"

for ns in a b; do
    s=$(awk "$ROLL_AWK" "$T/socks.$ns")
    echo "E2E-RESULT case=sockets-$ns samples=$(wc -l <"$T/socks.$ns") $s"
    expect "$ns-rollovers" "$ns: $s; want >= $ROLLOVERS rollovers" "$(field "$s" rollovers)" -ge "$ROLLOVERS"
    expect "$ns-pkt-bad-zero" "$ns: $s" "$(field "$s" max_pkt_bad)" = 0 -a "$(field "$s" max_key_not_found)" = 0
    expect "$ns-pkt-good" "$ns: $s" "$(field "$s" pkt_good)" -gt 0
    expect "$ns-never-guarded" "$ns: $s" "$(field "$s" guarded_samples)" = 0
done
bad_a=$(($(ns_counter a TCPAOBad) - bad_a0))
bad_b=$(($(ns_counter b TCPAOBad) - bad_b0))
expect ns-ao-bad "TcpExtTCPAOBad: a +$bad_a, b +$bad_b" "$bad_a" = 0 -a "$bad_b" = 0

# The capture, verified with a's MKTs (live and retired), and the session's KeyIDs.
stop_tcpdump "$T/bird.pcap"
verify_status=0
aoctl verify --pcap "$T/bird.pcap" --json --from-daemon --socket "$T/a/control.sock" \
    >"$T/verify.json" 2>"$T/verify.err" || verify_status=$?
v_conn=$(vtotal "$T/verify.json" connections)
v_seg=$(vtotal "$T/verify.json" segments)
v_ver=$(vtotal "$T/verify.json" verified)
v_uns=$(vtotal "$T/verify.json" unsigned)
v_bad=$(vtotal "$T/verify.json" bad_mac)
v_unk=$(vtotal "$T/verify.json" unknown_key_id)
# Per direction of the busiest connection (the session): how often the KeyID changed,
# and the fewest segments sent with one KeyID (BIRD's traffic under every key). The
# KeyID in use when the capture stops is left out of that minimum when there were
# others: a rollover can begin just before the capture ends, and its key has then
# had no time to carry traffic (seen: one segment with it, then the end).
wire=$(ao_segments "$T/bird.pcap" | awk '
    function close_run(f) { if (!(f in mn) || run[f] < mn[f]) mn[f] = run[f] }
    {
        f = $2 ">" $3; c[f]++
        if ($4 != "-") {
            if ((f in k) && k[f] != $4) { ch[f]++; close_run(f); run[f] = 0 }
            k[f] = $4; run[f]++
        }
    }
    END {
        for (f in run) if (!(f in mn)) close_run(f)
        best = ""; for (f in c) if (best == "" || c[f] > c[best]) best = f
        split(best, p, ">"); back = p[2] ">" p[1]
        printf "session=%s segments=%d keyid_changes=%d min_segments_per_key=%d reverse_segments=%d reverse_keyid_changes=%d reverse_min_segments_per_key=%d\n", best, c[best], ch[best] + 0, mn[best] + 0, c[back] + 0, ch[back] + 0, mn[back] + 0
    }')
echo "E2E-RESULT case=verify status=$verify_status connections=${v_conn:-0} segments=${v_seg:-0} verified=${v_ver:-0} unsigned=${v_uns:-0} bad_mac=${v_bad:-0} unknown_key_id=${v_unk:-0} pcap_bytes=$(wc -c <"$T/bird.pcap")"
echo "E2E-RESULT case=wire $wire"
expect verify-status "aoctl verify exited $verify_status: $(head -c 2000 "$T/verify.err")" "$verify_status" = 0
expect verify-all-segments "verified ${v_ver:-0} of ${v_seg:-0} segments" "${v_seg:-0}" -gt 0 -a "${v_ver:-0}" = "${v_seg:-0}"
expect verify-no-unsigned "${v_uns:-?} unsigned segments" "${v_uns:-1}" = 0
expect verify-no-bad "${v_bad:-?} bad MACs, ${v_unk:-?} unknown KeyIDs" "${v_bad:-1}" = 0 -a "${v_unk:-1}" = 0
expect wire-rollovers "on the wire: $wire; want >= $ROLLOVERS KeyID changes each way" \
    "$(field "$wire" keyid_changes)" -ge "$ROLLOVERS" -a "$(field "$wire" reverse_keyid_changes)" -ge "$ROLLOVERS"
expect wire-traffic-every-key "on the wire: $wire; want >= 3 segments with every KeyID each way" \
    "$(field "$wire" min_segments_per_key)" -ge 3 -a "$(field "$wire" reverse_min_segments_per_key)" -ge 3

preload_lines=$(cat "$T/bird-a.err" "$T/bird-b.err" | grep -c "aokd-preload" || true)
echo "E2E-RESULT case=preload debug_lines=$preload_lines installed=$(cat "$T/bird-a.err" "$T/bird-b.err" | grep -c "aokd installed" || true) guard=$(cat "$T/bird-a.err" "$T/bird-b.err" | grep -c "guard" || true)"

# shellcheck disable=SC2154 # set by start_bird through eval
stop "$bird_a"
# shellcheck disable=SC2154
stop "$bird_b"
stop "$aokd_a"
stop "$aokd_b"

if [ "$fails" != 0 ]; then
    dump_logs
    for ns in a b; do
        echo "----- $T/$ns/bird.log (last 80 lines) -----"
        tail -n 80 "$T/$ns/bird.log"
        echo "----- $ns: socket samples (last 20) -----"
        tail -n 20 "$T/socks.$ns"
    done
    echo "----- the capture: per sender, runs of segments with the same KeyID and RNextKeyID -----"
    keyid_runs "$T/bird.pcap"
    echo "----- aoctl verify -----"
    cat "$T/verify.json" "$T/verify.err"
fi
echo "E2E-DONE failures=$fails elapsed_ms=$(($(now_ms) - script_start))"
[ "$fails" = 0 ]
