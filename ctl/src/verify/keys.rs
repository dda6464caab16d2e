//! The keys `aoctl verify` tries: `--mkt`, `--md5`, and `--from-daemon`
//! (the MKTs aokd holds, asked over its control socket with the
//! `mkt-keys` command of docs/control.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use aokd_api::control::PROTOCOL_VERSION;
use aokd_api::control::{Command, MktKey, Request, Response, ResponseData, ResponseResult};
use aokd_tcpao::MacAlgorithm;
use aokd_tcpao::Secret;
use aokd_tcpao::{AoKey, KeySet};
use zeroize::Zeroizing;

/// How long to wait for the daemon.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest master key accepted (Linux TCP_AO_MAXKEYLEN).
const MAX_KEY_LEN: usize = 80;

fn parse_hex_key(s: &str, what: &str) -> Result<Secret, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    let bytes = Zeroizing::new(hex::decode(s).map_err(|_| format!("{what}: key is not hex"))?);
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
        return Err(format!("{what}: key must be 1 to {MAX_KEY_LEN} octets"));
    }
    Ok(Secret::new(bytes.to_vec()))
}

/// Parses `KEYID:ALG:HEXKEY[:exclude-options]` (or `:include-options`,
/// the default).
pub fn parse_mkt(spec: &str) -> Result<AoKey, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let what = "--mkt";
    if !(3..=4).contains(&parts.len()) {
        return Err(format!(
            "{what}: expected KEYID:ALG:HEXKEY[:exclude-options]"
        ));
    }
    let key_id: u8 = parts[0]
        .parse()
        .map_err(|_| format!("{what}: KeyID {:?} is not 0..255", parts[0]))?;
    let algorithm: MacAlgorithm = parts[1].parse().map_err(|e| format!("{what}: {e}"))?;
    let master_key = parse_hex_key(parts[2], what)?;
    let include_options = match parts.get(3) {
        None | Some(&"include-options") => true,
        Some(&"exclude-options") => false,
        Some(other) => {
            return Err(format!(
                "{what}: unknown flag {other:?} (expected exclude-options)"
            ))
        }
    };
    Ok(AoKey {
        key_id,
        algorithm,
        include_options,
        master_key,
        retired: false,
    })
}

/// Parses a `--md5` key.
pub fn parse_md5(spec: &str) -> Result<Secret, String> {
    parse_hex_key(spec, "--md5")
}

/// Maps one of the daemon's MKTs to verification keys: its SendID (KeyID of
/// the segments aokd's host sends) and its RecvID (KeyID of the segments it
/// receives), both with the same master key.
pub fn keys_of_mkt(mkt: &MktKey) -> Result<Vec<AoKey>, String> {
    let what = format!("daemon MKT of peer {}", mkt.peer);
    let algorithm: MacAlgorithm = mkt.algorithm.parse().map_err(|e| format!("{what}: {e}"))?;
    let master_key = parse_hex_key(&mkt.master_key, &what)?;
    let mut ids = vec![mkt.send_id];
    if mkt.recv_id != mkt.send_id {
        ids.push(mkt.recv_id);
    }
    Ok(ids
        .into_iter()
        .map(|key_id| AoKey {
            key_id,
            algorithm,
            include_options: mkt.include_options,
            master_key: master_key.clone(),
            retired: mkt.retired_at.is_some(),
        })
        .collect())
}

/// Asks aokd for its MKTs (`mkt-keys`; only answered for root). Each MKT
/// is returned as TCP-AO keys under both KeyIDs, and its master key as a
/// TCP-MD5 key too: aokd installs the master key as the TCP-MD5 key for
/// peers without TCP-AO (docs/kernel.md).
pub fn from_daemon(socket: &Path) -> Result<KeySet, String> {
    let name = socket.display();
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to aokd at {name}: {e}"))?;
    let _ = stream.set_read_timeout(Some(DAEMON_TIMEOUT));
    let _ = stream.set_write_timeout(Some(DAEMON_TIMEOUT));
    let request = Request {
        version: PROTOCOL_VERSION,
        command: Command::MktKeys,
    };
    let mut line = serde_json::to_string(&request).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("{name}: {e}"))?;
    // The answer carries master keys: zeroized when dropped.
    let mut answer = Zeroizing::new(String::new());
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("{name}: {e}"))?;
    if answer.is_empty() {
        return Err(format!(
            "{name}: aokd closed the connection without answering"
        ));
    }
    let response: Response = serde_json::from_str(&answer)
        .map_err(|e| format!("{name}: malformed answer from aokd: {e}"))?;
    match response.result {
        ResponseResult::Ok {
            data: ResponseData::MktKeys { keys },
        } => {
            let mut set = KeySet::default();
            // Live MKTs first: a retired key is only tried after them.
            let (live, retired): (Vec<&MktKey>, Vec<&MktKey>) =
                keys.iter().partition(|m| m.retired_at.is_none());
            for mkt in live.into_iter().chain(retired) {
                set.ao.extend(keys_of_mkt(mkt)?);
                let key =
                    parse_hex_key(&mkt.master_key, &format!("daemon MKT of peer {}", mkt.peer))?;
                if set.md5.contains(&key) || set.md5_retired.contains(&key) {
                    continue;
                }
                if mkt.retired_at.is_some() {
                    set.md5_retired.push(key);
                } else {
                    set.md5.push(key);
                }
            }
            Ok(set)
        }
        ResponseResult::Ok { .. } => Err(format!("{name}: unexpected answer from aokd")),
        ResponseResult::Error { message } => Err(format!("aokd refused: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mkt_specs() {
        let k = parse_mkt("61:hmac-sha1-96:74657374766563746f72").unwrap();
        assert_eq!(k.key_id, 61);
        assert_eq!(k.algorithm, MacAlgorithm::HmacSha1_96);
        assert!(k.include_options);
        assert_eq!(k.master_key.as_bytes(), b"testvector");
        let k = parse_mkt("84:aes128-cmac-96:0x74657374766563746f72:exclude-options").unwrap();
        assert!(!k.include_options);
        for bad in [
            "61:hmac-sha1-96",
            "256:hmac-sha1-96:00",
            "1:md5:00",
            "1:hmac-sha1-96:zz",
            "1:hmac-sha1-96:00:exclude",
            "1:hmac-sha1-96:",
        ] {
            assert!(parse_mkt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daemon_mkt_gives_both_key_ids() {
        let mkt = MktKey {
            peer: "r1".into(),
            send_id: 3,
            recv_id: 9,
            algorithm: "hmac-sha256-128".into(),
            include_options: false,
            master_key: "00112233".into(),
            retired_at: None,
        };
        let keys = keys_of_mkt(&mkt).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!((keys[0].key_id, keys[1].key_id), (3, 9));
        assert!(keys.iter().all(|k| !k.include_options && !k.retired));
        let retired = MktKey {
            retired_at: Some(1_700_000_000),
            ..mkt
        };
        assert!(keys_of_mkt(&retired).unwrap().iter().all(|k| k.retired));
    }
}
