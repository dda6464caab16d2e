//! strongSwan as the peer of aokd: Debian's `charon` (strongSwan 5.9.8,
//! `/usr/lib/ipsec/charon`) inside a network namespace, configured through
//! its own vici socket with `swanctl`, and its IKE SAs read back with
//! `swanctl --list-sas` ([`Charon`]).
//!
//! Everything charon needs is private to the test:
//!
//! - `STRONGSWAN_CONF` names a strongswan.conf in the test's directory; it
//!   loads an explicit plugin list (no `load_modular`, so the host's
//!   `/etc/strongswan.d` does not matter), logs to stderr, and puts the vici
//!   socket (`charon.plugins.vici.socket`) in the test's directory;
//! - charon's pid file is fixed at build time (`/var/run/charon.pid` on
//!   Debian), so charon runs under `unshare -m` with a private tmpfs on
//!   `/run`: several charons (and the host's own) never see each other's pid
//!   file;
//! - the connection and the PSK are loaded with
//!   `swanctl --load-all --file <dir>/swanctl.conf --uri <vici>`; with
//!   certificate authentication ([`SwanPubkey`]) swanctl reads the
//!   certificate from `<dir>/x509`, the CAs from `<dir>/x509ca` and the
//!   private key from `<dir>/private` (directories relative to the
//!   swanctl.conf it loads, strongSwan 5.7.2 and later).
//!
//! charon ignores IKE datagrams unless one of its two UDP ports is 500, so it
//! listens on 500 and 4500 inside its namespace. aokd offers charon no
//! TCP-AO child (charon does not announce TCP-AO keying), so the IKE SA is
//! childless (RFC 6023) in both directions.
//!
//! [`parse_list_sas`] reads the text of `swanctl --list-sas` (format in
//! strongSwan's `src/swanctl/commands/list_sas.c`); [`udp_payloads`] reads
//! the UDP datagrams of a tcpdump capture (for fuzzing seeds and for
//! checking which notifies went over the wire).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::host::{can_run, is_root, on_path, target_dir};
use crate::netns::Netns;
use crate::process::Proc;

/// Debian's charon binary.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// The plugin directory of Debian's strongSwan packages.
pub const PLUGIN_DIR: &str = "/usr/lib/ipsec/plugins";
/// The plugins charon loads: crypto for aes256gcm16-prfsha256-x25519
/// (`openssl` gives X25519, `gcm` and `aes` AES-GCM), PSK authentication,
/// certificates (`x509`, `pem`, `pkcs1`, `pkcs8`, `pubkey`; Ed25519 and
/// ECDSA keys and signatures come from `openssl`, as Debian ships no
/// `curve25519` plugin outside libstrongswan-extra-plugins), the kernel
/// interface (addresses and routes), the UDP sockets and vici.
pub const PLUGINS: &str = "random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 pkcs8 \
                           pubkey x509 kernel-netlink socket-default vici";
/// The plugin files [`PLUGINS`] needs beyond libcharon itself (gcm and
/// openssl come from libstrongswan-standard-plugins on Debian, the
/// certificate plugins from libstrongswan).
const NEEDED_PLUGINS: &[&str] = &[
    "openssl",
    "gcm",
    "vici",
    "kernel-netlink",
    "socket-default",
    "x509",
    "pem",
    "pkcs1",
    "pkcs8",
    "pubkey",
];

