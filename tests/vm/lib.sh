# shellcheck shell=sh disable=SC2034 # variables here are used by the scripts that source it
# shellcheck disable=SC3006,SC3010,SC3024,SC3030,SC3043,SC3054 # the host part is bash
# Helpers sourced by the host scripts (build-kernel.sh, mkinitramfs.sh, run.sh: bash)
# and by the guest scripts of the end-to-end tests (e2e-*.sh: dash, in the VM, where
# mkinitramfs.sh puts this file as /opt/aokd/lib.sh). Source it; do not run it.
#
# The first part is POSIX sh for the guest scripts; the second, bash only, is for
# the host scripts (dash returns before reading it).

# ===================================================================================
# Guest part (POSIX sh). The sourcing script sets T (its work directory), PORT (the
# covered TCP port), PSK, and optionally MKT_REKEY / MKT_LIFETIME (seconds) before
# calling write_config. `fails` counts the failed checks.
# ===================================================================================
fails=0

# Milliseconds since boot (from /proc/uptime, centisecond resolution).
now_ms() {
    read -r up _ </proc/uptime
    cs=${up#*.}
    cs=${cs#0}
    echo $((${up%.*} * 1000 + cs * 10))
}

# Milliseconds since the Unix epoch: the clock of tcpdump's timestamps and of the
# *_at fields of aoctl. Busybox's date has no %N; its adjtimex (read-only without
# options) shows CLOCK_REALTIME in microseconds, or nanoseconds with STA_NANO (8192).
unix_ms() {
    adjtimex 2>/dev/null | awk '
        $1 == "status:" { st = $2 } $1 == "time.tv_sec:" { s = $2 } $1 == "time.tv_usec:" { u = $2 }
        END { if (int(st / 8192) % 2) u = int(u / 1000); printf "%d%03d\n", s, int(u / 1000) }'
}

# check NAME WHY...: records the check with the status the caller put in $ok (1: ok);
# WHY is printed when it failed.
check() {
    name=$1
    shift
    if [ "$ok" = 1 ]; then
        echo "E2E-CHECK $name ok"
    else
        echo "E2E-CHECK $name FAIL: $*"
        fails=$((fails + 1))
    fi
}

# expect NAME WHY TEST-ARGS...: runs `[ TEST-ARGS ]` and records the check.
expect() {
    name=$1 why=$2
    shift 2
    if [ "$@" ] 2>/dev/null; then ok=1; else ok=0; fi
    check "$name" "$why"
}

# The aokd logs (without the mkt-keys requests of the key collectors), the programs'
# stderr and stdout, each shortened to its end.
dump_logs() {
    for f in "$T"/*/aokd.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last ${E2E_LOG_LINES:-300} lines without the mkt-keys requests) -----"
        grep -v "MKT keys requested" "$f" | tail -n "${E2E_LOG_LINES:-300}" || true
    done
    for f in "$T"/*.err; do
        [ -f "$f" ] || continue
        echo "----- $f (last 60 lines) -----"
        tail -n 60 "$f"
    done
    for f in "$T"/*.out; do
        [ -f "$f" ] || continue
        echo "----- $f (last 30 lines) -----"
        tail -n 30 "$f"
    done
}

fatal() {
    echo "E2E-FATAL $*"
    dump_logs
    echo "E2E-DONE failures=$((fails + 1))"
    exit 1
}

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND (every 0.1 s) until it
# succeeds; fatal with DESCRIPTION when SECONDS pass.
wait_until() {
    desc=$1
    end=$(($(now_ms) + $2 * 1000))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$end" ] || fatal "timed out waiting for $desc"
        sleep 0.1
    done
}

# wait_exit PID SECONDS: waits for the background process PID to end; its status in
# $exit_status, 124 (and the process killed) if it is still running after SECONDS.
wait_exit() {
    end=$(($(now_ms) + $2 * 1000))
    while kill -0 "$1" 2>/dev/null; do
        if [ "$(now_ms)" -ge "$end" ]; then
            kill -KILL "$1" 2>/dev/null || true
            wait "$1" 2>/dev/null || true
            exit_status=124
            return 0
        fi
        sleep 0.1
    done
    exit_status=0
    wait "$1" || exit_status=$?
}

# stop PID: SIGTERM, then wait (bounded).
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait_exit "$1" 10
}

metric() { # FILE SAMPLE: the value of SAMPLE (name{labels} as written) in an OpenMetrics FILE
    awk -v s="$2" '$1 == s { print $2; exit }' "$1"
}

aoctl_ns() { # NS ARGS...: aoctl --json on NS's aokd
    ns=$1
    shift
    aoctl --socket "$T/$ns/control.sock" --json "$@"
}

# mkt_count NS: the MKTs `aoctl mkts` lists in NS, restored ones included.
mkt_count() {
    n=$(aoctl_ns "$1" mkts 2>/dev/null | grep -c '"send_id"' || true)
    echo "${n:-0}"
}

# live_mkt_count NS: the MKTs negotiated by the running aokd (not those restored
# from its state file, state restored or restored-stale, whose keys it no longer has).
live_mkt_count() {
    n=$(aoctl_ns "$1" mkts 2>/dev/null | awk -v t=0 "$MKTS_AWK" | awk '$5 !~ /^restored/' | wc -l)
    echo "${n:-0}"
}

has_mkt() { [ "$(live_mkt_count "$1")" -ge 1 ]; }

# A field of the first JSON object on the single line $1 (compact JSON as the test
# programs print it): a number, true/false/null or a string.
jget() {
    printf '%s\n' "$1" | sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" | head -n 1 | tr -d '"'
}

# A field "KEY": VALUE of pretty-printed JSON in file $1 (first occurrence).
pget() {
    sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\} *$/\1/p" "$1" | head -n 1
}

# The "totals" field KEY of `aoctl verify --json` output in file $1.
vtotal() {
    awk -v k="\"$2\":" '/"totals"/ { t = 1 } t && $1 == k { gsub(/[^0-9]/, "", $2); print $2; exit }' "$1"
}

# A TcpExt counter (e.g. TCPAOBad) of namespace NS.
ns_counter() {
    v=$(ip netns exec "$1" nstat -asz "TcpExt$2" 2>/dev/null | awk -v k="TcpExt$2" '$1 == k { print $2 }')
    echo "${v:-0}"
}

field() { # "k=v k=v ..." KEY
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# `aoctl --json mkts` (pretty JSON) to one record per MKT:
#   T SEND_ID RECV_ID FINGERPRINT STATE EXPIRES_AT
# (T: the awk variable t, e.g. the sample's time).
# shellcheck disable=SC2016 # an awk program
MKTS_AWK='
{ line = $0; gsub(/[ ",]/, "", line); i = index(line, ":"); k = substr(line, 1, i - 1); v = substr(line, i + 1) }
k == "send_id" { s = v } k == "recv_id" { r = v } k == "key_fingerprint" { fp = v } k == "state" { st = v }
k == "expires_at" { ex = v }
/^ *}/ && fp != "" { print (t == "" ? "-" : t), s, r, fp, (st == "" ? "-" : st), (ex == "" ? "-" : ex); fp = ""; st = ""; ex = "" }
'

# `aoctl --json sockets` (pretty JSON) to one record per socket:
#   NS PID FD ROLE STATE PKT_GOOD PKT_BAD
# shellcheck disable=SC2016 # an awk program
SOCKETS_AWK='
{ line = $0; gsub(/[ ",]/, "", line); i = index(line, ":"); k = substr(line, 1, i - 1); v = substr(line, i + 1) }
k == "pid" { pid = v } k == "fd" { fd = v } k == "role" { role = v } k == "state" { state = v }
k == "pkt_good" { good = v } k == "pkt_bad" { bad = v }
/^ *}/ && pid != "" { print ns, pid, fd, role, state, good, bad; pid = "" }
'

# The per-second sample lines of stream-peer (stream-peer's output) checked for rollovers and
# stale keys: prints "samples=N rollovers=R max_keys=M replaced=R removed=X
# lingering=L pending=P max_linger_ms=Z rollovers_after=A". A key is replaced when
# "current" moves away from it; it must be absent from "keys" in a later line,
# within `limit` ms (an awk variable; lingering otherwise; pending if it was replaced
# less than that before the last line). rollovers_after counts the rollovers seen in
# lines whose unix_ms is later than the awk variable `after` (Unix ms, default 0).
# shellcheck disable=SC2016 # an awk program
KEYS_AWK='
/"event":"sample"/ {
    t = $0; sub(/.*"t_ms":/, "", t); sub(/[,}].*/, "", t); t += 0
    u = $0; sub(/.*"unix_ms":/, "", u); sub(/[,}].*/, "", u); u += 0
    ks = ""
    if (match($0, /"keys":\[[^a-z"]*\]/)) { ks = substr($0, RSTART + 7, RLENGTH - 7) }
    gsub(/\],\[/, " ", ks); gsub(/[][]/, "", ks)
    n = split(ks, arr, " ")
    split("", present)
    for (i = 1; i <= n; i++) present[arr[i]] = 1
    cur = ""
    if (match($0, /"current":\[[0-9]+,[0-9]+\]/)) { cur = substr($0, RSTART + 11, RLENGTH - 12) }
    samples++
    if (n > maxk) maxk = n
    if (cur != "" && prev != "" && cur != prev) { nr++; rk[nr] = prev; rt[nr] = t; gone[nr] = 0; if (u > after + 0) na++ }
    if (cur != "") prev = cur
    for (i = 1; i <= nr; i++) {
        if (!gone[i] && !(rk[i] in present)) { gone[i] = 1; held = t - rt[i]; if (held > maxl) maxl = held; removed++ }
    }
    last = t
}
END {
    for (i = 1; i <= nr; i++) {
        if (gone[i]) continue
        held = last - rt[i]
        if (held > maxl) maxl = held
        if (held >= limit) lingering++; else pending++
    }
    printf "samples=%d rollovers=%d max_keys=%d replaced=%d removed=%d lingering=%d pending=%d max_linger_ms=%d rollovers_after=%d\n", samples, nr, maxk, nr, removed, lingering, pending, maxl, na
}'

# setup_link A_IP B_IP: network namespaces a and b joined by the veth pair va/vb
# (addresses /24), up, and carrying a ping.
setup_link() {
    ip netns add a
    ip netns add b
    ip link add va type veth peer name vb
    ip link set va netns a
    ip link set vb netns b
    ip -n a addr add "$1/24" dev va
    ip -n b addr add "$2/24" dev vb
    for ns in a b; do
        ip -n "$ns" link set lo up
    done
    ip -n a link set va up
    ip -n b link set vb up
    wait_until "the veth to carry a ping" 20 ip netns exec a ping -c 1 -W 1 "$2"
}

# daemon_table NS LOCAL [ACQUIRE_TIMEOUT]: the [daemon] table of NS's aokd (IKE on
# LOCAL port 500, sockets and state_dir under $T/NS, acquire_timeout default 5s) and
# an empty line.
daemon_table() {
    cat <<EOF
[daemon]
listen = ["$2"]
port = 500
control_socket = "$T/$1/control.sock"
state_dir = "$T/$1/state"
attach_socket = "$T/$1/attach.sock"
acquire_timeout = "${3:-5s}"

EOF
}

# write_config NS LOCAL REMOTE INITIATE [PSK]: $T/NS/aokd.toml for the aokd in NS,
# whose one peer (named after the other namespace) is REMOTE: backend tcp-ao, TCP
# port $PORT, state_dir $T/NS/state, the PSK (default $PSK) in $T/NS/peer.psk, and
# [peer.lifetimes] when MKT_REKEY and MKT_LIFETIME are set.
write_config() {
    mkdir -p "$T/$1/state"
    chmod 700 "$T/$1/state"
    (umask 077 && printf '%s\n' "${5:-$PSK}" >"$T/$1/peer.psk")
    daemon_table "$1" "$2" >"$T/$1/aokd.toml"
    cat >>"$T/$1/aokd.toml" <<EOF
[[peer]]
name = "$( [ "$1" = a ] && echo b || echo a)"
remote = "$3"
remote_port = 500
local = "$2"
psk_file = "$T/$1/peer.psk"
backend = "tcp-ao"
tcp_ports = [$PORT]
initiate = $4
EOF
    if [ -n "${MKT_REKEY:-}" ] && [ -n "${MKT_LIFETIME:-}" ]; then
        cat >>"$T/$1/aokd.toml" <<EOF

[peer.lifetimes]
mkt_rekey = "${MKT_REKEY}s"
mkt_lifetime = "${MKT_LIFETIME}s"
EOF
    fi
}

# start_aokd NS: starts NS's aokd (its log appended to $T/NS/aokd.log), sets aokd_a /
# aokd_b, and waits for its control and attach sockets.
start_aokd() {
    RUST_LOG=${E2E_RUST_LOG:-info} ip netns exec "$1" aokd --config "$T/$1/aokd.toml" >>"$T/$1/aokd.log" 2>&1 &
    eval "aokd_$1=\$!"
    wait_until "aokd in $1 answering on its control socket" 30 aoctl_ns "$1" status
    wait_until "aokd in $1 creating its attach socket" 30 test -S "$T/$1/attach.sock"
}

# start_pair A_IP B_IP [B_PSK]: the configurations of a (which initiates) and b, both
# aokds started (b first), and an MKT in each within 60 s.
start_pair() {
    write_config a "$1" "$2" true
    write_config b "$2" "$1" false "${3:-$PSK}"
    start_aokd b
    start_aokd a
    wait_until "an MKT in a (aoctl mkts)" 60 has_mkt a
    wait_until "an MKT in b (aoctl mkts)" 60 has_mkt b
}

# start_tcpdump FILE: on b's veth, TCP only, whole segments; waits for "listening on".
tcpdump_pid=""
start_tcpdump() {
    ip netns exec b tcpdump -n -U -s 0 -Z root -i vb -w "$1" tcp >"$1.err" 2>&1 &
    tcpdump_pid=$!
    wait_until "tcpdump listening on vb ($1.err)" 30 grep -q "listening on" "$1.err"
}

stop_tcpdump() {
    kill -INT "$tcpdump_pid" 2>/dev/null || true
    wait_exit "$tcpdump_pid" 30
    [ "$exit_status" = 0 ] || echo "tcpdump ended with status $exit_status"
    cat "$1.err"
}

# ao_segments PCAP: one line per TCP segment of the capture,
#   UNIX_TIME SRC.PORT DST.PORT KEYID RNEXTKEYID
# with KEYID and RNEXTKEYID "-" for a segment without the TCP-AO option.
ao_segments() {
    tcpdump -n -tt -r "$1" tcp 2>/dev/null | awk '
        $2 == "IP" || $2 == "IP6" {
            k = "-"; r = "-"
            for (i = 1; i < NF; i++) {
                if ($i == "keyid") k = $(i + 1)
                if ($i == "rnextkeyid") r = $(i + 1)
            }
            dst = $5; sub(/:$/, "", dst)
            print $1, $3, dst, k, r
        }'
}

# keyid_runs PCAP: per sender, the runs of segments with the same KeyID and
# RNextKeyID (first timestamp, sender, keyid, rnextkeyid, segments), for reports.
keyid_runs() {
    echo "(first timestamp, sender, keyid, rnextkeyid, segments)"
    ao_segments "$1" |
        awk '{ s = $2; k = "keyid=" $4 " rnext=" $5; if (k != prev[s]) { if (prev[s] != "") print first[s], s, prev[s], n[s]; first[s] = $1; n[s] = 0; prev[s] = k } n[s]++ }
            END { for (s in prev) print first[s], s, prev[s], n[s] }' | sort -n
}

# observe_start SECONDS: samples `aoctl --json mkts` and `aoctl --json sockets` of a
# and b once per second into $T/mkts.a, $T/mkts.b (MKTS_AWK records, T = Unix ms) and
# $T/socks.a, $T/socks.b (Unix ms, then a SOCKETS_AWK record) until observe_stop, and
# collects the master key of every MKT of both daemons every 200 ms into $T/keys.a
# and $T/keys.b (`stream-peer mkt-keys`, the root-only control command) for at most
# SECONDS. A daemon that is down is skipped (and its failures logged to
# $T/keys-NS.err) until it answers again.
sampler_pid=""
observe_start() {
    : >"$T/mkts.a"
    : >"$T/mkts.b"
    : >"$T/socks.a"
    : >"$T/socks.b"
    : >"$T/sampling"
    (
        while [ -e "$T/sampling" ]; do
            t=$(unix_ms)
            for ns in a b; do
                if aoctl_ns "$ns" mkts >"$T/mkts-sample.$ns" 2>/dev/null; then
                    awk -v t="$t" "$MKTS_AWK" "$T/mkts-sample.$ns" >>"$T/mkts.$ns"
                fi
                if aoctl_ns "$ns" sockets >"$T/socks-sample.$ns" 2>/dev/null; then
                    awk -v ns="$ns" "$SOCKETS_AWK" "$T/socks-sample.$ns" | sed "s/^/$t /" >>"$T/socks.$ns"
                fi
            done
            sleep 1
        done
    ) &
    sampler_pid=$!
    for ns in a b; do
        stream-peer mkt-keys --control "$T/$ns/control.sock" --every-ms 200 --seconds "$1" \
            >"$T/keys.$ns" 2>"$T/keys-$ns.err" &
        eval "keys_$ns=\$!"
    done
}

# observe_stop: ends the sampler and the collectors; every collected key (the
# `aoctl verify --mkt` arguments, one per line) is then in $T/keys.all.
observe_stop() {
    rm -f "$T/sampling"
    wait_exit "$sampler_pid" 30
    for ns in a b; do
        eval "pid=\$keys_$ns"
        # shellcheck disable=SC2154 # set by eval
        stop "$pid"
    done
    sort -u "$T/keys.a" "$T/keys.b" >"$T/keys.all"
}

# verify_all PCAP OUT: `aoctl verify --json` of PCAP with every key in $T/keys.all,
# into OUT (its stderr into OUT without .json, plus .err); sets verify_status, keys_args (keys given) and the
# totals v_conn v_seg v_ver v_uns v_bad v_unk v_noisn v_trunc (empty if missing).
verify_all() {
    vargs=""
    keys_args=0
    while read -r k; do
        vargs="$vargs --mkt $k"
        keys_args=$((keys_args + 1))
    done <"$T/keys.all"
    verify_status=0
    # shellcheck disable=SC2086 # one word per argument (a key line has no spaces)
    aoctl verify --pcap "$1" --json $vargs >"$2" 2>"${2%.json}.err" || verify_status=$?
    v_conn=$(vtotal "$2" connections)
    v_seg=$(vtotal "$2" segments)
    v_ver=$(vtotal "$2" verified)
    v_uns=$(vtotal "$2" unsigned)
    v_bad=$(vtotal "$2" bad_mac)
    v_unk=$(vtotal "$2" unknown_key_id)
    v_noisn=$(vtotal "$2" no_isn)
    v_trunc=$(vtotal "$2" truncated)
}

# run_server NS NAME OUT COMMAND...: starts the server COMMAND in NS (stdout OUT,
# stderr OUT without .out plus .err) and waits (30 s at most) for its "listening"
# line; fatal if it reports an attach or listen error, or exits, first. Its pid in
# $server_pid.
run_server() {
    ns=$1 name=$2 out=$3
    shift 3
    ip netns exec "$ns" "$@" >"$out" 2>"${out%.out}.err" &
    server_pid=$!
    end=$(($(now_ms) + 30000))
    until grep -q '"event":"\(listening\|attach-error\|listen-error\)"' "$out"; do
        kill -0 "$server_pid" 2>/dev/null || fatal "$name exited before listening: $(cat "$out" "${out%.out}.err")"
        [ "$(now_ms)" -lt "$end" ] || fatal "$name did not report listening within 30 s"
        sleep 0.1
    done
    grep -q '"event":"listening"' "$out" || fatal "$name is not listening: $(cat "$out")"
}

# -----------------------------------------------------------------------------------
# The stream scripts (e2e-rollover.sh, e2e-restart.sh, e2e-expiry.sh): one
# stream-peer connection, client in a, server in b, through MKT rollovers.
# -----------------------------------------------------------------------------------

# stream_defaults: what the stream scripts share, before their own settings: T, PORT
# 179, PSK, MKT_REKEY 8 s and MKT_LIFETIME 16 s, the stream's INTERVAL_MS 10 and
# CHUNK 1024 (each of the last four overridable with E2E_<NAME>).
stream_defaults() {
    T=/tmp/e2e
    PORT=179
    PSK=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    MKT_REKEY=${E2E_MKT_REKEY:-8}
    MKT_LIFETIME=${E2E_MKT_LIFETIME:-16}
    INTERVAL_MS=${E2E_INTERVAL_MS:-10}
    CHUNK=${E2E_CHUNK:-1024}
}

# stream_setup [KEY=VALUE...]: an empty $T, the namespaces and the veth pair
# ($A_IP, $B_IP), both aokds with an MKT each (start_pair); prints the setup result
# (the MKT lifetimes, the given fields, the MKT counts, the time start_pair took).
# Sets script_start.
stream_setup() {
    script_start=$(now_ms)
    rm -rf "$T"
    mkdir -p "$T/a" "$T/b"
    setup_link "$A_IP" "$B_IP"
    echo "E2E-STEP setup done at $(($(now_ms) - script_start)) ms"
    t_setup=$(now_ms)
    start_pair "$A_IP" "$B_IP"
    echo "E2E-RESULT case=setup mkt_rekey_s=$MKT_REKEY mkt_lifetime_s=$MKT_LIFETIME $* a_mkts=$(mkt_count a) b_mkts=$(mkt_count b) elapsed_ms=$(($(now_ms) - t_setup))"
}

# start_stream_server NAME ARGS...: `stream-peer server` in b on $B_IP:$PORT with b's
# attach socket and ARGS (output $T/NAME.out), listening; its pid in $srv.
start_stream_server() {
    out="$T/$1.out"
    shift
    run_server b "stream-peer server" "$out" \
        stream-peer server --listen "$B_IP:$PORT" --attach "$T/b/attach.sock" "$@"
    srv=$server_pid
}

# stream_begin: the stream starts: t_stream (now), and the namespaces' TCPAOBad in
# bad_a0 and bad_b0.
stream_begin() {
    t_stream=$(now_ms)
    bad_a0=$(ns_counter a TCPAOBad)
    bad_b0=$(ns_counter b TCPAOBad)
}

# stream_finish CLIENT_PID CLIENT_WAIT_S: waits for the client (CLIENT_WAIT_S at most)
# and the server $srv (30 s), their statuses in client_status and server_status; then
# stream_ms (since stream_begin), how much TCPAOBad rose in bad_a and bad_b, and the
# observers and the capture $T/stream.pcap stopped.
stream_finish() {
    wait_exit "$1" "$2"
    client_status=$exit_status
    wait_exit "$srv" 30
    server_status=$exit_status
    stream_ms=$(($(now_ms) - t_stream))
    bad_a=$(($(ns_counter a TCPAOBad) - bad_a0))
    bad_b=$(($(ns_counter b TCPAOBad) - bad_b0))
    observe_stop
    stop_tcpdump "$T/stream.pcap"
}

# stream_summaries: the summary lines of $T/client.out and $T/server.out into cline
# and sline, printed as E2E-CLIENT and E2E-SERVER.
stream_summaries() {
    cline=$(grep '"event":"summary"' "$T/client.out" | tail -n 1 || true)
    sline=$(grep '"event":"summary"' "$T/server.out" | tail -n 1 || true)
    echo "E2E-CLIENT $cline"
    echo "E2E-SERVER $sline"
}

# expect_stream_end ROLE SUMMARY STATUS: the checks of one end of the stream: exited 0
# with ok, never disconnected or stalled, pkt_bad and pkt_key_not_found 0.
expect_stream_end() {
    expect "$1-ok" "$1 exited $3: $2 $(tail -n 5 "$T/$1.err" | tr '\n' ' ')" "$3" = 0 -a "$(jget "$2" ok)" = true
    expect "$1-connected" "$1: disconnected=$(jget "$2" disconnected) stalled=$(jget "$2" stalled)" \
        "$(jget "$2" disconnected)" = false -a "$(jget "$2" stalled)" = false
    expect "$1-pkt-bad-zero" "$1: pkt_bad $(jget "$2" pkt_bad)" "$(jget "$2" pkt_bad)" = 0
    expect "$1-pkt-key-not-found-zero" "$1: pkt_key_not_found $(jget "$2" pkt_key_not_found) (segments signed with a key the socket no longer or not yet had)" \
        "$(jget "$2" pkt_key_not_found)" = 0
}

# expect_stream_octets BAD_A BAD_B: every octet one end wrote (some), the other
# verified (cline and sline); and no TcpExtTCPAOBad in either namespace (BAD_A and
# BAD_B: how much each rose during the stream).
expect_stream_octets() {
    expect bytes-client-to-server "client wrote $(jget "$cline" bytes_out), server verified $(jget "$sline" bytes_in)" \
        "$(jget "$cline" bytes_out)" -gt 0 -a "$(jget "$cline" bytes_out)" = "$(jget "$sline" bytes_in)"
    expect bytes-server-to-client "server wrote $(jget "$sline" bytes_out), client verified $(jget "$cline" bytes_in)" \
        "$(jget "$sline" bytes_out)" -gt 0 -a "$(jget "$sline" bytes_out)" = "$(jget "$cline" bytes_in)"
    expect ns-ao-bad "TcpExtTCPAOBad during the stream: a +$1, b +$2" "$1" = 0 -a "$2" = 0
}

# verify_stream PCAP: verify_all of the one connection's capture into $T/verify.json,
# its result line, and the checks: status 0, one connection, every segment verified,
# nothing unsigned, no bad MAC, no unknown KeyID.
verify_stream() {
    t_verify=$(now_ms)
    verify_all "$1" "$T/verify.json"
    echo "E2E-RESULT case=verify status=$verify_status connections=${v_conn:-0} segments=${v_seg:-0} verified=${v_ver:-0} unsigned=${v_uns:-0} bad_mac=${v_bad:-0} unknown_key_id=${v_unk:-0} no_isn=${v_noisn:-0} truncated=${v_trunc:-0} keys=$keys_args pcap_bytes=$(wc -c <"$1") elapsed_ms=$(($(now_ms) - t_verify))"
    expect verify-status "aoctl verify exited $verify_status: $(head -c 2000 "$T/verify.err")" "$verify_status" = 0
    expect verify-connections "captured ${v_conn:-0} connections, want 1" "${v_conn:-0}" = 1
    expect verify-all-segments "verified ${v_ver:-0} of ${v_seg:-0} segments" "${v_seg:-0}" -gt 0 -a "${v_ver:-0}" = "${v_seg:-0}"
    expect verify-no-unsigned "${v_uns:-?} unsigned segments" "${v_uns:-1}" = 0
    expect verify-no-bad "${v_bad:-?} bad MACs, ${v_unk:-?} unknown KeyIDs" "${v_bad:-1}" = 0 -a "${v_unk:-1}" = 0
}

# stream_failure_dump PCAP: after a failure, the logs, the capture's KeyID runs per
# sender and the collected keys.
stream_failure_dump() {
    dump_logs
    echo "----- the capture: per sender, runs of segments with the same KeyID and RNextKeyID -----"
    keyid_runs "$1"
    echo "----- collected keys (KeyID:algorithm:first octets) -----"
    cut -c1-30 "$T/keys.all"
}

# stop_pair: stops both aokds (start_aokd).
stop_pair() {
    # shellcheck disable=SC2154 # set by start_aokd through eval
    stop "$aokd_a"
    # shellcheck disable=SC2154
    stop "$aokd_b"
}

# e2e_done: prints E2E-DONE; its status, the last of the script, is the script's (0
# only if every check passed).
e2e_done() {
    echo "E2E-DONE failures=$fails elapsed_ms=$(($(now_ms) - script_start))"
    [ "$fails" = 0 ]
}

# ===================================================================================
# Host part (bash only): packages, the kernel cache.
# ===================================================================================
[ -n "${BASH_VERSION:-}" ] || return 0

# Debian package that provides the kernel source, and where it puts the tarball.
AOKD_VM_SRC_PKG=linux-source-6.12
AOKD_VM_SRC_TAR=/usr/src/linux-source-6.12.tar.xz

aokd_vm_cache_dir() {
    printf '%s\n' "${AOKD_VM_CACHE:-${HOME:-/root}/.cache/aokd-vm}"
}

vm_log() {
    printf '[aokd-vm] %s\n' "$*" >&2
}

vm_die() {
    printf '[aokd-vm] ERROR: %s\n' "$*" >&2
    exit 1
}

# pkg_installed PKG: true if dpkg says PKG is installed.
pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# ensure_packages PKG...: installs the missing ones with apt-get (root only; runs
# `apt-get update` once per process first). Fails naming the packages otherwise.
ensure_packages() {
    local missing=() p
    command -v dpkg-query >/dev/null 2>&1 ||
        vm_die "dpkg-query not found: these scripts need a Debian/Ubuntu host (packages wanted: $*)"
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ "$(id -u)" != 0 ]]; then
        vm_die "missing Debian packages: ${missing[*]} (not root, cannot install; run: sudo apt-get install -y ${missing[*]})"
    fi
    if [[ -z "${AOKD_VM_APT_UPDATED:-}" ]]; then
        vm_log "apt-get update (for: ${missing[*]})"
        DEBIAN_FRONTEND=noninteractive apt-get update >&2 ||
            vm_die "apt-get update failed (wanted: ${missing[*]})"
        export AOKD_VM_APT_UPDATED=1
    fi
    vm_log "apt-get install -y ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        vm_die "apt-get install failed for: ${missing[*]}"
}

# Packages the kernel build needs.
AOKD_VM_BUILD_PKGS=("$AOKD_VM_SRC_PKG" gcc make libc6-dev flex bison bc libelf-dev libssl-dev xz-utils cpio util-linux)
# Packages the initramfs and the VM need (iproute2: busybox's ip has no `netns`).
AOKD_VM_RUN_PKGS=(qemu-system-x86 busybox-static dash cpio gzip iproute2 tcpdump util-linux)
