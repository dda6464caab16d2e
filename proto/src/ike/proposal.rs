//! SA payload construction and selection (RFC 7296 2.7, 3.3): the IKE SA
//! proposals of IKE_SA_INIT and of an IKE SA rekey (2.18), and the TCP-AO
//! child proposal (docs/protocol.md).

use super::config::IkeSuite;
use super::error::NegotiationError;
use crate::crypto::{Encr, Prf};
use crate::mkt::{self, MacAlgorithm};
use crate::numbers::{DhGroup, EncrId, IntegId, PrfId, ProtocolId, TransformType};
use crate::wire::{Proposal, SaPayload, Transform};

fn encr_transform(encr: Encr) -> Transform {
    match encr.key_length_attr() {
        Some(bits) => Transform::with_key_length(TransformType::ENCR, encr.id().0, bits),
        None => Transform::new(TransformType::ENCR, encr.id().0),
    }
}

/// One proposal per configured suite, numbered from 1, SPI size 0
/// (RFC 7296 3.3.1: the initial IKE SA proposal carries no SPI).
pub fn ike_sa_payload(suites: &[IkeSuite]) -> SaPayload {
    let proposals = suites
        .iter()
        .enumerate()
        .map(|(i, s)| Proposal {
            num: u8::try_from(i + 1).unwrap_or(u8::MAX),
            protocol: ProtocolId::IKE,
            spi: Vec::new(),
            transforms: vec![
                encr_transform(s.encr),
                Transform::new(TransformType::PRF, s.prf.id().0),
                Transform::new(TransformType::KE, s.group.0),
            ],
        })
        .collect();
    SaPayload { proposals }
}

/// The responder's reply: the chosen proposal with one transform of each type.
pub fn ike_sa_reply(num: u8, suite: IkeSuite) -> SaPayload {
    let mut sa = ike_sa_payload(&[suite]);
    if let Some(p) = sa.proposals.first_mut() {
        p.num = num;
    }
    sa
}

/// The SA payload of a CREATE_CHILD_SA that rekeys the IKE SA (RFC 7296
/// 1.3.2, 2.18): the same proposals as [`ike_sa_payload`], each with the
/// sender's SPI of the new IKE SA (8 octets, RFC 7296 3.3.1).
pub fn ike_rekey_sa_payload(suites: &[IkeSuite], spi: u64) -> SaPayload {
    let mut sa = ike_sa_payload(suites);
    for p in &mut sa.proposals {
        p.spi = spi.to_be_bytes().to_vec();
    }
    sa
}

/// The responder's reply to an IKE SA rekey: the chosen proposal with its
/// own SPI of the new IKE SA.
pub fn ike_rekey_sa_reply(num: u8, suite: IkeSuite, spi: u64) -> SaPayload {
    let mut sa = ike_sa_reply(num, suite);
    for p in &mut sa.proposals {
        p.spi = spi.to_be_bytes().to_vec();
    }
    sa
}

/// What the responder accepts: each component must appear in one of its
/// configured suites.
fn acceptable(
    local: &[IkeSuite],
    encr: Option<Encr>,
    prf: Option<Prf>,
    group: Option<DhGroup>,
) -> bool {
    encr.is_some_and(|e| local.iter().any(|s| s.encr == e))
        && prf.is_some_and(|p| local.iter().any(|s| s.prf == p))
        && group.is_some_and(|g| local.iter().any(|s| s.group == g))
}

/// The responder's choice among the initiator's proposals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeChoice {
    pub proposal_num: u8,
    pub suite: IkeSuite,
}

/// Chooses the first acceptable proposal of the initiator, and within it the
/// first acceptable transform of each type (RFC 7296 2.7). The group is the
/// one of the KE payload when acceptable; otherwise the result is
/// [`NegotiationError::InvalidKe`] naming the group the responder wants
/// (RFC 7296 1.2), which is the first acceptable group the initiator offered.
pub fn choose_ike(
    offer: &SaPayload,
    local: &[IkeSuite],
    ke_group: DhGroup,
) -> Result<IkeChoice, NegotiationError> {
    choose_ike_with_spi(offer, local, ke_group, 0).map(|(c, _)| c)
}