/// How long charon may take to open its vici socket.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// Whether the strongSwan tests can run: the namespace prerequisites
/// (root, `ip`, `tcpdump`, the aokd and aoctl binaries), `unshare`,
/// `nft`, Debian's charon with the plugins [`PLUGINS`] names, and
/// `swanctl`. A missing one fails under `CI` and skips otherwise
/// ([`can_run`]).
pub fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces, mount namespaces, UDP port 500)".to_string());
    }
    for (cmd, pkg) in [
        ("ip", "iproute2"),
        ("tcpdump", "tcpdump"),
        ("unshare", "util-linux"),
        ("nft", "nftables"),
        ("swanctl", "strongswan-swanctl"),
    ] {
        if !on_path(cmd) {
            missing.push(format!("`{cmd}` (apt-get install -y {pkg})"));
        }
    }
    if !Path::new(CHARON).is_file() {
        missing.push(format!("{CHARON} (apt-get install -y strongswan-charon)"));
    }
    for p in NEEDED_PLUGINS {
        let f = Path::new(PLUGIN_DIR).join(format!("libstrongswan-{p}.so"));
        if !f.is_file() {
            missing.push(format!(
                "{} (apt-get install -y libstrongswan-standard-plugins strongswan-charon)",
                f.display()
            ));
        }
    }
    for bin in ["aokd", "aoctl"] {
        if !target_dir().join(bin).exists() {
            missing.push(format!("{bin} binary (cargo build --workspace)"));
        }
    }
    if missing.is_empty() {
        if let Err(e) = Netns::new() {
            missing.push(format!("network namespaces: {e}"));
        }
    }
    can_run(test, &missing)
}

/// What charon is configured with: its address and the peer's, their IKE
/// identities (IP addresses, as aokd's defaults), the PSK (hex) and extra
/// text for the connection and for the `charon` section.
#[derive(Clone, Debug)]
pub struct CharonConfig {
    /// The swanctl connection's name.
    pub conn: String,
    pub local: String,
    pub remote: String,
    /// The PSK as hex digits (aokd's PSK file holds the same digits).
    pub psk_hex: String,
    /// Appended inside `connections.<conn> { }` (e.g. `rekey_time = 0`).
    pub conn_extra: String,
    /// Appended inside `charon { }` (e.g. `retransmit_timeout = 2`).
    pub charon_extra: String,
    /// The remote identity when it is not `remote` (e.g. `%any` when
    /// `remote` is a prefix of many initiators); the PSK is then bound to
    /// the local identity alone.
    pub remote_id: Option<String>,
    /// Certificate authentication (`auth = pubkey` on both ends) instead
    /// of the PSK.
    pub pubkey: Option<SwanPubkey>,
    /// The CPUs charon (all its threads) may run on, as taskset(1) takes
    /// them (`"0"`), for benchmarks; `None`: any.
    pub cpus: Option<String>,
}

/// charon's certificate, private key and trust anchors (PEM), for
/// `auth = pubkey`: written to `x509/local.pem`, `private/local.key`
/// (mode 0600) and `x509ca/ca-N.pem` next to swanctl.conf. The local
/// certificate is named in the connection (`certs = local.pem`); the peer
/// must authenticate with a certificate chaining to one of `cacerts`
/// (intermediates go there too: charon builds chains from what it holds).
#[derive(Clone)]
pub struct SwanPubkey {
    pub cert: String,
    pub key: String,
    pub cacerts: Vec<String>,
}

impl std::fmt::Debug for SwanPubkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwanPubkey")
            .field("cacerts", &self.cacerts.len())
            .finish_non_exhaustive()
    }
}

impl CharonConfig {
    pub fn new(local: &str, remote: &str, psk_hex: &str) -> CharonConfig {
        CharonConfig {
            conn: "aokd".into(),
            local: local.into(),
            remote: remote.into(),
            psk_hex: psk_hex.trim().into(),
            conn_extra: String::new(),
            charon_extra: String::new(),
            remote_id: None,
            pubkey: None,
            cpus: None,
        }
    }
}

/// A running charon in a network namespace, with its directory, vici URI
/// and log (stderr). Killed when dropped.
pub struct Charon {
    pub dir: PathBuf,
    pub cfg: CharonConfig,
    proc: Proc,
}

