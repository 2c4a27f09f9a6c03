//! Inter-region conditions on the lab's signalling paths. This kernel has
//! no netem, so the delay comes from a relay in the underlay namespace:
//! each appliance's packets to another's signalling port are redirected
//! (iptables DNAT) to the relay, which holds every datagram for the
//! one-way delay before passing it on, both ways. Loss is iptables'
//! `statistic` match, dropping at random what arrives from the relay.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::UdpSocket;

use super::{Lab, SIGNAL_PORT};

/// The relay's address on the underlay bridge.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// The relay port that stands for region `r`'s (0-based) signalling port.
fn relay_port(r: usize) -> u16 {
    20_000 + r as u16
}

/// A running relay; dropping it stops it.
pub struct Impairment {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<std::io::Result<()>>>>,
}

impl Drop for Impairment {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn iptables(ns: &crate::netns::Netns, args: &[&str]) -> Result<()> {
    let status = ns
        .command("iptables")
        .args(args)
        .status()
        .context("running iptables (Debian package iptables)")?;
    if !status.success() {
        bail!("iptables {} in {} failed", args.join(" "), ns.name());
    }
    Ok(())
}

impl Lab {
    /// Delays every signalling datagram between appliances by `delay` each
    /// way and drops `loss` (0 to 1) of them at random on arrival. Call it
    /// before the gateways start: flows the kernel already tracks are not
    /// redirected.
    pub fn impair_signalling(&self, delay: Duration, loss: f64) -> Result<Impairment> {
        self.underlay
            .ip(&["addr", "add", &format!("{RELAY_IP}/24"), "dev", "br0"])?;
        for a in &self.regions {
            for b in self.regions.iter().filter(|b| b.index != a.index) {
                iptables(
                    &a.appliance,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "OUTPUT",
                        "-p",
                        "udp",
                        "-d",
                        &b.underlay_ip().to_string(),
                        "--dport",
                        &SIGNAL_PORT.to_string(),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &format!("{RELAY_IP}:{}", relay_port(b.index)),
                    ],
                )?;
            }
            if loss > 0.0 {
                iptables(
                    &a.appliance,
                    &[
                        "-A",
                        "INPUT",
                        "-p",
                        "udp",
                        "-s",
                        &RELAY_IP.to_string(),
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &format!("{loss}"),
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        let targets: Vec<(u16, SocketAddr)> = self
            .regions
            .iter()
            .map(|r| {
                (
                    relay_port(r.index),
                    SocketAddr::new(r.underlay_ip().into(), SIGNAL_PORT),
                )
            })
            .collect();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = self.underlay.spawn(move || -> std::io::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                for (port, target) in targets {
                    let listener =
                        Arc::new(UdpSocket::bind(SocketAddr::new(RELAY_IP.into(), port)).await?);
                    tokio::spawn(relay(listener, target, delay));
                }
                let _ = stopped.await;
                Ok(())
            })
        })?;
        Ok(Impairment {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Passes datagrams between clients of `listener` and `target`, each one
/// `delay` late: one upstream socket per client, so replies find their way.
async fn relay(listener: Arc<UdpSocket>, target: SocketAddr, delay: Duration) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, client)) = listener.recv_from(&mut buf).await {
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind(SocketAddr::new(RELAY_IP.into(), 0)).await else {
                    continue;
                };
                let u = Arc::new(u);
                upstreams.insert(client, u.clone());
                // Replies, delayed the same.
                let (u2, l2) = (u.clone(), listener.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                        let data = buf[..n].to_vec();
                        let l = l2.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = l.send_to(&data, client).await;
                        });
                    }
                });
                u
            }
        };
        let data = buf[..n].to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = upstream.send_to(&data, target).await;
        });
    }
}