/// [`choose_ike`] for a CREATE_CHILD_SA that rekeys the IKE SA (RFC 7296
/// 2.18): only proposals with an 8-octet SPI count, and the initiator's SPI
/// of the new IKE SA is returned with the choice. A proposal without a KE
/// transform is never chosen (2.18: a rekey of the IKE SA MUST include a
/// new Diffie-Hellman exchange).
pub fn choose_ike_rekey(
    offer: &SaPayload,
    local: &[IkeSuite],
    ke_group: DhGroup,
) -> Result<(IkeChoice, u64), NegotiationError> {
    let (choice, spi) = choose_ike_with_spi(offer, local, ke_group, 8)?;
    let spi = <[u8; 8]>::try_from(spi)
        .map(u64::from_be_bytes)
        .map_err(|_| NegotiationError::NoProposalChosen("IKE SPI of the wrong size"))?;
    if spi == 0 {
        return Err(NegotiationError::NoProposalChosen("IKE SPI of zero"));
    }
    Ok((choice, spi))
}

fn choose_ike_with_spi<'a>(
    offer: &'a SaPayload,
    local: &[IkeSuite],
    ke_group: DhGroup,
    spi_len: usize,
) -> Result<(IkeChoice, &'a [u8]), NegotiationError> {
    let mut wanted_group = None;
    for p in &offer.proposals {
        if p.protocol != ProtocolId::IKE || p.spi.len() != spi_len {
            continue;
        }
        let mut encr = None;
        let mut prf = None;
        let mut groups = Vec::new();
        let mut unknown_type = false;
        for t in &p.transforms {
            match t.ty {
                TransformType::ENCR => {
                    if encr.is_none() {
                        encr = Encr::from_transform(EncrId(t.id), t.key_length())
                            .filter(|e| local.iter().any(|s| s.encr == *e));
                    }
                }
                TransformType::PRF => {
                    if prf.is_none() {
                        prf =
                            Prf::from_id(PrfId(t.id)).filter(|p| local.iter().any(|s| s.prf == *p));
                    }
                }
                TransformType::KE => {
                    let g = DhGroup(t.id);
                    if local.iter().any(|s| s.group == g) {
                        groups.push(g);
                    }
                }
                // An integrity transform with an AEAD cipher must be NONE (RFC 5282 8).
                TransformType::INTEG => {
                    if t.id != IntegId::NONE.0 {
                        unknown_type = true;
                    }
                }
                _ => unknown_type = true,
            }
        }
        if unknown_type || groups.is_empty() {
            continue;
        }
        let group = if groups.contains(&ke_group) {
            Some(ke_group)
        } else {
            None
        };
        if acceptable(local, encr, prf, group) {
            if let (Some(encr), Some(prf), Some(group)) = (encr, prf, group) {
                let choice = IkeChoice {
                    proposal_num: p.num,
                    suite: IkeSuite { encr, prf, group },
                };
                return Ok((choice, &p.spi));
            }
        }
        if wanted_group.is_none() && acceptable(local, encr, prf, groups.first().copied()) {
            wanted_group = groups.first().copied();
        }
    }
    match wanted_group {
        Some(g) => Err(NegotiationError::InvalidKe(g)),
        None => Err(NegotiationError::NoProposalChosen(
            "no IKE proposal in common",
        )),
    }
}

/// Checks the responder's reply against what was offered and returns the
/// suite, which must use the group of the KE payload sent.
pub fn check_ike_reply(
    reply: &SaPayload,
    offered: &[IkeSuite],
    ke_group: DhGroup,
) -> Option<IkeSuite> {
    check_ike_reply_with_spi(reply, offered, ke_group, 0).map(|(s, _)| s)
}

/// [`check_ike_reply`] for the reply to an IKE SA rekey: returns the suite
/// and the responder's nonzero SPI of the new IKE SA.
pub fn check_ike_rekey_reply(
    reply: &SaPayload,
    offered: &[IkeSuite],
    ke_group: DhGroup,
) -> Option<(IkeSuite, u64)> {
    let (suite, spi) = check_ike_reply_with_spi(reply, offered, ke_group, 8)?;
    let spi = u64::from_be_bytes(<[u8; 8]>::try_from(spi).ok()?);
    (spi != 0).then_some((suite, spi))
}