impl Charon {
    /// Writes strongswan.conf and swanctl.conf under `dir`, starts charon in
    /// `ns` (private `/run`), waits for its vici socket and loads the
    /// connection and the PSK with swanctl.
    pub fn start(ns: &Netns, dir: &Path, cfg: CharonConfig) -> Result<Charon, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let vici = dir.join("charon.vici");
        let conf = dir.join("strongswan.conf");
        fs::write(&conf, strongswan_conf(&vici, &cfg.charon_extra))
            .map_err(|e| format!("write {}: {e}", conf.display()))?;
        fs::write(dir.join("swanctl.conf"), swanctl_conf(&cfg))
            .map_err(|e| format!("write swanctl.conf: {e}"))?;
        if let Some(pk) = &cfg.pubkey {
            write_credentials(dir, pk)?;
        }
        let mut cmd = ns.command("unshare");
        // A private mount namespace with its own /run: the pid file
        // /var/run/charon.pid (/var/run is /run) is this charon's alone.
        let pin = cfg
            .cpus
            .as_ref()
            .map(|c| format!("taskset -c {c} "))
            .unwrap_or_default();
        cmd.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs aokd-test-run /run && exec {pin}{CHARON}"
            ))
            .env("STRONGSWAN_CONF", &conf);
        let proc = Proc::spawn(&format!("charon in {}", ns.name()), cmd);
        let mut charon = Charon {
            dir: dir.to_path_buf(),
            cfg,
            proc,
        };
        let deadline = Instant::now() + START_WAIT;
        // The socket appearing is no event we can wait on; charon announces
        // nothing on stderr once vici listens.
        loop {
            if vici.exists() && charon.swanctl(&["--stats"]).is_ok() {
                break;
            }
            if charon.proc.wait_exit(Duration::ZERO).is_some() || Instant::now() > deadline {
                return Err(format!(
                    "charon did not open {} within {START_WAIT:?}\n{}",
                    vici.display(),
                    charon.proc.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let file = dir.join("swanctl.conf");
        let file = file.to_string_lossy().into_owned();
        charon.swanctl(&["--load-all", "--noprompt", "--file", &file])?;
        Ok(charon)
    }

    /// charon's process id (`unshare` and `sh` exec it).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The vici socket's URI (`swanctl --uri`).
    pub fn uri(&self) -> String {
        format!("unix://{}", self.dir.join("charon.vici").display())
    }

    /// `swanctl ARGS --uri <vici>` (with this charon's STRONGSWAN_CONF, so
    /// swanctl loads no plugins the host lacks); its stdout, or an error
    /// with its output.
    pub fn swanctl(&self, args: &[&str]) -> Result<String, String> {
        let out: Output = Command::new("swanctl")
            .args(args)
            .arg("--uri")
            .arg(self.uri())
            .env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"))
            .output()
            .map_err(|e| format!("cannot run swanctl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "`swanctl {}` failed ({}): {text}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The IKE SAs of `swanctl --list-sas`.
    pub fn sas(&self) -> Result<Vec<SwanSa>, String> {
        self.swanctl(&["--list-sas", "--noblock"])
            .map(|t| parse_list_sas(&t))
    }

    /// The established IKE SAs (an error listing them counts as none).
    pub fn established(&self) -> Vec<SwanSa> {
        self.sas()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.state == "ESTABLISHED")
            .collect()
    }

    /// `swanctl --initiate --ike <conn>`: a childless IKE SA (RFC 6023),
    /// returning once it is up (or failed).
    pub fn initiate(&self) -> Result<String, String> {
        let conn = self.cfg.conn.clone();
        self.swanctl(&["--initiate", "--ike", &conn, "--timeout", "30"])
    }

    /// Polls `swanctl --list-sas` until `cond` holds or `timeout` passes;
    /// returns the SAs and how long it took, or panics with charon's log.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[SwanSa]) -> bool,
    ) -> (Vec<SwanSa>, Duration) {
        let start = Instant::now();
        let mut last = Err("not asked yet".to_string());
        while start.elapsed() < timeout {
            last = self.sas();
            if let Ok(s) = &last {
                if cond(s) {
                    return (s.clone(), start.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "charon: {what} not seen within {timeout:?}; last list: {last:?}\n{}",
            self.log()
        );
    }

    /// charon's log so far (its stderr).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Whether charon still runs.
    pub fn running(&mut self) -> bool {
        self.proc.wait_exit(Duration::ZERO).is_none()
    }
}

/// strongswan.conf for one test charon.
fn strongswan_conf(vici: &Path, extra: &str) -> String {
    format!(
        r#"# Written by the aokd tests (tests/src/strongswan.rs).
charon {{
    load = {PLUGINS}
    port = 500
    port_nat_t = 4500
    install_routes = no
    install_virtual_ip = no
    plugins {{
        vici {{
            socket = unix://{vici}
        }}
    }}
    filelog {{
        stderr {{
            time_format = %T
            default = 1
            ike = 2
            net = 2
        }}
    }}
{extra}
}}
swanctl {{
    load = pem pkcs1 pkcs8 x509 pubkey random openssl
    socket = unix://{vici}
}}
"#,
        vici = vici.display(),
    )
}

/// Writes the files of [`SwanPubkey`] under `dir`.
fn write_credentials(dir: &Path, pk: &SwanPubkey) -> Result<(), String> {
    let write = |sub: &str, name: &str, text: &str, private: bool| -> Result<(), String> {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        crate::pki::write_file(&d.join(name), text.as_bytes(), private)
    };
    write("x509", "local.pem", &pk.cert, false)?;
    write("private", "local.key", &pk.key, true)?;
    for (i, ca) in pk.cacerts.iter().enumerate() {
        write("x509ca", &format!("ca-{i}.pem"), ca, false)?;
    }
    Ok(())
}

/// swanctl.conf: one IKEv2 connection authenticated by IP identities (by
/// the PSK, with its secret, or by certificates) with the test proposal.
fn swanctl_conf(cfg: &CharonConfig) -> String {
    if cfg.pubkey.is_some() {
        return format!(
            r#"connections {{
    {conn} {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        proposals = aes256gcm16-prfsha256-x25519
        local {{
            auth = pubkey
            certs = local.pem
            id = {local}
        }}
        remote {{
            auth = pubkey
            id = {remote_id}
        }}
{extra}
    }}
}}
"#,
            conn = cfg.conn,
            local = cfg.local,
            remote = cfg.remote,
            remote_id = cfg.remote_id.as_deref().unwrap_or(&cfg.remote),
            extra = cfg.conn_extra,
        );
    }
    format!(
        r#"connections {{
    {conn} {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        proposals = aes256gcm16-prfsha256-x25519
        local {{
            auth = psk
            id = {local}
        }}
        remote {{
            auth = psk
            id = {remote_id}
        }}
{extra}
    }}
}}
secrets {{
    ike-{conn} {{
        id-1 = {local}
{id2}        secret = 0x{psk}
    }}
}}
"#,
        conn = cfg.conn,
        local = cfg.local,
        remote = cfg.remote,
        remote_id = cfg.remote_id.as_deref().unwrap_or(&cfg.remote),
        id2 = match &cfg.remote_id {
            None => format!("        id-2 = {}\n", cfg.remote),
            Some(_) => String::new(),
        },
        psk = cfg.psk_hex,
        extra = cfg.conn_extra,
    )
}

