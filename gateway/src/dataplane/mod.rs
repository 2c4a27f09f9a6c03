//! The data plane: inner packets from the TUN device are routed to a peer,
//! sealed and sent as ESP-in-UDP; datagrams from the UDP socket are opened,
//! checked against the sending peer's prefixes and written to the TUN.
//!
//! Each direction is one thread that owns its SAs outright (no lock on the
//! packet path): [`Outbound`] and [`Inbound`] are the per-packet logic,
//! free of I/O; [`run_outbound`] and [`run_inbound`] are the I/O loops.

mod batch;
pub mod checksum;
pub mod control;
pub mod echo;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod inbound;
pub mod inner;
pub mod offload;
mod outbound;
mod persist;
mod settings;
pub mod tables;

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use batch::RawAddr;
pub use control::{DataplaneControl, InboundCommand, OutboundCommand, SaNotice};
pub use inbound::Inbound;
pub use outbound::Outbound;
pub use settings::{DataplaneSettings, StaticPeer};
pub use tables::{SharedTables, Tables};

use crate::esp::SaError;
use crate::metrics::Metrics;
use crate::seqstate::{SeqFile, StateError};
use crate::tun::Tun;
use std::sync::mpsc;

/// How often lifetime limits in time are checked, and how quickly the
/// threads notice a stop request.
const TICK: Duration = Duration::from_millis(250);

/// Buffer size for one packet: the largest inner packet plus ESP overhead.
fn buffer_size(mtu: u16) -> usize {
    usize::from(mtu).max(1500) + 256
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("installing the SAs: {0}")]
    Sa(#[from] SaError),
    #[error("sequence-number state: {0}")]
    State(#[from] StateError),
    #[error("the outbound thread's wake-up (eventfd): {0}")]
    Wake(io::Error),
}

/// The data plane's offloads, as the kernel granted them.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Offloads {
    /// TCP segmentation from the TUN device (we segment before sealing).
    pub tso: bool,
    /// UDP segmentation offload on the ESP socket.
    pub gso: bool,
    /// UDP receive coalescing on the ESP socket.
    pub gro: bool,
}

/// The running data-plane threads.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    control: DataplaneControl,
    offloads: Offloads,
    echo_waiters: echo::EchoWaiters,
}

/// Raises `failed` when a data-plane thread ends (returns or panics)
/// without having been asked to stop, so the process can exit rather than
/// keep answering health checks with a dead data plane.
struct ExitGuard {
    name: &'static str,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Relaxed) {
            tracing::error!("data-plane thread {} ended unexpectedly", self.name);
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

impl Dataplane {
    /// Builds both directions from `config`, resumes their sequence
    /// numbers from the state file (persisting the first reservations
    /// before any packet moves), and starts their threads. SA lifetime
    /// events go to `notices` when given.
    pub fn start(
        config: &DataplaneSettings,
        tun: Arc<Tun>,
        socket: UdpSocket,
        metrics: &Arc<Metrics>,
        tables: SharedTables,
        notices: Option<control::NoticeSender>,
    ) -> Result<Dataplane, StartError> {
        let mut outbound = Outbound::new(&config.peers, metrics, tables.clone())?;
        let mut inbound = Inbound::new(&config.peers, metrics, tables)?;
        if let Some(h) = &config.hellos {
            outbound.clear_configured_sas();
            inbound.clear_configured_sas();
            inbound.attach_hellos(h.clone());
        }
        for (magic, to) in &config.by_magic {
            inbound.attach_magic(*magic, to.clone());
        }
        if let Some(n) = notices {
            outbound.attach_notices(n.clone());
            inbound.attach_notices(n);
        }
        let (out_tx, out_rx) = mpsc::channel();
        let (in_tx, in_rx) = mpsc::channel();
        let wake = Arc::new(control::Wake::new().map_err(StartError::Wake)?);
        let out_tx = control::OutboundSender::new(out_tx, wake.clone());
        let echo_waiters = echo::EchoWaiters::default();
        inbound.attach_echo(out_tx.clone(), echo_waiters.clone());
        let state_file = config.state_file.clone();
        if let Some(dir) = state_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StartError::State(StateError::Io {
                    path: dir.display().to_string(),
                    msg: e.to_string(),
                })
            })?;
        }
        let mut file = SeqFile::load(&state_file)?;
        outbound.resume(&mut file);
        inbound.resume(&file);
        file.save(true)?;
        let (requests_tx, requests_rx) = mpsc::channel();
        let (granted_tx, granted_rx) = mpsc::channel();
        outbound.attach_state(requests_tx.clone(), granted_rx);
        inbound.attach_state(requests_tx);
        // Offloads: TSO from the TUN with our own segmentation, UDP GSO
        // out and GRO in. Each is used only where the kernel offers it.
        let tso = match tun.enable_offload() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("TUN offload unavailable ({e}); reading one packet at a time");
                false
            }
        };
        let gso = batch::probe_udp_gso(&socket);
        let gro = batch::enable_udp_gro(&socket);
        tracing::info!(tso, gso, gro, "data-plane offloads");
        let size = if gro { 65_536 } else { buffer_size(config.mtu) };
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let guard = |name| ExitGuard {
            name,
            stop: stop.clone(),
            failed: failed.clone(),
        };
        let mut threads = Vec::new();
        {
            let g = guard("state");
            threads.push(spawn("mg-state", move || {
                let _g = g;
                persist::run(file, requests_rx, granted_tx)
            }));
        }
        {
            let (tun, socket, stop, g) =
                (tun.clone(), socket.clone(), stop.clone(), guard("outbound"));
            threads.push(spawn("mg-outbound", move || {
                let _g = g;
                outbound::run(outbound, &tun, &socket, &stop, gso, (out_rx, &wake))
            }));
        }
        {
            let (stop, g) = (stop.clone(), guard("inbound"));
            threads.push(spawn("mg-inbound", move || {
                let _g = g;
                inbound::run(inbound, &tun, &socket, &stop, size, in_rx)
            }));
        }
        Ok(Dataplane {
            stop,
            failed,
            threads,
            control: DataplaneControl {
                outbound: out_tx,
                inbound: in_tx,
            },
            offloads: Offloads { tso, gso, gro },
            echo_waiters,
        })
    }

    /// Where the control plane sends SA changes.
    pub fn control(&self) -> DataplaneControl {
        self.control.clone()
    }

    /// Where `meshgate ping` waits for its echoes' replies.
    pub fn echo_waiters(&self) -> echo::EchoWaiters {
        self.echo_waiters.clone()
    }

    /// The offloads the kernel granted.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Whether a data-plane thread has died.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Stops both threads and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning a data-plane thread")
}

/// Waits until `fd` is readable or `TICK` passes; true if readable.
fn wait_readable(fd: RawFd) -> io::Result<bool> {
    wait_readable_or(fd, None)
}

/// As [`wait_readable`], also returning when `wake` is written to.
fn wait_readable_or(fd: RawFd, wake: Option<RawFd>) -> io::Result<bool> {
    let poll = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut pfds = [poll(fd), poll(wake.unwrap_or(-1))];
    let count = if wake.is_some() { 2 } else { 1 };
    // SAFETY: `count` valid pollfds.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), count, TICK.as_millis() as i32) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

fn socket_fd(s: &UdpSocket) -> RawFd {
    s.as_raw_fd()
}

#[cfg(test)]
mod tests;