fn check_ike_reply_with_spi<'a>(
    reply: &'a SaPayload,
    offered: &[IkeSuite],
    ke_group: DhGroup,
    spi_len: usize,
) -> Option<(IkeSuite, &'a [u8])> {
    let [p] = reply.proposals.as_slice() else {
        return None;
    };
    if p.protocol != ProtocolId::IKE || p.spi.len() != spi_len {
        return None;
    }
    let mut encr = None;
    let mut prf = None;
    let mut group = None;
    for t in &p.transforms {
        let slot_filled = match t.ty {
            TransformType::ENCR => encr
                .replace(Encr::from_transform(EncrId(t.id), t.key_length())?)
                .is_some(),
            TransformType::PRF => prf.replace(Prf::from_id(PrfId(t.id))?).is_some(),
            TransformType::KE => group.replace(DhGroup(t.id)).is_some(),
            TransformType::INTEG if t.id == IntegId::NONE.0 => false,
            _ => return None,
        };
        if slot_filled {
            return None;
        }
    }
    let suite = IkeSuite {
        encr: encr?,
        prf: prf?,
        group: group?,
    };
    let proposed = offered.iter().any(|s| s.encr == suite.encr)
        && offered.iter().any(|s| s.prf == suite.prf)
        && offered.iter().any(|s| s.group == suite.group);
    (proposed && suite.group == ke_group).then_some((suite, p.spi.as_slice()))
}

/// The TCP-AO child proposal (docs/protocol.md): protocol 201, SPI size 1,
/// the SPI is the sender's RecvID, one type 3 transform per MAC algorithm in
/// preference order.
pub fn tcp_ao_sa_payload(recv_id: u8, algorithms: &[MacAlgorithm]) -> SaPayload {
    SaPayload {
        proposals: vec![Proposal {
            num: 1,
            protocol: ProtocolId::TCP_AO,
            spi: vec![recv_id],
            transforms: algorithms
                .iter()
                .map(|a| Transform::new(TransformType::INTEG, mkt::integ_id(*a).0))
                .collect(),
        }],
    }
}

/// The responder's choice of a TCP-AO proposal: the initiator's SPI (its
/// RecvID) and the first of the initiator's algorithms that the responder
/// also allows.
pub fn choose_tcp_ao(
    offer: &SaPayload,
    local: &[MacAlgorithm],
) -> Result<(u8, u8, MacAlgorithm), NegotiationError> {
    for p in &offer.proposals {
        let [spi] = p.spi.as_slice() else { continue };
        if p.protocol != ProtocolId::TCP_AO {
            continue;
        }
        // A KE transform (PFS) is only meaningful on rekeys; in IKE_AUTH it is ignored.
        let mut chosen = None;
        for t in &p.transforms {
            if t.ty == TransformType::INTEG && chosen.is_none() {
                chosen = mkt::mac_algorithm(IntegId(t.id)).filter(|a| local.contains(a));
            }
        }
        if let Some(alg) = chosen {
            return Ok((p.num, *spi, alg));
        }
    }
    Err(NegotiationError::NoProposalChosen(
        "no TCP-AO MAC algorithm in common",
    ))
}

/// Checks the responder's TCP-AO reply; returns (peer's RecvID, algorithm).
pub fn check_tcp_ao_reply(
    reply: &SaPayload,
    offered: &[MacAlgorithm],
) -> Option<(u8, MacAlgorithm)> {
    let [p] = reply.proposals.as_slice() else {
        return None;
    };
    let [spi] = p.spi.as_slice() else { return None };
    if p.protocol != ProtocolId::TCP_AO {
        return None;
    }
    let [t] = p.transforms.as_slice() else {
        return None;
    };
    if t.ty != TransformType::INTEG {
        return None;
    }
    let alg = mkt::mac_algorithm(IntegId(t.id)).filter(|a| offered.contains(a))?;
    Some((*spi, alg))
}