/// One IKE SA of `swanctl --list-sas`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwanSa {
    /// The connection name (`(unnamed)` for a half-open responder SA).
    pub conn: String,
    pub unique_id: u32,
    /// `ESTABLISHED`, `CONNECTING`, `REKEYING`, `DELETING`, ...
    pub state: String,
    pub spi_i: u64,
    pub spi_r: u64,
    /// Whether charon is the initiator (its `*` is on the `_i` SPI).
    pub local_is_initiator: bool,
}

/// Parses the text of `swanctl --list-sas`: the first line of each IKE SA,
/// `<conn>: #<id>, <STATE>, IKEv2, <spi_i>_i[*] <spi_r>_r[*]`. Other lines
/// (addresses, algorithms, children) are indented and skipped.
pub fn parse_list_sas(text: &str) -> Vec<SwanSa> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with(' ') || line.is_empty() {
            continue;
        }
        let Some((conn, rest)) = line.split_once(": #") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(", ").collect();
        let [id, state, _version, spis] = fields.as_slice() else {
            continue;
        };
        let mut spi = spis.split_whitespace();
        let (Some(i), Some(r)) = (spi.next(), spi.next()) else {
            continue;
        };
        let hex = |s: &str, suffix: &str| {
            let s = s.trim_end_matches('*');
            s.strip_suffix(suffix)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
        };
        let (Some(spi_i), Some(spi_r), Ok(unique_id)) = (hex(i, "_i"), hex(r, "_r"), id.parse())
        else {
            continue;
        };
        out.push(SwanSa {
            conn: conn.to_string(),
            unique_id,
            state: state.to_string(),
            spi_i,
            spi_r,
            local_is_initiator: i.ends_with('*'),
        });
    }
    out
}

