//! The last response of an IKE SA, kept for replay (RFC 7296 2.1: a
//! responder answers a retransmitted request with the same response).
//!
//! Most responses are kept as the datagrams sent. One that carries this
//! side's certificates (an IKE_AUTH answer with signature authentication)
//! is kept as its inner payload chain without the CERT payloads, and a
//! replay puts them back from the configuration it was built with and seals
//! the chain again, with the SA's next IV (issue: scale, memory per peer: a
//! certificate is a few hundred octets, the same for every peer of a group,
//! and an answered IKE_AUTH is what most of a route server's SAs hold until
//! the peer's next request). The peer gets the same message, encrypted with
//! another IV: the same payloads, the same AUTH.
//!
//! What is cut out is checked when it is stored: the CERT payloads must be
//! one run, in the order and with the octets of the configuration's
//! certificates, and putting them back must give the chain as sent; a
//! response that does not pass is kept as its datagrams.

use std::sync::Arc;

use super::config::SignatureAuth;
use super::window::Datagrams;
use crate::numbers::{CertEncoding, ExchangeType, PayloadType};

/// Length of a generic payload header (RFC 7296 3.2).
const GENERIC_HEADER_LEN: usize = 4;

/// A stored response ([`super::window::Window::store_response`]).
pub(super) enum StoredResponse {
    /// The datagrams as sent.
    Sealed(Datagrams),
    /// The plaintext without this side's certificates, sealed again when
    /// replayed.
    Plain(Box<PlainResponse>),
}

/// A response's inner payload chain with its CERT payloads cut out.
pub(super) struct PlainResponse {
    pub(super) exchange: ExchangeType,
    /// The type of the chain's first payload.
    pub(super) first_inner: PayloadType,
    /// The chain without the CERT payloads, which were at `cert_at`.
    chain: Vec<u8>,
    cert_at: u32,
    /// How many of `signature`'s certificates were sent, from the first.
    certs: u8,
    /// The Next Payload of the last CERT payload.
    after: PayloadType,
    /// The configuration the certificates came from (kept: a reload that
    /// changes the certificate does not change a stored response).
    signature: Arc<SignatureAuth>,
}

impl StoredResponse {
    /// The response `chain` (inner payloads, first `first_inner`) of
    /// `exchange`, sent as `sent`: kept as its plaintext without the
    /// certificates of `signature` when it carries them, else as `sent`.
    pub(super) fn new(
        exchange: ExchangeType,
        first_inner: PayloadType,
        chain: &[u8],
        signature: Option<&Arc<SignatureAuth>>,
        sent: Datagrams,
    ) -> StoredResponse {
        signature
            .filter(|s| !s.certificates.is_empty())
            .and_then(|s| PlainResponse::cut(exchange, first_inner, chain, s))
            .map_or(StoredResponse::Sealed(sent), |p| {
                StoredResponse::Plain(Box::new(p))
            })
    }
}

impl PlainResponse {
    /// `chain` without its CERT payloads, or `None` when they are not one
    /// run of `signature`'s certificates (from the first, in order) or
    /// putting them back would not give `chain`.
    fn cut(
        exchange: ExchangeType,
        first_inner: PayloadType,
        chain: &[u8],
        signature: &Arc<SignatureAuth>,
    ) -> Option<PlainResponse> {
        let (mut at, mut kind) = (0usize, first_inner);
        // (start, end, count, the last one's Next Payload)
        let mut run: Option<(usize, usize, u8, PayloadType)> = None;
        while kind != PayloadType::NONE {
            let header = chain.get(at..at + GENERIC_HEADER_LEN)?;
            let next = PayloadType(header[0]);
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let body = chain.get(at + GENERIC_HEADER_LEN..at.checked_add(len)?)?;
            if kind == PayloadType::CERT {
                let n = match run {
                    None => 0,
                    Some((_, end, n, _)) if end == at => n,
                    // A second run of CERT payloads.
                    Some(_) => return None,
                };
                let cert = signature.certificates.get(usize::from(n))?;
                if body.first() != Some(&CertEncoding::X509_SIGNATURE.0) || &body[1..] != cert {
                    return None;
                }
                run = Some((run.map_or(at, |r| r.0), at + len, n.checked_add(1)?, next));
            }
            at += len;
            kind = next;
        }
        let (start, end, certs, after) = run?;
        let mut kept = Vec::with_capacity(chain.len() - (end - start));
        kept.extend_from_slice(&chain[..start]);
        kept.extend_from_slice(&chain[end..]);
        let plain = PlainResponse {
            exchange,
            first_inner,
            chain: kept,
            cert_at: u32::try_from(start).ok()?,
            certs,
            after,
            signature: Arc::clone(signature),
        };
        (plain.chain() == chain).then_some(plain)
    }

