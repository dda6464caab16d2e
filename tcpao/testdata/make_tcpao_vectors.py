#!/usr/bin/env python3
"""Independent computation of the TCP-AO / TCP-MD5 vectors in this folder.

Run: python3 make_tcpao_vectors.py [--check]

It uses only Python's hashlib/hmac and the `cryptography` package (AES-CMAC);
it shares no code with the Rust implementation it tests.

1. rfc9235-ipv6.txt holds the IPv6 segments of RFC 9235 sections 6 and 7
   that could be obtained (6.1.1, 6.1.2, 6.2.2, 6.2.4, 7.1.2, 7.1.4, as
   transcribed in the Linux tcp_authopt selftests' test_vectors.py, which
   carries the same IPv4 data as shared/vectors/rfc9235-ipv4.txt). This
   script recomputes their traffic keys and MACs and checks them against
   the transcription (`--check` only checks; the file is not rewritten).
2. tcpao-constructed.txt is written by this script: segments built here
   and signed here --
   * the TCP segments of every RFC 9235 IPv4 section carried over IPv6
     (fd00::1 <-> fd00::2), i.e. all four algorithm/option-flag
     combinations of RFC 9235 sections 6 and 7, with the SYN keys;
   * HMAC-SHA-256-128 connections (KDF of the RFC 5926 form with
     HMAC-SHA-256, Output_Length 256; MAC truncated to 16 octets, TCP-AO
     length 20), IPv4 and IPv6, options included and excluded;
   * connections whose client sequence number wraps (SNE 1);
   * TCP-MD5 (RFC 2385) segments, IPv4 and IPv6.
"""

import hashlib
import hmac
import struct
import sys
from ipaddress import IPv6Address

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

MASTER = b"testvector"
C6 = IPv6Address("fd00::1").packed
S6 = IPv6Address("fd00::2").packed
C4 = bytes([10, 11, 12, 13])
S4 = bytes([172, 27, 28, 29])


def aes_cmac(key, msg):
    c = cmac.CMAC(algorithms.AES(key))
    c.update(msg)
    return c.finalize()


def kdf(alg, master, context):
    if alg == "hmac-sha1-96":
        return hmac.digest(master, b"\x01TCP-AO" + context + b"\x00\xa0", "sha1")
    if alg == "hmac-sha256-128":
        return hmac.digest(master, b"\x01TCP-AO" + context + b"\x01\x00", "sha256")
    if alg == "aes128-cmac-96":
        k = master if len(master) == 16 else aes_cmac(bytes(16), master)
        return aes_cmac(k, b"\x01TCP-AO" + context + b"\x00\x80")
    raise ValueError(alg)


def mac(alg, key, msg):
    if alg == "hmac-sha1-96":
        return hmac.digest(key, msg, "sha1")[:12]
    if alg == "hmac-sha256-128":
        return hmac.digest(key, msg, "sha256")[:16]
    return aes_cmac(key, msg)[:12]


def split(pkt):
    """(src, dst, tcp bytes) of an IPv4 or IPv6 packet without extensions."""
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack("!H", pkt[2:4])[0]
        return pkt[12:16], pkt[16:20], pkt[ihl:total]
    plen = struct.unpack("!H", pkt[4:6])[0]
    assert pkt[6] == 6
    return pkt[8:24], pkt[24:40], pkt[40 : 40 + plen]


def pseudo(src, dst, tcplen):
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, 6, tcplen)
    return src + dst + struct.pack("!I", tcplen) + b"\x00\x00\x00\x06"


def find_option(hdr, kind):
    i = 20
    while i < len(hdr):
        k = hdr[i]
        if k == 0:
            break
        if k == 1:
            i += 1
            continue
        ln = hdr[i + 1]
        if k == kind:
            return i, ln
        i += ln
    return None