/// One UDP datagram of a capture.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: std::net::SocketAddrV4,
    pub dst: std::net::SocketAddrV4,
    pub payload: Vec<u8>,
}

/// The IPv4 UDP datagrams of a classic pcap file (as `tcpdump -w` writes on
/// an Ethernet-type interface such as a veth), in capture order. Anything
/// else (other link types, IPv6, fragments, truncated records) is skipped.
pub fn udp_payloads(pcap: &[u8]) -> Vec<Datagram> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let magic = [pcap[0], pcap[1], pcap[2], pcap[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return out,
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        })
    };
    if u32_at(pcap, 20) != Some(1) {
        // Not LINKTYPE_ETHERNET.
        return out;
    }
    let mut at = 24;
    while let Some(caplen) = u32_at(pcap, at + 8) {
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + caplen as usize) else {
            break;
        };
        at = start + caplen as usize;
        if let Some(d) = udp_in_ethernet(frame) {
            out.push(d);
        }
    }
    out
}

fn udp_in_ethernet(frame: &[u8]) -> Option<Datagram> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 17 || frag & 0x3fff != 0 || ihl < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let addr = |at: usize| -> Option<std::net::Ipv4Addr> {
        let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(b.into())
    };
    let (src, dst) = (addr(12)?, addr(16)?);
    let udp = ip.get(ihl..total.min(ip.len()))?;
    let port = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    let len = usize::from(port(4)?);
    let payload = udp.get(8..len)?.to_vec();
    Some(Datagram {
        src: std::net::SocketAddrV4::new(src, port(0)?),
        dst: std::net::SocketAddrV4::new(dst, port(2)?),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_sas() {
        // Real output of 5.9.8 (responder of a childless SA, then a
        // half-open one).
        let text = "aokd: #1, ESTABLISHED, IKEv2, 1212b13854c346fe_i d0ac020026594d26_r*\n\
                    \x20 local  '10.203.0.2' @ 10.203.0.2[500]\n\
                    \x20 remote '10.203.0.1' @ 10.203.0.1[500]\n\
                    \x20 AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519\n\
                    \x20 established 3s ago, rekeying in 14233s\n\
                    (unnamed): #2, CONNECTING, IKEv2, 663796e19f69d945_i* 0000000000000000_r\n";
        let sas = parse_list_sas(text);
        assert_eq!(sas.len(), 2);
        assert_eq!(sas[0].conn, "aokd");
        assert_eq!(sas[0].unique_id, 1);
        assert_eq!(sas[0].state, "ESTABLISHED");
        assert_eq!(sas[0].spi_i, 0x1212b13854c346fe);
        assert_eq!(sas[0].spi_r, 0xd0ac020026594d26);
        assert!(!sas[0].local_is_initiator);
        assert_eq!(sas[1].state, "CONNECTING");
        assert!(sas[1].local_is_initiator);
        assert!(parse_list_sas("garbage: #x, y\n  aokd: #1\n").is_empty());
    }

    #[test]
    fn reads_udp_from_pcap() {
        // One Ethernet/IPv4/UDP frame 10.0.0.1:500 -> 10.0.0.2:500, payload "ab".
        let mut pcap = vec![
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0,
        ];
        let mut frame = vec![0u8; 12];
        frame.extend([0x08, 0x00]);
        frame.extend([
            0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        frame.extend([0x01, 0xf4, 0x01, 0xf4, 0, 10, 0, 0, b'a', b'b']);
        let len = frame.len() as u32;
        pcap.extend([0u8; 8]);
        pcap.extend(len.to_le_bytes());
        pcap.extend(len.to_le_bytes());
        pcap.extend(&frame);
        let d = udp_payloads(&pcap);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].payload, b"ab");
        assert_eq!(d[0].src.to_string(), "10.0.0.1:500");
        assert_eq!(d[0].dst.port(), 500);
        // Truncated: nothing, no panic.
        assert!(udp_payloads(&pcap[..pcap.len() - 1]).is_empty());
        assert!(udp_payloads(&[1, 2, 3]).is_empty());
    }
}