    /// The inner payload chain as it was sent, the CERT payloads put back.
    pub(super) fn chain(&self) -> Vec<u8> {
        let at = self.cert_at as usize;
        let certs = &self.signature.certificates[..usize::from(self.certs)];
        let cut: usize = certs.iter().map(|c| GENERIC_HEADER_LEN + 1 + c.len()).sum();
        let mut out = Vec::with_capacity(self.chain.len() + cut);
        out.extend_from_slice(&self.chain[..at]);
        for (k, cert) in certs.iter().enumerate() {
            let next = if k + 1 < certs.len() {
                PayloadType::CERT
            } else {
                self.after
            };
            // Every certificate fitted in a payload when it was sent.
            let len = u16::try_from(GENERIC_HEADER_LEN + 1 + cert.len()).unwrap_or(u16::MAX);
            out.push(next.0);
            out.push(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.push(CertEncoding::X509_SIGNATURE.0);
            out.extend_from_slice(cert);
        }
        out.extend_from_slice(&self.chain[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sig::PrivateKey;
    use crate::ike::config::PeerKey;
    use crate::numbers::AuthMethod;
    use crate::wire::{self, AuthPayload, CertPayload, IdPayload, Payload};

    fn signature(certs: &[&[u8]]) -> Arc<SignatureAuth> {
        let key = PrivateKey::ed25519_from_seed(&[7; 32]).expect("key");
        Arc::new(SignatureAuth {
            peer: PeerKey::PublicKey(key.public_key()),
            private_key: key,
            certificates: certs.iter().map(|c| c.to_vec()).collect(),
        })
    }

    fn cert(c: &[u8]) -> Payload {
        Payload::Cert(CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: c.to_vec(),
        })
    }

    fn chain(payloads: &[Payload]) -> (PayloadType, Vec<u8>) {
        let mut out = Vec::new();
        let first = wire::emit_payload_chain(payloads, PayloadType::NONE, &mut out);
        (first, out)
    }

    fn id() -> Payload {
        Payload::IdR(IdPayload {
            id_type: crate::numbers::IdType::ID_FQDN,
            data: b"responder.example".to_vec(),
        })
    }

    fn auth() -> Payload {
        Payload::Auth(AuthPayload {
            method: AuthMethod::DIGITAL_SIGNATURE,
            data: vec![5; 80],
        })
    }

    fn store(payloads: &[Payload], sig: &Arc<SignatureAuth>) -> (Vec<u8>, StoredResponse) {
        let (first, c) = chain(payloads);
        let stored = StoredResponse::new(
            ExchangeType::IKE_AUTH,
            first,
            &c,
            Some(sig),
            vec![vec![1, 2, 3]],
        );
        (c, stored)
    }

    #[test]
    fn the_certificates_are_cut_out_and_put_back() {
        let sig = signature(&[&[0x30; 300], &[0x31; 200]]);
        let payloads = [id(), cert(&[0x30; 300]), cert(&[0x31; 200]), auth()];
        let (sent, stored) = store(&payloads, &sig);
        let StoredResponse::Plain(p) = stored else {
            panic!("kept sealed");
        };
        assert_eq!(p.certs, 2);
        assert_eq!(p.chain.len(), sent.len() - 2 * 5 - 500);
        assert_eq!(p.chain(), sent);
        assert_eq!(p.first_inner, PayloadType::IDR);
    }

    #[test]
    fn the_first_certificate_alone_and_a_chain_that_ends_with_it() {
        let sig = signature(&[&[0x30; 300], &[0x31; 200]]);
        let (sent, stored) = store(&[id(), auth(), cert(&[0x30; 300])], &sig);
        let StoredResponse::Plain(p) = stored else {
            panic!("kept sealed");
        };
        assert_eq!(p.certs, 1);
        assert_eq!(p.after, PayloadType::NONE);
        assert_eq!(p.chain(), sent);
    }

    #[test]
    fn what_is_not_this_sides_certificates_is_kept_sealed() {
        let sig = signature(&[&[0x30; 300], &[0x31; 200]]);
        let cases: [&[Payload]; 5] = [
            // No certificate at all.
            &[id(), auth()],
            // Another certificate.
            &[id(), cert(&[0x32; 300]), auth()],
            // The second without the first.
            &[id(), cert(&[0x31; 200]), auth()],
            // Two runs.
            &[id(), cert(&[0x30; 300]), auth(), cert(&[0x31; 200])],
            // Another encoding.
            &[
                id(),
                Payload::Cert(CertPayload {
                    encoding: CertEncoding(1),
                    data: vec![0x30; 300],
                }),
                auth(),
            ],
        ];
        for payloads in cases {
            let (_, stored) = store(payloads, &sig);
            assert!(
                matches!(&stored, StoredResponse::Sealed(d) if d == &vec![vec![1, 2, 3]]),
                "{payloads:?}"
            );
        }
        // No configuration with certificates.
        let (first, c) = chain(&[id(), cert(&[0x30; 300]), auth()]);
        for sig in [None, Some(&signature(&[]))] {
            let stored = StoredResponse::new(ExchangeType::IKE_AUTH, first, &c, sig, vec![]);
            assert!(matches!(stored, StoredResponse::Sealed(_)));
        }
    }

    #[test]
    fn a_malformed_chain_is_kept_sealed() {
        let sig = signature(&[&[0x30; 300]]);
        let (first, mut c) = chain(&[id(), cert(&[0x30; 300]), auth()]);
        c.truncate(c.len() - 1);
        let stored = StoredResponse::new(ExchangeType::IKE_AUTH, first, &c, Some(&sig), vec![]);
        assert!(matches!(stored, StoredResponse::Sealed(_)));
    }
}