def ao_mac_input(pkt, include_options, sne=0):
    src, dst, tcp = split(pkt)
    doff = (tcp[12] >> 4) * 4
    hdr = bytearray(tcp[:doff])
    data = tcp[doff:]
    hdr[16:18] = b"\x00\x00"
    at, ln = find_option(hdr, 29)
    hdr[at + 4 : at + ln] = bytes(ln - 4)
    if not include_options:
        hdr = hdr[:20] + hdr[at : at + ln]
    return struct.pack("!I", sne) + pseudo(src, dst, len(tcp)) + bytes(hdr) + data


def context(pkt, src_isn, dst_isn):
    src, dst, tcp = split(pkt)
    return src + dst + tcp[0:4] + struct.pack("!II", src_isn, dst_isn)


def checksum(b):
    if len(b) % 2:
        b += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip_packet(src, dst, tcp, ident=0x1234):
    """Wraps a TCP segment in IPv4 or IPv6 and fills in the checksums."""
    tcp = bytearray(tcp)
    tcp[16:18] = b"\x00\x00"
    tcp[16:18] = struct.pack("!H", checksum(pseudo(src, dst, len(tcp)) + bytes(tcp)))
    if len(src) == 4:
        h = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, 6, 0, src, dst)
        )
        h[10:12] = struct.pack("!H", checksum(bytes(h)))
        return bytes(h) + bytes(tcp)
    return struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst) + bytes(tcp)


def set_ao_mac(pkt, alg, key, include_options, sne=0):
    """Fills in the TCP-AO MAC, then the TCP checksum."""
    src, dst, tcp = split(pkt)
    m = mac(alg, key, ao_mac_input(pkt, include_options, sne))
    tcp = bytearray(tcp)
    at, ln = find_option(tcp[: (tcp[12] >> 4) * 4], 29)
    assert ln - 4 == len(m)
    tcp[at + 4 : at + ln] = m
    return ip_packet(src, dst, bytes(tcp)), m


def tcp_header(sport, dport, seq, ack, flags, options, window=0xFFFF):
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0) + options


def md5_digest(pkt, key):
    src, dst, tcp = split(pkt)
    base = bytearray(tcp[:20])
    base[16:18] = b"\x00\x00"
    doff = (tcp[12] >> 4) * 4
    return hashlib.md5(pseudo(src, dst, len(tcp)) + bytes(base) + tcp[doff:] + key).digest()


def hx(b):
    return b.hex()


def record(out, name, **kv):
    out.append("[%s]" % name)
    for k, v in kv.items():
        if isinstance(v, bytes):
            v = hx(v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, int):
            v = "%08x" % v
        out.append("%s = %s" % (k, v))
    out.append("")


def read_records(path):
    recs, cur = [], None
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            cur = {"name": line[1:-1]}
            recs.append(cur)
        else:
            k, v = line.split("=", 1)
            cur[k.strip()] = v.strip()
    return recs


def check_rfc_ipv6(path):
    n = 0
    for r in read_records(path):
        pkt = bytes.fromhex(r["packet"])
        alg, inc = r["algorithm"], r["include_options"] == "true"
        tk = kdf(alg, bytes.fromhex(r["master_key"]), context(pkt, int(r["src_isn"], 16), int(r["dst_isn"], 16)))
        assert hx(tk) == r["traffic_key"], r["name"]
        m = mac(alg, tk, ao_mac_input(pkt, inc, int(r["sne"], 16)))
        assert hx(m) == r["mac"], r["name"]
        n += 1
    print("rfc9235-ipv6.txt: %d segments recomputed and matching" % n)


def parse_ipv4_vectors(path):
    """Sections of rfc9235-ipv4.txt: (name, alg, include, cisn, sisn, [(id, pkt)])."""
    sections, cur, seg, hexbuf, collecting = [], None, None, [], False
    for raw in open(path):
        line = raw.strip()
        if line.startswith("Section "):
            cur = {"name": line.split()[1], "segs": []}
            sections.append(cur)
            cur["alg"] = "aes128-cmac-96" if "CMAC" in line else "hmac-sha1-96"
            cur["include"] = "excluded" not in line
        elif line.startswith("Client ISN"):
            parts = line.replace(":", " ").split()
            cur["cisn"] = int(parts[2], 16)
            cur["sisn"] = int(parts[5], 16)
        elif line.startswith("--- "):
            seg = line.split()[1]
        elif line.startswith("IPv4/TCP segment"):
            collecting, hexbuf = True, []
        elif collecting:
            toks = line.split()
            if toks and all(len(t) == 2 for t in toks):
                hexbuf += toks
            else:
                cur["segs"].append((seg, bytes.fromhex("".join(hexbuf))))
                collecting = False
    return sections


