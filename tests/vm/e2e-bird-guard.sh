#!/bin/sh
# Guest side of the preload library's TCP-AO guard test (tests/tests/vm_bird_guard.rs);
# runs inside the qemu VM (tests/vm/run.sh) as /opt/aokd/guest.sh with dash, on a
# kernel with TCP-AO.
#
# Two network namespaces a (10.203.0.1, AS 65001) and b (10.203.0.2, AS 65002) joined
# by a veth pair. BIRD 2 in a, passive (it only listens), is started under the preload
# library with AOKD_GUARD=tcp-ao BEFORE any aokd exists:
#   1. its listen() succeeds and the library puts its own TCP-AO guard (KeyIDs from
#      248-255, docs/preload.md) on the listener for 0.0.0.0/0 ("guard" line of the
#      library on BIRD's stderr);
#   2. an unsigned connect from b (plain-tcp, no library) to a:179 fails, a answers
#      nothing, and a's TcpExtTCPAORequired rises (the kernel dropped the SYNs);
#   3. aokd in a starts (its peer b has no aokd yet, so no MKT): the library's thread
#      hands the listener over at its first try, aokd installs its own guard for b
#      (KeyIDs 240-247) while the library's is still on, then the library removes its
#      own; `aoctl sockets` lists BIRD's listener, guarded; a second unsigned connect
#      is dropped as well;
#   4. tcpdump starts on b's veth, aokd in b starts, both get an MKT, BIRD in b (under
#      the library, attached normally) connects: the session gets Established on both
#      sides and stays so for HOLD s of keepalives (1 s);
#   5. `aoctl verify --from-daemon` of the capture verifies every segment: none
#      unsigned, no bad MAC, no unknown KeyID; TcpExtTCPAOBad 0 in both namespaces.
# Results: `E2E-RESULT case=NAME key=value ...`; checks: `E2E-CHECK NAME ok|FAIL: why`.
# Exit status 0 only if every check passed. Addresses exist only inside this VM.
set -eu

# shellcheck source=lib.sh
. /opt/aokd/lib.sh
T=/tmp/e2e
PORT=179
PSK=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
A_IP=10.203.0.1
B_IP=10.203.0.2
HOLD=${E2E_HOLD:-5}
PRELOAD=/opt/aokd/lib/libaokd_preload.so
export TERM=dumb

# write_bird NS LOCAL NEIGHBOR LOCAL_AS NEIGHBOR_AS PROTOCOL FIXED PASSIVE: $T/NS/bird.conf,
# the fixed route FIXED and one BGP session PROTOCOL (passive on when PASSIVE is
# "on"), no password.
write_bird() {
    cat >"$T/$1/bird.conf" <<EOF
log "$T/$1/bird.log" all;
router id $2;
timeformat protocol iso long;
protocol device { }
protocol static fixed { ipv4; route $7 blackhole; }
protocol bgp $6 {
  debug { states, events };
  local $2 as $4;
  neighbor $3 as $5;
  passive $8;
  ipv4 { import all; export all; };
  connect delay time 1;
  connect retry time 3;
  error wait time 1, 5;
  hold time 9;
  keepalive time 1;
}
EOF
}

# start_bird NS: BIRD in NS under the preload library with the TCP-AO guard (its
# stderr, with the library's lines, in $T/bird-NS.err); waits until birdc answers.
start_bird() {
    ip netns exec "$1" env LD_PRELOAD="$PRELOAD" AOKD_ATTACH_SOCKET="$T/$1/attach.sock" \
        AOKD_PORTS="$PORT" AOKD_WAIT_MS=1000 AOKD_GUARD=tcp-ao AOKD_PRELOAD_DEBUG=1 \
        bird -f -c "$T/$1/bird.conf" -s "$T/$1/bird.ctl" -P "$T/$1/bird.pid" \
        >"$T/bird-$1.out" 2>"$T/bird-$1.err" &
    eval "bird_$1=\$!"
    wait_until "BIRD in $1 answering birdc" 30 sh -c "birdc -s '$T/$1/bird.ctl' show status | grep -q '^Router ID'"
}

# bgp_line NS PROTOCOL: "STATE SINCE_DATE SINCE_TIME INFO" of `birdc show protocols`.
bgp_line() {
    birdc -s "$T/$1/bird.ctl" show protocols "$2" 2>/dev/null | awk -v p="$2" '$1 == p { print $4, $5, $6, $7 }'
}

established() { # NS PROTOCOL
    case "$(bgp_line "$1" "$2")" in
    up\ *Established) return 0 ;;
    *) return 1 ;;
    esac
}

# probe NAME: an unsigned connect from b to a:PORT (plain-tcp, 3 s); prints
# "status=S ok=OK ao_required=+N" (a's TcpExtTCPAORequired before and after).
probe() {
    r0=$(ns_counter a TCPAORequired)
    st=0
    ip netns exec b plain-tcp client --connect "$A_IP:$PORT" --timeout 3 \
        >"$T/probe-$1.out" 2>"$T/probe-$1.err" || st=$?
    r1=$(ns_counter a TCPAORequired)
    echo "status=$st ok=$(jget "$(tail -n 1 "$T/probe-$1.out" 2>/dev/null || true)" ok) ao_required=$((r1 - r0))"
}

