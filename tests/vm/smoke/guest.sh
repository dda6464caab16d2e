#!/bin/sh
# Guest side of the VM smoke test (runs inside qemu as /opt/aokd/guest.sh, with dash).
# Checks the tools later tests rely on (ip netns, veth, tc netem, tcpdump) and runs
# ao_smoke on loopback and across a veth pair into a network namespace.
# Each check prints "SMOKE-CHECK <name> ok|FAIL"; the exit status is the number of failures.
# Addresses: 192.0.2.0/24 (TEST-NET-1, RFC 5737) exists only inside this VM.

fails=0
check() {
    name="$1"
    shift
    if "$@"; then
        echo "SMOKE-CHECK $name ok"
    else
        echo "SMOKE-CHECK $name FAIL (status $?: $*)"
        fails=$((fails + 1))
    fi
}

check tcpdump-version tcpdump --version
check netns-add ip netns add a
check veth-add ip link add va type veth peer name vb
check veth-move ip link set vb netns a
check veth-addr-host ip addr add 192.0.2.1/24 dev va
check veth-up-host ip link set va up
check veth-addr-ns ip netns exec a ip addr add 192.0.2.2/24 dev vb
check veth-up-ns ip netns exec a ip link set vb up
check lo-up-ns ip netns exec a ip link set lo up
check netem-add tc qdisc add dev va root netem delay 1ms
check ping-veth ping -c 1 -W 5 192.0.2.2

check ao-loopback ao_smoke

tcpdump -n -i va -w /tmp/va.pcap tcp >/tmp/tcpdump.err 2>&1 &
tcpdump_pid=$!
sleep 1
check ao-veth-netns ao_smoke -n /var/run/netns/a -l 192.0.2.2 -c 192.0.2.1
sleep 1
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid"
cat /tmp/tcpdump.err
# TCP-AO is TCP option kind 29; tcpdump 4.99 prints it as "tcp-ao keyid N rnextkeyid N mac 0x..".
captured="$(tcpdump -n -r /tmp/va.pcap 2>/dev/null | wc -l)"
ao_segments="$(tcpdump -n -v -r /tmp/va.pcap 2>/dev/null | grep -c 'tcp-ao keyid')"
echo "SMOKE-TCPDUMP captured=$captured ao_segments=$ao_segments"
tcpdump -n -v -r /tmp/va.pcap 2>/dev/null | head -n 4
check tcpdump-capture [ "$captured" -gt 0 ]
check tcpdump-sees-ao [ "$ao_segments" -gt 0 ]

echo "SMOKE-DONE failures=$fails"
exit "$fails"
