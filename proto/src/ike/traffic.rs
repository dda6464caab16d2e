//! Payload helpers every exchange shares: Notify payloads, traffic
//! selectors for the TCP-AO child SA (RFC 7296 3.13), narrowing them to
//! this side's ports (2.9), and checking the peer's narrowed answer.

use std::net::IpAddr;

use super::config::PortRange;
use crate::numbers::{NotifyType, ProtocolId};
use crate::wire::{NotifyPayload, Payload, TrafficSelector, TsPayload};

pub(super) fn notify(ty: NotifyType, data: Vec<u8>) -> Payload {
    Payload::Notify(NotifyPayload {
        protocol: ProtocolId::NONE,
        spi: Vec::new(),
        ty,
        data,
    })
}

pub(super) fn selectors(addr: IpAddr, ports: &[PortRange]) -> TsPayload {
    TsPayload {
        selectors: ports
            .iter()
            .map(|p| TrafficSelector::Range {
                ip_protocol: 6,
                start_port: p.start,
                end_port: p.end,
                start_addr: addr,
                end_addr: addr,
            })
            .collect(),
    }
}

fn addr_in(addr: IpAddr, start: IpAddr, end: IpAddr) -> bool {
    match (addr, start, end) {
        (IpAddr::V4(a), IpAddr::V4(s), IpAddr::V4(e)) => s <= a && a <= e,
        (IpAddr::V6(a), IpAddr::V6(s), IpAddr::V6(e)) => s <= a && a <= e,
        _ => false,
    }
}

/// Narrows offered selectors to `addr` and to the intersection of their
/// port ranges with `local` (RFC 7296 2.9). Empty when nothing is left.
pub(super) fn narrow(offer: &TsPayload, addr: IpAddr, local: &[PortRange]) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for ts in &offer.selectors {
        let TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        } = ts
        else {
            continue;
        };
        if !(*ip_protocol == 6 || *ip_protocol == 0) || !addr_in(addr, *start_addr, *end_addr) {
            continue;
        }
        for l in local {
            let start = (*start_port).max(l.start);
            let end = (*end_port).min(l.end);
            if start <= end && !out.contains(&PortRange { start, end }) {
                out.push(PortRange { start, end });
            }
        }
    }
    out
}

/// True when every selector of `reply` is for `addr`, TCP, and within `offered` ports.
pub(super) fn reply_within(
    reply: &TsPayload,
    addr: IpAddr,
    offered: &[PortRange],
) -> Option<Vec<PortRange>> {
    let mut ports = Vec::new();
    for ts in &reply.selectors {
        let TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        } = ts
        else {
            return None;
        };
        let ok = *ip_protocol == 6
            && addr_in(addr, *start_addr, *end_addr)
            && offered
                .iter()
                .any(|o| o.start <= *start_port && *end_port <= o.end && start_port <= end_port);
        if !ok {
            return None;
        }
        ports.push(PortRange {
            start: *start_port,
            end: *end_port,
        });
    }
    (!ports.is_empty()).then_some(ports)
}
