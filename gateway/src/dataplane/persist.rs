//! The data plane's side of the sequence-number state file (`seqstate`):
//! a thread that owns the file, so the packet threads never wait on a disk.
//! The outbound thread asks it to reserve the next block of sequence
//! numbers well before the current one runs out, and gets the new limit
//! back once it is on disk; the inbound thread reports its replay windows.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::seqstate::{Half, SeqFile};

/// A request to the state thread.
pub(super) enum StateMsg {
    /// Persist `resume` as the outbound SA's restart point, then answer
    /// `(peer, resume)` so the SA may use numbers below it.
    Reserve {
        peer: usize,
        spi: u32,
        fingerprint: String,
        resume: u64,
    },
    /// Persist an inbound SA's replay-window top (no answer).
    InboundTop {
        spi: u32,
        fingerprint: String,
        top: u64,
    },
}

/// How often window tops, which need no fsync, are made durable anyway.
const SYNC_EVERY: Duration = Duration::from_secs(5);

/// The state thread: applies requests until both packet threads are gone.
pub(super) fn run(mut file: SeqFile, requests: Receiver<StateMsg>, granted: Sender<(usize, u64)>) {
    let mut dirty = false;
    let mut last_sync = Instant::now();
    loop {
        match requests.recv_timeout(Duration::from_millis(500)) {
            Ok(StateMsg::Reserve {
                peer,
                spi,
                fingerprint,
                resume,
            }) => {
                file.set(Half::Out, spi, &fingerprint, resume);
                match file.save(true) {
                    Ok(()) => {
                        dirty = false;
                        last_sync = Instant::now();
                        let _ = granted.send((peer, resume));
                    }
                    // No answer: the SA stops at its current limit and its
                    // packets are dropped as seq_not_reserved (fail closed).
                    Err(e) => {
                        tracing::error!("cannot reserve sequence numbers for SA {spi:#010x}: {e}")
                    }
                }
            }
            Ok(StateMsg::InboundTop {
                spi,
                fingerprint,
                top,
            }) => {
                file.set(Half::In, spi, &fingerprint, top);
                dirty = true;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if dirty {
            let sync = last_sync.elapsed() >= SYNC_EVERY;
            match file.save(sync) {
                Ok(()) => {
                    dirty = false;
                    if sync {
                        last_sync = Instant::now();
                    }
                }
                Err(e) => tracing::warn!("cannot save the replay windows: {e}"),
            }
        }
    }
    if let Err(e) = file.save(true) {
        tracing::warn!("cannot save the replay windows: {e}");
    }
}
