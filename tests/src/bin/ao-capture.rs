//! `ao-capture FILE SEGMENTS [ALG]`: writes a pcap file (LINKTYPE_RAW) of
//! one TCP-AO connection, a SYN, a SYN-ACK and SEGMENTS 1,500-octet data
//! segments alternating between the ends, every one signed with the master
//! key below, for timing `aoctl verify` on a capture file end to end
//! (docs/performance.md). Prints the `--mkt` arguments that verify it.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use aokd_tcpao::{
    compute_mac, derive_traffic_key, parse_ip_packet, AuthOption, KeyContext, MacAlgorithm,
};

const MASTER_KEY: &[u8] = b"capture master key, 32 octets!!!";
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const SERVER: [u8; 4] = [192, 0, 2, 2];
const CLIENT_PORT: u16 = 40000;
const SERVER_PORT: u16 = 179;
const CLIENT_ISN: u32 = 0x1000_0000;
const SERVER_ISN: u32 = 0x2000_0000;
const PACKET_LEN: usize = 1500;

/// An IPv4 packet with a TCP-AO option (MAC zero): `PACKET_LEN` octets
/// with data, or headers only.
fn packet(from_client: bool, seq: u32, ack: u32, flags: u8, mac_len: usize, data: bool) -> Vec<u8> {
    let (src, dst, sp, dp, kid, rnext) = if from_client {
        (CLIENT, SERVER, CLIENT_PORT, SERVER_PORT, 1u8, 2u8)
    } else {
        (SERVER, CLIENT, SERVER_PORT, CLIENT_PORT, 2u8, 1u8)
    };
    let mut opts = vec![29, (4 + mac_len) as u8, kid, rnext];
    opts.resize(opts.len() + mac_len, 0);
    while opts.len() % 4 != 0 {
        opts.insert(0, 1);
    }
    let tcp_hdr_len = 20 + opts.len();
    let total = if data { PACKET_LEN } else { 20 + tcp_hdr_len };
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sp.to_be_bytes());
    p.extend_from_slice(&dp.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.push(((tcp_hdr_len / 4) as u8) << 4);
    p.push(flags);
    p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(&opts);
    let mut x = 7u8;
    while p.len() < total {
        x = x.wrapping_mul(31).wrapping_add(17);
        p.push(x);
    }
    p
}

/// Signs `p` with the traffic key of its direction (RFC 5925 5.2).
fn sign(p: &mut [u8], alg: MacAlgorithm, src_isn: u32, dst_isn: u32) -> Result<(), String> {
    let (mac, at) = {
        let s = parse_ip_packet(p).map_err(|e| e.to_string())?;
        let ctx = KeyContext::new(&s.addresses, s.src_port, s.dst_port, src_isn, dst_isn);
        let key = derive_traffic_key(alg, MASTER_KEY, &ctx);
        let mac = compute_mac(&key, &s, 0, true).map_err(|e| e.to_string())?;
        let AuthOption::Ao(ao) = s.auth else {
            return Err("no TCP-AO option".into());
        };
        (mac, 20 + ao.offset + 4)
    };
    p[at..at + mac.as_bytes().len()].copy_from_slice(mac.as_bytes());
    Ok(())
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let file = args.next().ok_or("usage: ao-capture FILE SEGMENTS [ALG]")?;
    let n: u32 = args
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or("SEGMENTS must be a number")?;
    let alg_name = args.next().unwrap_or_else(|| "hmac-sha1-96".into());
    let alg = MacAlgorithm::ALL
        .into_iter()
        .find(|a| a.name() == alg_name)
        .ok_or(format!("unknown algorithm {alg_name}"))?;
    let out = std::fs::File::create(&file).map_err(|e| format!("{file}: {e}"))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let put = |w: &mut BufWriter<std::fs::File>, p: &[u8]| -> Result<(), String> {
        let len = p.len() as u32;
        let mut rec = Vec::with_capacity(16);
        rec.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        rec.extend_from_slice(&0u32.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        w.write_all(&rec)
            .and_then(|()| w.write_all(p))
            .map_err(|e| e.to_string())
    };
    // Classic pcap header: magic, 2.4, snaplen 65535, LINKTYPE_RAW (101).
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&[0; 8]);
    hdr.extend_from_slice(&65_535u32.to_le_bytes());
    hdr.extend_from_slice(&101u32.to_le_bytes());
    w.write_all(&hdr).map_err(|e| e.to_string())?;
    let ml = alg.mac_len();
    let mut syn = packet(true, CLIENT_ISN, 0, 0x02, ml, false);
    sign(&mut syn, alg, CLIENT_ISN, 0)?;
    put(&mut w, &syn)?;
    let mut syn_ack = packet(false, SERVER_ISN, CLIENT_ISN + 1, 0x12, ml, false);
    sign(&mut syn_ack, alg, SERVER_ISN, CLIENT_ISN)?;
    put(&mut w, &syn_ack)?;
    let (mut cseq, mut sseq) = (CLIENT_ISN + 1, SERVER_ISN + 1);
    let mut octets = 0u64;
    for i in 0..n {
        let from_client = i % 2 == 0;
        let (seq, ack) = if from_client {
            (cseq, sseq)
        } else {
            (sseq, cseq)
        };
        let mut p = packet(from_client, seq, ack, 0x18, ml, true);
        let data = (p.len() - 20 - usize::from(p[32] >> 4) * 4) as u32;
        if from_client {
            sign(&mut p, alg, CLIENT_ISN, SERVER_ISN)?;
            cseq = cseq.wrapping_add(data);
        } else {
            sign(&mut p, alg, SERVER_ISN, CLIENT_ISN)?;
            sseq = sseq.wrapping_add(data);
        }
        octets += p.len() as u64;
        put(&mut w, &p)?;
    }
    w.flush().map_err(|e| e.to_string())?;
    let hex = MASTER_KEY
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    println!("--mkt 1:{alg_name}:{hex} --mkt 2:{alg_name}:{hex}");
    eprintln!("ao-capture: {file}: {} segments, {octets} IP octets", n + 2);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ao-capture: {e}");
            ExitCode::FAILURE
        }
    }
}