/// The protocol of the first proposal in an SA payload.
pub fn first_protocol(sa: &SaPayload) -> Option<ProtocolId> {
    sa.proposals.first().map(|p| p.protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(s: &str) -> IkeSuite {
        s.parse().unwrap()
    }

    #[test]
    fn responder_takes_first_acceptable_proposal() {
        let offer = ike_sa_payload(&[
            suite("chacha20poly1305-prfsha512-x25519"),
            suite("aes256gcm16-prfsha256-x25519"),
        ]);
        let local = [suite("aes256gcm16-prfsha256-x25519")];
        let c = choose_ike(&offer, &local, DhGroup::CURVE25519).unwrap();
        assert_eq!(c.proposal_num, 2);
        assert_eq!(c.suite, local[0]);
        let reply = ike_sa_reply(c.proposal_num, c.suite);
        assert_eq!(
            check_ike_reply(
                &reply,
                &[suite("chacha20poly1305-prfsha512-x25519"), local[0]],
                DhGroup::CURVE25519
            ),
            Some(local[0])
        );
    }

    #[test]
    fn wrong_ke_group_asks_for_another() {
        let offer = ike_sa_payload(&[
            suite("aes256gcm16-prfsha256-x25519"),
            suite("aes256gcm16-prfsha256-ecp256"),
        ]);
        let local = [suite("aes256gcm16-prfsha256-ecp256")];
        assert_eq!(
            choose_ike(&offer, &local, DhGroup::CURVE25519),
            Err(NegotiationError::InvalidKe(DhGroup::ECP_256))
        );
        assert!(choose_ike(&offer, &local, DhGroup::ECP_256).is_ok());
    }

    #[test]
    fn nothing_in_common() {
        let offer = ike_sa_payload(&[suite("aes128gcm16-prfsha384-x25519")]);
        let local = [suite("aes256gcm16-prfsha256-x25519")];
        assert!(matches!(
            choose_ike(&offer, &local, DhGroup::CURVE25519),
            Err(NegotiationError::NoProposalChosen(_))
        ));
    }

    #[test]
    fn reply_must_match_offer() {
        let offered = [suite("aes256gcm16-prfsha256-x25519")];
        let reply = ike_sa_reply(1, suite("aes128gcm16-prfsha256-x25519"));
        assert_eq!(check_ike_reply(&reply, &offered, DhGroup::CURVE25519), None);
        let reply = ike_sa_reply(1, offered[0]);
        assert_eq!(check_ike_reply(&reply, &offered, DhGroup::ECP_256), None);
    }

    #[test]
    fn ike_rekey_proposals_carry_8_octet_spis() {
        let suites = [
            suite("chacha20poly1305-prfsha512-x25519"),
            suite("aes256gcm16-prfsha256-x25519"),
        ];
        let offer = ike_rekey_sa_payload(&suites, 0x0102_0304_0506_0708);
        assert!(offer
            .proposals
            .iter()
            .all(|p| p.spi == [1, 2, 3, 4, 5, 6, 7, 8]));
        let local = [suite("aes256gcm16-prfsha256-x25519")];
        let (c, spi) = choose_ike_rekey(&offer, &local, DhGroup::CURVE25519).unwrap();
        assert_eq!(
            (c.proposal_num, c.suite, spi),
            (2, local[0], 0x0102_0304_0506_0708)
        );
        // The initial exchange's chooser ignores proposals with an SPI, and
        // the rekey chooser those without.
        assert!(choose_ike(&offer, &local, DhGroup::CURVE25519).is_err());
        assert!(choose_ike_rekey(&ike_sa_payload(&suites), &local, DhGroup::CURVE25519).is_err());
        // A zero SPI is refused.
        assert!(choose_ike_rekey(
            &ike_rekey_sa_payload(&suites, 0),
            &local,
            DhGroup::CURVE25519
        )
        .is_err());
        // A proposal without a KE transform is never chosen (RFC 7296 2.18).
        let mut no_ke = offer.clone();
        for p in &mut no_ke.proposals {
            p.transforms.retain(|t| t.ty != TransformType::KE);
        }
        assert!(choose_ike_rekey(&no_ke, &local, DhGroup::CURVE25519).is_err());

        let reply = ike_rekey_sa_reply(c.proposal_num, c.suite, 0x1111);
        assert_eq!(
            check_ike_rekey_reply(&reply, &suites, DhGroup::CURVE25519),
            Some((local[0], 0x1111))
        );
        assert_eq!(check_ike_reply(&reply, &suites, DhGroup::CURVE25519), None);
        assert_eq!(
            check_ike_rekey_reply(&ike_sa_reply(2, local[0]), &suites, DhGroup::CURVE25519),
            None
        );
        assert_eq!(
            check_ike_rekey_reply(
                &ike_rekey_sa_reply(2, local[0], 0),
                &suites,
                DhGroup::CURVE25519
            ),
            None
        );
    }

    #[test]
    fn tcp_ao_choice_follows_initiator_order() {
        let offer = tcp_ao_sa_payload(7, &[MacAlgorithm::AesCmac96, MacAlgorithm::HmacSha1_96]);
        let (num, spi, alg) = choose_tcp_ao(
            &offer,
            &[MacAlgorithm::HmacSha1_96, MacAlgorithm::AesCmac96],
        )
        .unwrap();
        assert_eq!((num, spi, alg), (1, 7, MacAlgorithm::AesCmac96));
        assert!(choose_tcp_ao(&offer, &[MacAlgorithm::HmacSha256_128]).is_err());
        let reply = tcp_ao_sa_payload(9, &[alg]);
        assert_eq!(
            check_tcp_ao_reply(&reply, &[MacAlgorithm::AesCmac96]),
            Some((9, MacAlgorithm::AesCmac96))
        );
        assert_eq!(
            check_tcp_ao_reply(&reply, &[MacAlgorithm::HmacSha1_96]),
            None
        );
    }
}
