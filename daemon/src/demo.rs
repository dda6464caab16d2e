//! `aokd demo`: the embedded default. With nothing configured, it starts two
//! aokd instances in this process on loopback (127.0.0.1 and 127.0.0.2),
//! each with its own UDP socket and a freshly generated PSK, lets them
//! negotiate over real UDP, and prints the MKT each side holds. Then it
//! installs each side's MKT on a real TCP socket (TCP-AO where the kernel
//! has it, TCP-MD5 otherwise) and carries data between them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aokd_api::control::{Command, MktStatus, ResponseData, ResponseResult};
use aokd_proto::crypto::{self, Secret};
use aokd_proto::ike::{self, EndpointConfig};
use aokd_proto::mkt::MasterKeyTuple;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use crate::kernel::{self, ao, sys, Backend};
use crate::sockets::reconcile;
use rand_core::{OsRng, RngCore};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::control::ControlCall;
use crate::runtime::Daemon;

const A_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const B_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn peer(name: &str, local: SocketAddr, remote: SocketAddr, psk: &[u8]) -> ike::PeerConfig {
    ike::PeerConfig::with_psk(name, local.ip(), remote, Secret::new(psk.to_vec()))
}

async fn ask_mkts(tx: &mpsc::Sender<ControlCall>) -> anyhow::Result<Vec<MktStatus>> {
    let (reply, rx) = oneshot::channel();
    tx.send(ControlCall {
        command: Command::Mkts,
        peer_uid: 0,
        reply,
    })
    .await
    .context("demo instance stopped")?;
    match rx.await.context("demo instance stopped")? {
        ResponseResult::Ok {
            data: ResponseData::Mkts { mkts },
        } => Ok(mkts),
        other => bail!("unexpected answer {other:?}"),
    }
}

async fn ask_keys(tx: &mpsc::Sender<ControlCall>) -> anyhow::Result<MasterKeyTuple> {
    let (reply, rx) = oneshot::channel();
    tx.send(ControlCall {
        command: Command::MktKeys,
        peer_uid: 0,
        reply,
    })
    .await
    .context("demo instance stopped")?;
    let keys = match rx.await.context("demo instance stopped")? {
        ResponseResult::Ok {
            data: ResponseData::MktKeys { keys },
        } => keys,
        other => bail!("unexpected answer {other:?}"),
    };
    let [k] = keys.as_slice() else {
        bail!("expected one MKT, found {}", keys.len());
    };
    Ok(MasterKeyTuple {
        send_id: k.send_id,
        recv_id: k.recv_id,
        algorithm: k
            .algorithm
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
        include_options: k.include_options,
        master_key: Secret::new(hex::decode(&k.master_key).context("master key")?),
    })
}

/// Installs each instance's MKT on a real TCP socket (instance b listens on
/// 127.0.0.2, instance a connects from 127.0.0.1), carries data through the
/// kernel, and reports what protected it.
fn carry_tcp(a: &MasterKeyTuple, b: &MasterKeyTuple) -> anyhow::Result<()> {
    let support = kernel::probe().context("cannot probe the kernel")?;
    let Some(backend) = support.preferred() else {
        bail!("this kernel has neither TCP-AO nor TCP-MD5");
    };
    let why = match backend {
        Backend::Ao => "the kernel has TCP-AO",
        Backend::Md5 => "this kernel has no TCP-AO, so the MKT's key is used as a TCP-MD5 key",
    };
    println!("installing the keys with {backend} ({why})");
    let listener = TcpListener::bind((B_IP, 0)).context("listen on 127.0.0.2")?;
    let server_addr = listener.local_addr()?;
    // A listening socket may receive its first TCP-AO key (reference 1.6).
    reconcile(
        listener.as_fd(),
        backend,
        A_IP,
        std::slice::from_ref(b),
        None,
        true,
    )
    .context("installing b's key on its listener")?;
    let client = sys::tcp_socket(false).context("client socket")?;
    reconcile(
        client.as_fd(),
        backend,
        B_IP,
        std::slice::from_ref(a),
        None,
        false,
    )
    .context("installing a's key on its socket")?;
    sys::connect(client.as_fd(), server_addr)
        .with_context(|| format!("connect to {server_addr}"))?;
    let mut client = TcpStream::from(client);
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut server, from) = listener.accept().context("accept")?;
    server.set_read_timeout(Some(Duration::from_secs(5)))?;
    let message = b"BGP OPEN would go here; every segment of this connection is signed";
    let mut total = 0usize;
    let mut buf = vec![0u8; message.len()];
    for _ in 0..64 {
        client.write_all(message)?;
        server.read_exact(&mut buf)?;
        server.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        if buf != message {
            bail!("the echo differs from what was sent");
        }
        total += 2 * message.len();
    }
    println!("carried {total} octets over TCP {from} -> {server_addr}, signed with {backend}");
    if backend == Backend::Ao {
        for (name, fd) in [("a", client.as_fd()), ("b", server.as_fd())] {
            let i = ao::info(fd).context("TCP_AO_INFO")?;
            println!(
                "  instance {name}: TCP_AO_INFO pkt_good {} pkt_bad {} current_key {:?} rnext {:?}",
                i.pkt_good, i.pkt_bad, i.current_key, i.rnext
            );
        }
    }
    Ok(())
}

