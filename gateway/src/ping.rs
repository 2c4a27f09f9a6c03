//! `meshgate ping MEMBER`: the tunnel path measured by echoes that cross
//! the SAs each way (see [`crate::dataplane::echo`]), and the signalling
//! path as membership's liveness probes measure it, side by side, as
//! `tailscale ping` separates its paths.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dataplane::control::{OutboundCommand, OutboundSender};
use crate::dataplane::echo::{Echo, EchoWaiters};

/// How long a reply is waited for.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// The most echoes one ping sends.
pub const MAX_COUNT: u32 = 100;

/// A peer's slot in the data plane's tables, by id.
pub type SlotOf = Box<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// Sends echoes to peers by id.
pub struct Pinger {
    outbound: OutboundSender,
    waiters: EchoWaiters,
    slot_of: SlotOf,
    /// One ping at a time.
    busy: tokio::sync::Mutex<()>,
}

/// What the echoes found.
#[derive(Debug, Default, Serialize)]
pub struct TunnelPath {
    pub sent: u32,
    pub answered: u32,
    /// Each echo's round trip in ms, `null` for one unanswered.
    pub rtt_ms: Vec<Option<f64>>,
    pub min_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The SPI of the SA the requests went out on, and of the one the
    /// replies came back on (`0x` and 8 hex digits).
    pub request_spi: Option<String>,
    pub reply_spi: Option<String>,
}

impl Pinger {
    pub fn new(outbound: OutboundSender, waiters: EchoWaiters, slot_of: SlotOf) -> Pinger {
        Pinger {
            outbound,
            waiters,
            slot_of,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// `count` echoes to `member`, `interval` apart.
    pub async fn tunnel(
        &self,
        member: &str,
        count: u32,
        interval: Duration,
    ) -> Result<TunnelPath, String> {
        let slot = (self.slot_of)(member).ok_or_else(|| format!("no peer {member} here"))?;
        let _one = self.busy.lock().await;
        let mut path = TunnelPath::default();
        for i in 0..count.min(MAX_COUNT) {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let id = rand::random::<u64>();
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Ok(mut w) = self.waiters.lock() {
                w.insert(id, tx);
            }
            let sent = Instant::now();
            path.sent += 1;
            self.outbound
                .send(OutboundCommand::Echo {
                    slot,
                    echo: Echo::request(id),
                })
                .map_err(|_| "the data plane has stopped".to_string())?;
            match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                Ok(Ok(reply)) => {
                    path.answered += 1;
                    path.rtt_ms.push(Some(
                        reply.at.saturating_duration_since(sent).as_secs_f64() * 1e3,
                    ));
                    path.request_spi = Some(format!("{:#010x}", reply.echo.request_spi));
                    path.reply_spi = Some(format!("{:#010x}", reply.spi));
                }
                _ => {
                    if let Ok(mut w) = self.waiters.lock() {
                        w.remove(&id);
                    }
                    path.rtt_ms.push(None);
                }
            }
        }
        let got: Vec<f64> = path.rtt_ms.iter().flatten().copied().collect();
        if !got.is_empty() {
            path.min_ms = got.iter().copied().reduce(f64::min);
            path.max_ms = got.iter().copied().reduce(f64::max);
            path.avg_ms = Some(got.iter().sum::<f64>() / got.len() as f64);
        }
        Ok(path)
    }
}
