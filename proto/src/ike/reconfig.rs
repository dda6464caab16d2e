//! What a new configuration of a peer means for its running state
//! ([`PeerChange`]): which settings only apply to what is negotiated next,
//! which need its MKTs rekeyed, and which need a new IKE SA. The endpoint
//! applies it ([`super::Endpoint::update_peer`]); docs/configuration.md,
//! "Reload", lists the same rules for operators.

use super::config::PeerConfig;

/// What an updated peer configuration needs, the strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerChange {
    /// Nothing that the endpoint uses changed.
    Unchanged,
    /// Only settings read when something is next negotiated or scheduled:
    /// `lifetimes` (IKE SA rekey time, MKT rekey and hard lifetimes, PFS)
    /// and `initiate`. The running IKE SA and MKTs keep their times.
    Applied,
    /// Settings of the MKTs (MAC algorithms, the TCP option flag, TCP
    /// ports): the IKE SA stays, the MKTs are rekeyed now with the new
    /// settings (CREATE_CHILD_SA).
    RekeyMkts,
    /// Settings of the IKE SA itself (remote address or port, local
    /// address, identities, PSK, IKE proposals): the IKE SA is deleted
    /// (with a Delete) and a new one negotiated; the MKTs stay on the
    /// sockets until the new IKE SA's MKT replaces them.
    Renegotiate,
}

impl PeerChange {
    /// A word for logs and aoctl.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerChange::Unchanged => "unchanged",
            PeerChange::Applied => "applied to the next negotiation",
            PeerChange::RekeyMkts => "MKTs rekeyed",
            PeerChange::Renegotiate => "new IKE SA",
        }
    }
}

/// What changing `old` into `new` needs (their names are the same).
pub fn classify(old: &PeerConfig, new: &PeerConfig) -> PeerChange {
    let ike_sa = old.remote != new.remote
        || old.local != new.local
        || old.local_id != new.local_id
        || old.remote_id != new.remote_id
        || old.psk.as_bytes() != new.psk.as_bytes()
        || old.ike_suites != new.ike_suites
        // Signature authentication cannot be compared yet (keys and trust
        // anchors have no equality; the daemon does not configure it):
        // a peer that uses it on either side renegotiates on a reload.
        || old.signature.is_some()
        || new.signature.is_some();
    if ike_sa {
        return PeerChange::Renegotiate;
    }
    let mkts = old.mac_algorithms != new.mac_algorithms
        || old.include_options != new.include_options
        || old.tcp_ports != new.tcp_ports;
    if mkts {
        return PeerChange::RekeyMkts;
    }
    if old.lifetimes != new.lifetimes || old.initiate != new.initiate {
        return PeerChange::Applied;
    }
    PeerChange::Unchanged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use crate::ike::config::{Identity, IkeSuite, PeerTerms, PortRange};
    use crate::mkt::MacAlgorithm;
    use std::time::Duration;

    fn peer() -> PeerConfig {
        PeerConfig {
            name: "p".into(),
            remote: "192.0.2.2:500".parse().unwrap(),
            local: "192.0.2.1".parse().unwrap(),
            local_id: Identity::parse("192.0.2.1"),
            remote_id: Identity::parse("192.0.2.2"),
            initiate: true,
            terms: std::sync::Arc::new(PeerTerms {
                psk: Secret::new(b"one key".to_vec()).into(),
                ike_suites: vec![IkeSuite::DEFAULT].into(),
                mac_algorithms: MacAlgorithm::ALL.to_vec().into(),
                include_options: true,
                tcp_ports: vec![PortRange::single(179)].into(),
                lifetimes: Default::default(),
                signature: None,
            }),
        }
    }

    type Edit = Box<dyn Fn(&mut PeerConfig)>;

    #[test]
    fn each_setting_has_its_class() {
        let old = peer();
        assert_eq!(classify(&old, &peer()), PeerChange::Unchanged);
        let cases: Vec<(PeerChange, Edit)> = vec![
            (PeerChange::Applied, Box::new(|p| p.initiate = false)),
            (
                PeerChange::Applied,
                Box::new(|p| {
                    std::sync::Arc::make_mut(&mut p.lifetimes).rekey = Duration::from_secs(60)
                }),
            ),
            (
                PeerChange::Applied,
                Box::new(|p| std::sync::Arc::make_mut(&mut p.lifetimes).pfs = false),
            ),
            (
                PeerChange::RekeyMkts,
                Box::new(|p| p.mac_algorithms = vec![MacAlgorithm::HmacSha1_96].into()),
            ),
            (
                PeerChange::RekeyMkts,
                Box::new(|p| p.include_options = false),
            ),
            (
                PeerChange::RekeyMkts,
                Box::new(|p| p.tcp_ports = vec![PortRange::single(646)].into()),
            ),
            (
                PeerChange::Renegotiate,
                Box::new(|p| p.psk = Secret::new(b"another key".to_vec()).into()),
            ),
            (
                PeerChange::Renegotiate,
                Box::new(|p| p.remote = "192.0.2.3:500".parse().unwrap()),
            ),
            (
                PeerChange::Renegotiate,
                Box::new(|p| p.remote = "192.0.2.2:4500".parse().unwrap()),
            ),
            (
                PeerChange::Renegotiate,
                Box::new(|p| p.remote_id = Identity::parse("r2.example.net")),
            ),
            (
                PeerChange::Renegotiate,
                Box::new(|p| {
                    p.ike_suites = vec!["aes128gcm16-prfsha256-ecp256".parse().unwrap()].into()
                }),
            ),
            // The strongest class wins.
            (
                PeerChange::Renegotiate,
                Box::new(|p| {
                    p.initiate = false;
                    p.include_options = false;
                    p.local_id = Identity::parse("r1.example.net");
                }),
            ),
        ];
        for (want, change) in cases {
            let mut new = peer();
            change(&mut new);
            assert_eq!(classify(&old, &new), want, "{new:?}");
        }
    }
}