/// Runs the demo; returns an error if the two instances do not agree.
pub async fn run(timeout: Duration) -> anyhow::Result<()> {
    let mut psk = vec![0u8; 32];
    OsRng.fill_bytes(&mut psk);
    let psk = Secret::new(psk);
    println!(
        "aokd demo: two instances on loopback, PSK fingerprint {}",
        crypto::fingerprint(psk.as_bytes())
    );

    let sock_a = UdpSocket::bind((A_IP, 0)).await.context("bind 127.0.0.1")?;
    let sock_b = UdpSocket::bind((B_IP, 0)).await.context("bind 127.0.0.2")?;
    let (addr_a, addr_b) = (sock_a.local_addr()?, sock_b.local_addr()?);
    let a = Daemon::from_sockets(
        vec![sock_a],
        EndpointConfig::new(vec![peer("b", addr_a, addr_b, psk.as_bytes())]),
        "a",
        None,
    )?;
    let b = Daemon::from_sockets(
        vec![sock_b],
        EndpointConfig::new(vec![peer("a", addr_b, addr_a, psk.as_bytes())]),
        "b",
        None,
    )?;
    println!("  instance a: IKE on udp {addr_a}");
    println!("  instance b: IKE on udp {addr_b}");

    let (tx_a, rx_a) = mpsc::channel(8);
    let (tx_b, rx_b) = mpsc::channel(8);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let ta = tokio::spawn(a.run(rx_a, None, stop(stop_rx.clone())));
    let tb = tokio::spawn(b.run(rx_b, None, stop(stop_rx)));

    let started = Instant::now();
    let result = loop {
        let (ma, mb) = (ask_mkts(&tx_a).await?, ask_mkts(&tx_b).await?);
        if ma.len() == 1 && mb.len() == 1 {
            break Ok((ma, mb, started.elapsed()));
        }
        if started.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "no MKT after {timeout:?} (a holds {}, b holds {})",
                ma.len(),
                mb.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let keys = match &result {
        Ok(_) => Some((ask_keys(&tx_a).await?, ask_keys(&tx_b).await?)),
        Err(_) => None,
    };
    let _ = stop_tx.send(true);
    let _ = ta.await;
    let _ = tb.await;

    let (ma, mb, took) = result?;
    println!("negotiated in {} ms:", took.as_millis());
    println!(
        "  {:<9} {:<6} {:>7} {:>7}  {:<16} {:<9} key fingerprint",
        "instance", "peer", "send_id", "recv_id", "algorithm", "options"
    );
    for (inst, m) in [("a", &ma[0]), ("b", &mb[0])] {
        println!(
            "  {:<9} {:<6} {:>7} {:>7}  {:<16} {:<9} {}",
            inst,
            m.peer,
            m.send_id,
            m.recv_id,
            m.algorithm,
            if m.include_options {
                "included"
            } else {
                "excluded"
            },
            m.key_fingerprint
        );
    }
    let (x, y) = (&ma[0], &mb[0]);
    if x.send_id != y.recv_id
        || x.recv_id != y.send_id
        || x.algorithm != y.algorithm
        || x.key_fingerprint != y.key_fingerprint
    {
        bail!("the two instances hold different MKTs");
    }
    println!(
        "both sides hold the same MKT (a.send_id = b.recv_id, a.recv_id = b.send_id, same key)."
    );
    let Some((ka, kb)) = keys else {
        bail!("the MKTs could not be read back");
    };
    tokio::task::spawn_blocking(move || carry_tcp(&ka, &kb))
        .await
        .context("the TCP part of the demo panicked")??;
    Ok(())
}
