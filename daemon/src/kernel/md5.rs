//! TCP-MD5 (RFC 2385) keys on one socket, `setsockopt(TCP_MD5SIG_EXT)` with
//! `struct tcp_md5sig` (uapi `linux/tcp.h`, reference §3).
//!
//! The fallback when the kernel has no TCP-AO. TCP-MD5 has one key per peer
//! and prefix and no KeyIDs: setting a key for a peer that already has one
//! replaces it in place, and on a live connection both ends must change
//! within the retransmission window, so there is no hitless rollover
//! (reference §3.2). A listening socket's key is copied, as a host key, to
//! each connection it accepts.
//!
//! aokd's TCP-MD5 key for an MKT is the MKT's 32-octet master key, used
//! as-is (docs/kernel.md): both peers derive the same master key, so both
//! install the same TCP-MD5 key, and nothing is lost by truncation.

use std::net::IpAddr;
use std::os::fd::AsFd;

use super::sys::{self, TcpMd5Sig, SOL_TCP, TCP_MD5SIG_FLAG_PREFIX, TCP_MD5SIG_MAXKEYLEN};
use super::{host_prefix, peer_sockaddr, KernelError, KeyContext, Operation};

/// Builds the command for `peer`/`prefix` on socket `fd` (key left empty).
fn command(
    fd: std::os::fd::BorrowedFd<'_>,
    peer: IpAddr,
    prefix: Option<u8>,
) -> Result<TcpMd5Sig, KernelError> {
    let op = Operation::Md5SigExt;
    let context = KeyContext::peer(peer, prefix.unwrap_or_else(|| host_prefix(peer)));
    let mut cmd = TcpMd5Sig::zeroed();
    cmd.addr = peer_sockaddr(fd, peer, op, context)?;
    if let Some(p) = prefix {
        if p > host_prefix(peer) {
            return Err(KernelError::Invalid {
                op,
                context,
                reason: "the prefix is longer than the address",
            });
        }
        cmd.flags = TCP_MD5SIG_FLAG_PREFIX;
        cmd.prefixlen = p;
    }
    Ok(cmd)
}

/// Sets the TCP-MD5 key for `peer` (a host key when `prefix` is `None`,
/// otherwise for `peer/prefix` with `TCP_MD5SIG_FLAG_PREFIX`). `key` must be
/// 1 to 80 octets (`TCP_MD5SIG_MAXKEYLEN`); an existing key for the same
/// peer and prefix is replaced. The command's copy of the key is zeroized
/// when this returns.
pub fn set_key(
    fd: impl AsFd,
    peer: IpAddr,
    prefix: Option<u8>,
    key: &[u8],
) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let op = Operation::Md5SigExt;
    let context = KeyContext::peer(peer, prefix.unwrap_or_else(|| host_prefix(peer)));
    if key.is_empty() {
        // keylen 0 would delete the key instead.
        return Err(KernelError::Invalid {
            op,
            context,
            reason: "an empty TCP-MD5 key",
        });
    }
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(KernelError::Invalid {
            op,
            context,
            reason: "the key is longer than TCP_MD5SIG_MAXKEYLEN (80 octets)",
        });
    }
    let mut cmd = command(fd, peer, prefix)?;
    cmd.key[..key.len()].copy_from_slice(key);
    // At most 80, checked above.
    cmd.keylen = key.len() as u16;
    let result = sys::setsockopt_raw(fd, SOL_TCP, sys::TCP_MD5SIG_EXT, &cmd);
    cmd.wipe_key();
    result.map_err(|e| KernelError::os(op, context, e))
}

/// Deletes the TCP-MD5 key for `peer` (`prefix` as in [`set_key`]; the
/// kernel matches it exactly) by setting `tcpm_keylen` 0. No such key gives
/// [`Cause::NotFound`](super::Cause::NotFound).
pub fn del_key(fd: impl AsFd, peer: IpAddr, prefix: Option<u8>) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let context = KeyContext::peer(peer, prefix.unwrap_or_else(|| host_prefix(peer)));
    let cmd = command(fd, peer, prefix)?;
    sys::setsockopt_raw(fd, SOL_TCP, sys::TCP_MD5SIG_EXT, &cmd)
        .map_err(|e| KernelError::os(Operation::Md5SigExt, context, e))
}

#[cfg(test)]
mod tests {
    use super::super::Cause;
    use super::*;

    #[test]
    fn set_and_delete_on_a_closed_socket() {
        let Ok(support) = super::super::probe() else {
            return;
        };
        if !support.tcp_md5 {
            eprintln!("no TCP-MD5 in this kernel; skipping");
            return;
        }
        let sock = sys::tcp_socket(false).expect("socket");
        let peer: IpAddr = "192.0.2.9".parse().expect("literal");
        set_key(&sock, peer, None, &[7; 32]).expect("set");
        // Replacing in place is allowed.
        set_key(&sock, peer, None, &[8; 32]).expect("replace");
        set_key(
            &sock,
            "198.51.100.0".parse().expect("literal"),
            Some(24),
            &[1; 80],
        )
        .expect("prefix key");
        del_key(&sock, peer, None).expect("delete");
        let e = del_key(&sock, peer, None).expect_err("already gone");
        assert_eq!(e.cause(), Some(Cause::NotFound), "{e}");
        assert!(
            e.to_string().starts_with("TCP_MD5SIG_EXT for 192.0.2.9: "),
            "{e}"
        );
        // v4 peers on v6 sockets become v4-mapped keys.
        let sock6 = sys::tcp_socket(true).expect("socket");
        set_key(&sock6, peer, None, &[7; 32]).expect("v4-mapped");
        del_key(&sock6, peer, None).expect("v4-mapped delete");
    }

    #[test]
    fn bad_keys_are_refused_before_the_kernel() {
        let sock = sys::tcp_socket(false).expect("socket");
        let peer: IpAddr = "192.0.2.9".parse().expect("literal");
        assert!(matches!(
            set_key(&sock, peer, None, &[]),
            Err(KernelError::Invalid { .. })
        ));
        assert!(matches!(
            set_key(&sock, peer, None, &[0; 81]),
            Err(KernelError::Invalid { .. })
        ));
        assert!(matches!(
            set_key(&sock, peer, Some(33), &[1]),
            Err(KernelError::Invalid { .. })
        ));
    }
}