# The library's stderr lines about the listener (its guard, the takeover).
lib_lines() { grep "aokd-preload.*listen fd" "$T/bird-a.err" || true; }

script_start=$(now_ms)
rm -rf "$T"
mkdir -p "$T/a" "$T/b"
[ -f "$PRELOAD" ] || fatal "no preload library at $PRELOAD"
command -v bird >/dev/null || fatal "no bird in the image"
command -v birdc >/dev/null || fatal "no birdc in the image"
command -v plain-tcp >/dev/null || fatal "no plain-tcp in the image"
setup_link "$A_IP" "$B_IP"
write_config a "$A_IP" "$B_IP" false
write_config b "$B_IP" "$A_IP" true
write_bird a "$A_IP" "$B_IP" 65001 65002 to_b 192.0.2.0/25 on
write_bird b "$B_IP" "$A_IP" 65002 65001 to_a 198.51.100.0/25 off
bad_a0=$(ns_counter a TCPAOBad)
bad_b0=$(ns_counter b TCPAOBad)

# 1. BIRD in a, no aokd anywhere: the library's guard.
t_bird=$(now_ms)
start_bird a
wait_until "the library's guard on a's listener" 30 grep -q "listen fd .*the library's guard key (tcp-ao" "$T/bird-a.err"
guard_ms=$(($(now_ms) - t_bird))
gline=$(grep "listen fd .*the library's guard key (tcp-ao" "$T/bird-a.err" | head -n 1)
g_ids=$(echo "$gline" | sed -n "s/.*guard key (tcp-ao, KeyIDs \([0-9]*\)\/\([0-9]*\)).*/\1 \2/p")
g_send=${g_ids% *}
g_recv=${g_ids#* }
bird_a_state=$(bgp_line a to_b)
echo "E2E-RESULT case=library-guard guard_ms=$guard_ms send_id=${g_send:-none} recv_id=${g_recv:-none} bird_a=$(echo "$bird_a_state" | awk '{ print $1 "/" $4 }')"
echo "E2E-STEP $gline"
expect library-guard-ids "library's guard: $gline" "${g_send:-0}" -ge 248 -a "${g_send:-0}" -le 255 -a "${g_recv:-0}" -ge 248 -a "${g_recv:-0}" -le 255
# BIRD's listen() succeeded: the protocol is up (waiting), not down with an error.
expect bird-a-listening "a's to_b: $bird_a_state" "$(echo "$bird_a_state" | awk '{ print $1 }')" = start

# 2. An unsigned connect against the guarded listener.
p1=$(probe guarded)
echo "E2E-RESULT case=probe-library $p1"
expect probe-library-dropped "unsigned connect to the library-guarded listener: $p1 ($(cat "$T/probe-guarded.out" "$T/probe-guarded.err"))" \
    "$(field "$p1" status)" != 0 -a "$(field "$p1" ok)" = false -a "$(field "$p1" ao_required)" -gt 0

# 3. aokd in a (no peer yet): the takeover.
t_aokd=$(now_ms)
start_aokd a
t_attach=$(now_ms)
wait_until "the library handing a's listener to aokd" 30 grep -q "listen fd .*took the socket over" "$T/bird-a.err"
takeover_ms=$(($(now_ms) - t_attach))
tline=$(grep "listen fd .*took the socket over" "$T/bird-a.err" | head -n 1)
refused=$(lib_lines | grep -c "next try in" || true)
aoctl_ns a sockets >"$T/sockets-a.json"
listeners=$(awk -v ns=a "$SOCKETS_AWK" "$T/sockets-a.json" | awk '$4 == "listen"' | wc -l)
listener_state=$(awk -v ns=a "$SOCKETS_AWK" "$T/sockets-a.json" | awk '$4 == "listen" { print $5; exit }')
echo "E2E-STEP $tline"
echo "E2E-RESULT case=takeover aokd_start_ms=$((t_attach - t_aokd)) takeover_ms=$takeover_ms refused=$refused listeners=$listeners listener_state=${listener_state:-none} aokd_guard=$(echo "$tline" | grep -c "aokd installed guard (tcp-ao)" || true) library_guard_removed=$(echo "$tline" | grep -c "guard key (tcp-ao, KeyIDs [0-9]*/[0-9]*) is removed" || true)"
expect takeover-first-try "no refused takeover (EEXIST or other): $(lib_lines)" "$refused" = 0
expect takeover-aokd-guard "aokd put its guard on (no MKT yet): $tline" "$(echo "$tline" | grep -c "aokd installed guard (tcp-ao)" || true)" = 1
expect takeover-library-guard-removed "$tline" "$(echo "$tline" | grep -c "is removed" || true)" = 1
expect takeover-listed "aokd's sockets: $listeners listener(s), ${listener_state:-none}" "$listeners" = 1 -a "${listener_state:-none}" = guarded
p2=$(probe aokd-guard)
echo "E2E-RESULT case=probe-aokd $p2"
expect probe-aokd-dropped "unsigned connect to the aokd-guarded listener: $p2" \
    "$(field "$p2" status)" != 0 -a "$(field "$p2" ok)" = false -a "$(field "$p2" ao_required)" -gt 0

# 4. The capture, aokd in b, MKTs, BIRD in b: the session.
start_tcpdump "$T/bird.pcap"
start_aokd b
wait_until "an MKT in a (aoctl mkts)" 60 has_mkt a
wait_until "an MKT in b (aoctl mkts)" 60 has_mkt b
t_b=$(now_ms)
start_bird b
wait_until "b's BIRD: to_a Established" 60 established b to_a
wait_until "a's BIRD: to_b Established" 30 established a to_b
t_est=$(now_ms)
since_a=$(bgp_line a to_b | awk '{ print $2 "_" $3 }')
wait_until "a's BIRD: b's fixed route" 30 sh -c "birdc -s '$T/a/bird.ctl' show route 198.51.100.0/25 | grep -q to_b"
wait_until "b's BIRD: a's fixed route" 30 sh -c "birdc -s '$T/b/bird.ctl' show route 192.0.2.0/25 | grep -q to_a"
echo "E2E-RESULT case=established ms=$((t_est - t_b)) since_a=$since_a"
sleep "$HOLD"
line_a=$(bgp_line a to_b)
line_b=$(bgp_line b to_a)
since_a1=$(echo "$line_a" | awk '{ print $2 "_" $3 }')
aoctl_ns a sockets >"$T/sockets-a.json"
awk -v ns=a "$SOCKETS_AWK" "$T/sockets-a.json" >"$T/socks.a"
sess=$(awk '$4 == "accepted" && $5 == "keys"' "$T/socks.a" | wc -l)
good=$(awk '$4 == "accepted" { g += $6 } END { print g + 0 }' "$T/socks.a")
l_state=$(awk '$4 == "listen" { print $5; exit }' "$T/socks.a")
ups_a=$(grep -c "to_b: State changed to up" "$T/a/bird.log" || true)
echo "E2E-RESULT case=session a_state=$(echo "$line_a" | awk '{ print $1 "/" $4 }') b_state=$(echo "$line_b" | awk '{ print $1 "/" $4 }') since_a=$since_a1 a_ups=$ups_a accepted_with_keys=$sess accepted_pkt_good=$good listener_state=${l_state:-none}"
expect a-established "a's to_b: $line_a" "$(echo "$line_a" | awk '{ print $1 "/" $4 }')" = up/Established
expect b-established "b's to_a: $line_b" "$(echo "$line_b" | awk '{ print $1 "/" $4 }')" = up/Established
expect a-no-flap "a's to_b up since $since_a1, was $since_a; $ups_a ups" "$since_a1" = "$since_a" -a "$ups_a" = 1
expect a-accepted-keys "a's accepted sockets with keys: $sess, pkt_good $good; listener ${l_state:-none}" \
    "$sess" -ge 1 -a "$good" -gt 0 -a "${l_state:-none}" = keys
bad_a=$(($(ns_counter a TCPAOBad) - bad_a0))
bad_b=$(($(ns_counter b TCPAOBad) - bad_b0))
expect ns-ao-bad "TcpExtTCPAOBad: a +$bad_a, b +$bad_b" "$bad_a" = 0 -a "$bad_b" = 0

# 5. Every captured segment signed and verified.
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
plain=$(ao_segments "$T/bird.pcap" | awk '$4 == "-"' | wc -l)
echo "E2E-RESULT case=verify status=$verify_status connections=${v_conn:-0} segments=${v_seg:-0} verified=${v_ver:-0} unsigned=${v_uns:-0} bad_mac=${v_bad:-0} unknown_key_id=${v_unk:-0} without_ao_option=$plain"
expect verify-status "aoctl verify exited $verify_status: $(head -c 2000 "$T/verify.err")" "$verify_status" = 0
expect verify-all-segments "verified ${v_ver:-0} of ${v_seg:-0} segments" "${v_seg:-0}" -gt 0 -a "${v_ver:-0}" = "${v_seg:-0}"
expect verify-no-unsigned "${v_uns:-?} unsigned segments, $plain without the TCP-AO option" "${v_uns:-1}" = 0 -a "$plain" = 0
expect verify-no-bad "${v_bad:-?} bad MACs, ${v_unk:-?} unknown KeyIDs" "${v_bad:-1}" = 0 -a "${v_unk:-1}" = 0

# shellcheck disable=SC2154 # set by start_bird through eval
stop "$bird_a"
# shellcheck disable=SC2154
stop "$bird_b"
stop "$aokd_a"
stop "$aokd_b"

if [ "$fails" != 0 ]; then
    dump_logs
    for ns in a b; do
        echo "----- $T/$ns/bird.log (last 60 lines) -----"
        tail -n 60 "$T/$ns/bird.log"
    done
    echo "----- the capture -----"
    keyid_runs "$T/bird.pcap"
    echo "----- aoctl verify -----"
    cat "$T/verify.json" "$T/verify.err"
fi
echo "E2E-DONE failures=$fails elapsed_ms=$(($(now_ms) - script_start))"
[ "$fails" = 0 ]