def isns_for(pkt, cisn, sisn):
    src, dst, tcp = split(pkt)
    flags = tcp[13]
    seq, ack = struct.unpack("!II", tcp[4:12])
    from_client = tcp[2:4] == b"\x00\xb3" or struct.unpack("!H", tcp[2:4])[0] == 179
    if flags & 2 and not flags & 0x10:
        return seq, 0
    if flags & 2:
        return seq, (ack - 1) & 0xFFFFFFFF
    return (cisn, sisn) if from_client else (sisn, cisn)


def constructed(ipv4_path):
    out = [
        "# TCP-AO / TCP-MD5 segments constructed and signed by make_tcpao_vectors.py",
        "# (Python hashlib/hmac + cryptography; independent of the Rust code).",
        "# Fields: algorithm (or md5), include_options, sne, src_isn/dst_isn (hex, the",
        "# KDF context's ISNs: sender first), master_key, packet (raw IP),",
        "# traffic_key, mac (as in the packet's option). Records sharing the part of",
        "# the name before the last '.' form one connection, in order.",
        "",
    ]
    # 1. RFC 9235 IPv4 segments carried over IPv6.
    for sec in parse_ipv4_vectors(ipv4_path):
        for seg_id, pkt4 in sec["segs"]:
            src, dst, tcp = split(pkt4)
            c2s = src == C4
            pkt6 = ip_packet(C6 if c2s else S6, S6 if c2s else C6, tcp)
            si, di = isns_for(pkt4, sec["cisn"], sec["sisn"])
            tk = kdf(sec["alg"], MASTER, context(pkt6, si, di))
            pkt6, m = set_ao_mac(pkt6, sec["alg"], tk, sec["include"])
            record(
                out,
                "v6-from-" + seg_id,
                algorithm=sec["alg"],
                include_options=sec["include"],
                sne=0,
                src_isn=si,
                dst_isn=di,
                master_key=MASTER,
                packet=pkt6,
                traffic_key=tk,
                mac=m,
            )
    # 2. HMAC-SHA-256-128 connections.
    payload = bytes(range(256)) * 2
    for fam, (cl, sv) in (("v4", (C4, S4)), ("v6", (C6, S6))):
        for include in (True, False):
            cport, sport = 50000 if include else 50001, 179
            cisn, sisn = 0x01020304, 0xF0E0D0C0
            ao_c = bytes([0x1D, 20, 61, 84]) + bytes(16)
            ao_s = bytes([0x1D, 20, 84, 61]) + bytes(16)
            segs = [
                (cl, sv, tcp_header(cport, sport, cisn, 0, 0x02, bytes.fromhex("020405b404020101") + ao_c), cisn, 0),
                (sv, cl, tcp_header(sport, cport, sisn, cisn + 1, 0x12, bytes.fromhex("020405b404020101") + ao_s), sisn, cisn),
                (cl, sv, tcp_header(cport, sport, cisn + 1, sisn + 1, 0x18, bytes.fromhex("0101080a00000001000000aa") + ao_c) + payload[:300], cisn, sisn),
                (sv, cl, tcp_header(sport, cport, sisn + 1, cisn + 301, 0x18, bytes.fromhex("0101080a000000bb00000001") + ao_s) + payload[:57], sisn, cisn),
            ]
            base = "sha256-%s-%s" % (fam, "incl" if include else "excl")
            for i, (a, b, tcp, si, di) in enumerate(segs, 1):
                pkt = ip_packet(a, b, tcp)
                tk = kdf("hmac-sha256-128", MASTER, context(pkt, si, di))
                pkt, m = set_ao_mac(pkt, "hmac-sha256-128", tk, include)
                record(
                    out,
                    "%s.%d" % (base, i),
                    algorithm="hmac-sha256-128",
                    include_options=include,
                    sne=0,
                    src_isn=si,
                    dst_isn=di,
                    master_key=MASTER,
                    packet=pkt,
                    traffic_key=tk,
                    mac=m,
                )
    # 3. SNE: a connection whose client sequence number wraps (SNE 1 after
    #    the wrap), for both RFC 5926 algorithms.
    mk = bytes(range(16))
    cisn, sisn = 0xFFFFFF00, 0x00001000
    ao_c = bytes([0x1D, 16, 7, 8]) + bytes(12)
    ao_s = bytes([0x1D, 16, 8, 7]) + bytes(12)
    for alg in ("hmac-sha1-96", "aes128-cmac-96"):
        segs = [
            (C4, S4, tcp_header(40000, 179, cisn, 0, 0x02, ao_c), cisn, 0, 0),
            (S4, C4, tcp_header(179, 40000, sisn, cisn + 1, 0x12, ao_s), sisn, cisn, 0),
            # 255 octets from 0xffffff01: the next sequence number is 0.
            (C4, S4, tcp_header(40000, 179, cisn + 1, sisn + 1, 0x18, ao_c) + bytes(255), cisn, sisn, 0),
            (C4, S4, tcp_header(40000, 179, 0x00000000, sisn + 1, 0x18, ao_c) + b"after the wrap", cisn, sisn, 1),
            (S4, C4, tcp_header(179, 40000, sisn + 1, 14, 0x10, ao_s), sisn, cisn, 0),
        ]
        for i, (a, b, tcp, si, di, sne) in enumerate(segs, 1):
            pkt = ip_packet(a, b, tcp)
            tk = kdf(alg, mk, context(pkt, si, di))
            pkt, m = set_ao_mac(pkt, alg, tk, True, sne=sne)
            record(
                out,
                "sne-wrap-%s.%d" % (alg, i),
                algorithm=alg,
                include_options=True,
                sne=sne,
                src_isn=si,
                dst_isn=di,
                master_key=mk,
                packet=pkt,
                traffic_key=tk,
                mac=m,
            )
    # 4. TCP-MD5 (RFC 2385).
    md5_opt = bytes([1, 1, 19, 18]) + bytes(16)
    for fam, (cl, sv) in (("v4", (C4, S4)), ("v6", (C6, S6))):
        for i, (a, b, tcp) in enumerate(
            [
                (cl, sv, tcp_header(33000, 179, 1000, 0, 0x02, bytes.fromhex("020405b4") + md5_opt)),
                (sv, cl, tcp_header(179, 33000, 5000, 1001, 0x12, bytes.fromhex("020405b4") + md5_opt)),
                (cl, sv, tcp_header(33000, 179, 1001, 5001, 0x18, md5_opt) + b"BGP OPEN-ish payload"),
            ],
            1,
        ):
            pkt = ip_packet(a, b, tcp)
            d = md5_digest(pkt, b"md5-secret")
            src, dst, t = split(pkt)
            t = bytearray(t)
            at, _ = find_option(t[: (t[12] >> 4) * 4], 19)
            t[at + 2 : at + 18] = d
            pkt = ip_packet(src, dst, bytes(t))
            record(out, "md5-%s.%d" % (fam, i), algorithm="md5", md5_key=b"md5-secret", packet=pkt, mac=d)
    return "\n".join(out)


if __name__ == "__main__":
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    check_rfc_ipv6(here + "/rfc9235-ipv6.txt")
    text = constructed(here + "/rfc9235-ipv4.txt")
    if "--check" in sys.argv:
        assert open(here + "/tcpao-constructed.txt").read() == text, "tcpao-constructed.txt differs"
        print("tcpao-constructed.txt: up to date")
    else:
        open(here + "/tcpao-constructed.txt", "w").write(text)
        print("tcpao-constructed.txt written")
