#!/bin/sh
# Guest side of the peer group listener guard test under TCP-AO
# (tests/tests/vm_group_guard.rs); runs inside the qemu VM (tests/vm/run.sh) as
# /opt/aokd/guest.sh with dash, on a kernel with TCP-AO.
#
# Two network namespaces a (10.204.0.1, the route server: one [[peer_group]] "rs" over
# 10.204.0.0/24 and no [[peer]]) and b (10.204.0.2, a neighbour with a as its one
# [[peer]]), certificates from the test's private CA in /opt/aokd/certs:
#   1. aokd in a starts; a's attached listener on 179 (tcp-peer) gets the group's
#      prefix guard although no member exists: the attach answer says "guard" for
#      "rs" (aoctl sockets: guarded); its key is a TCP-AO key for 10.204.0.0/24,
#      KeyIDs 247/247 (the unit tests check the keys; here the kernel's verdicts);
#   2. an unsigned connect from b (plain-tcp) fails and a's TcpExtTCPAORequired rises;
#   3. aokd in b starts; b's attached connect (tcp-peer client) waits for an MKT, b
#      initiates, a makes b a member, b's MKT goes on a's listener beside the guard
#      (no EEXIST), and the connection carries its data, signed (a's
#      TcpExtTCPAOGood rises; TcpExtTCPAOBad 0).
# Results: `E2E-RESULT case=NAME key=value ...`; checks: `E2E-CHECK NAME ok|FAIL: why`.
# Exit status 0 only if every check passed. Addresses exist only inside this VM.
set -eu

# shellcheck source=lib.sh
. /opt/aokd/lib.sh
T=/tmp/e2e
PORT=179
A_IP=10.204.0.1
B_IP=10.204.0.2
CERTS=/opt/aokd/certs
export TERM=dumb

# copy_certs NS: NS's certificate, key (mode 600) and the CA into $T/NS.
copy_certs() {
    cp "$CERTS/$1.crt" "$CERTS/ca.crt" "$T/$1/"
    (umask 077 && cp "$CERTS/$1.key" "$T/$1/$1.key")
    chmod 600 "$T/$1/$1.key"
}

script_start=$(now_ms)
rm -rf "$T"
mkdir -p "$T/a/state" "$T/b/state"
chmod 700 "$T/a/state" "$T/b/state"
for p in tcp-peer plain-tcp aokd aoctl; do
    command -v "$p" >/dev/null || fatal "no $p in the image"
done
copy_certs a
copy_certs b
setup_link "$A_IP" "$B_IP"
{
    daemon_table a "$A_IP" 10s
    cat <<EOF
[[peer_group]]
name = "rs"
remote = ["10.204.0.0/24"]
local = "$A_IP"
certificate = "$T/a/a.crt"
private_key = "$T/a/a.key"
ca = "$T/a/ca.crt"
backend = "tcp-ao"
tcp_ports = [$PORT]
EOF
} >"$T/a/aokd.toml"
{
    daemon_table b "$B_IP" 10s
    cat <<EOF
[[peer]]
name = "a"
remote = "$A_IP"
remote_port = 500
local = "$B_IP"
auth = "pubkey"
certificate = "$T/b/b.crt"
private_key = "$T/b/b.key"
ca = "$T/b/ca.crt"
backend = "tcp-ao"
tcp_ports = [$PORT]
initiate = false
EOF
} >"$T/b/aokd.toml"
bad_a0=$(ns_counter a TCPAOBad)
bad_b0=$(ns_counter b TCPAOBad)
good_a0=$(ns_counter a TCPAOGood)

# 1. aokd in a, its listener: the group's guard, no member.
start_aokd a
run_server a "a's listener" "$T/server.out" tcp-peer server --listen "$A_IP:$PORT" --count 2 \
    --attach "$T/a/attach.sock"
