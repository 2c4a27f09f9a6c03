//! `meshgate run`: one gateway process, from config to running data plane.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::metrics::Metrics;
use crate::tun::Tun;

/// Socket buffers sized for bursts of a few thousand full-size packets.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Runs the gateway described by `config_path` until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let tun = Tun::create(&config.tun.name)?;
    tun.configure(config.tun.mtu, &config.tun.addresses)?;
    for peer in &config.peers {
        for prefix in &peer.prefixes {
            tun.add_route(prefix)
                .with_context(|| format!("routing {prefix} of peer '{}'", peer.id))?;
        }
    }
    let socket = UdpSocket::bind(config.listen)
        .with_context(|| format!("binding the ESP-in-UDP socket {}", config.listen))?;
    set_buffers(&socket);
    let metrics = Arc::new(Metrics::new(&config.id));
    let dataplane =
        Dataplane::start(&config, Arc::new(tun), socket, &metrics).context("installing the SAs")?;
    tracing::info!(
        id = %config.id,
        listen = %config.listen,
        tun = %config.tun.name,
        peers = config.peers.len(),
        "gateway up"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let result = rt.block_on(async {
        let admin = config.admin;
        let listener = crate::admin::serve(admin, metrics.clone());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = listener => r.with_context(|| format!("admin listener {admin}")),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    });
    tracing::info!("shutting down");
    dataplane.stop();
    result
}

fn set_buffers(socket: &UdpSocket) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a c_int value on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "cannot size the socket buffers: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