lline=$(grep '"event":"listening"' "$T/server.out" | head -n 1)
aoctl_ns a sockets >"$T/sockets-a.json"
l_state=$(awk -v ns=a "$SOCKETS_AWK" "$T/sockets-a.json" | awk '$4 == "listen" { print $5; exit }')
installed=$(jget "$lline" installed)
echo "E2E-STEP $lline"
echo "E2E-RESULT case=listener installed=${installed:-none} group_named=$(echo "$lline" | grep -c '"peers":\["rs"\]' || true) listener_state=${l_state:-none}"
expect listener-guard "a's listener with no member: $lline" "${installed:-none}" = guard
expect listener-group "the answer names the group: $lline" "$(echo "$lline" | grep -c '"peers":\["rs"\]' || true)" = 1
expect listener-listed "aoctl sockets: ${l_state:-none}" "${l_state:-none}" = guarded

# 2. An unsigned connect from b, inside the group's prefix.
r0=$(ns_counter a TCPAORequired)
st=0
ip netns exec b plain-tcp client --connect "$A_IP:$PORT" --timeout 3 \
    >"$T/probe.out" 2>"$T/probe.err" || st=$?
r1=$(ns_counter a TCPAORequired)
pline=$(tail -n 1 "$T/probe.out" 2>/dev/null || true)
echo "E2E-RESULT case=probe status=$st ok=$(jget "$pline" ok) ao_required=$((r1 - r0)) accepted=$(grep -c '"event":"accepted"' "$T/server.out" || true)"
expect probe-dropped "unsigned connect into the prefix: status $st, $pline $(cat "$T/probe.err"), TCPAORequired +$((r1 - r0))" \
    "$st" != 0 -a "$(jget "$pline" ok)" = false -a "$((r1 - r0))" -gt 0
expect probe-not-accepted "a's listener accepted nothing: $(cat "$T/server.out")" \
    "$(grep -c '"event":"accepted"' "$T/server.out" || true)" = 0

# 3. aokd in b, b's attached connect: b becomes a member, its MKT beside the guard.
start_aokd b
t_b=$(now_ms)
st=0
ip netns exec b tcp-peer client --connect "$A_IP:$PORT" --attach "$T/b/attach.sock" --timeout 10 \
    >"$T/client.out" 2>"$T/client.err" || st=$?
cline=$(tail -n 1 "$T/client.out" 2>/dev/null || true)
wait_until "a's listener reporting the accepted connection" 30 grep -q '"event":"accepted"' "$T/server.out"
aline=$(grep '"event":"accepted"' "$T/server.out" | head -n 1)
aoctl_ns a sockets >"$T/sockets-a.json"
awk -v ns=a "$SOCKETS_AWK" "$T/sockets-a.json" >"$T/socks.a"
l_state=$(awk '$4 == "listen" { print $5; exit }' "$T/socks.a")
good=$(($(ns_counter a TCPAOGood) - good_a0))
members=$(aoctl_ns a status | grep -c '"group": *"rs"' || true)
echo "E2E-STEP $cline"
echo "E2E-STEP $aline"
echo "E2E-RESULT case=member status=$st ok=$(jget "$cline" ok) bytes=$(jget "$cline" bytes) client_installed=$(jget "$cline" installed) ms=$(($(now_ms) - t_b)) members=$members listener_state=${l_state:-none} ao_good=$good"
expect member-connect "b's attached connect: status $st, $cline $(cat "$T/client.err")" \
    "$st" = 0 -a "$(jget "$cline" ok)" = true -a "$(jget "$cline" bytes)" = 4096
expect member-made "a made b a member of rs: $members" "$members" -ge 1
expect member-signed "a's segments verified (TcpExtTCPAOGood +$good); listener ${l_state:-none}" \
    "$good" -gt 0 -a "${l_state:-none}" = keys
bad_a=$(($(ns_counter a TCPAOBad) - bad_a0))
bad_b=$(($(ns_counter b TCPAOBad) - bad_b0))
expect ns-ao-bad "TcpExtTCPAOBad: a +$bad_a, b +$bad_b" "$bad_a" = 0 -a "$bad_b" = 0
stop "$aokd_b"
stop "$aokd_a"
[ "$fails" = 0 ] || dump_logs
echo "E2E-DONE failures=$fails elapsed_ms=$(($(now_ms) - script_start))"
[ "$fails" = 0 ]
