//! Why a key-exchange message was refused or an exchange failed.

use super::epoch::Epoch;
use super::message::Malformed;

/// Why a message was refused or an exchange failed. None of these carry
/// key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("no key for epoch {epoch}: {reason}")]
    NoEpochKey { epoch: Epoch, reason: String },
    #[error("epoch {0} is revoked")]
    Revoked(Epoch),
    #[error("the peer offers epoch {theirs}; this gateway answers epoch {ours} only (and the one before, for a minute after a rotation)")]
    Epoch { theirs: Epoch, ours: Epoch },
    #[error("the peer authenticated as {authenticated} but claims to be {claimed}")]
    Impersonation {
        claimed: String,
        authenticated: String,
    },
    #[error("the init is addressed to {0}, not to this gateway")]
    NotForUs(String),
    #[error("exchange {0:016x} was seen before (a replay)")]
    Replay(u64),
    #[error("a {0} for no exchange in progress")]
    Unexpected(&'static str),
    #[error("the peer proposes {theirs}, this gateway runs {ours}")]
    Suite {
        theirs: &'static str,
        ours: &'static str,
    },
    #[error("the MAC does not verify (the peer derived other keys: another epoch key?)")]
    Authentication,
    #[error("both sides started an exchange; this side's goes on")]
    Collision,
    #[error("SPI {0:#x} is reserved")]
    ReservedSpi(u32),
    #[error("the exchange timed out")]
    Timeout,
    #[error("key agreement failed")]
    Crypto,
}

impl ExchangeError {
    /// The `reason` label of the negotiation counter.
    pub fn kind(&self) -> &'static str {
        match self {
            ExchangeError::Malformed(_) => "malformed",
            ExchangeError::NoEpochKey { .. } => "no_epoch_key",
            ExchangeError::Revoked(_) => "revoked_epoch",
            ExchangeError::Epoch { .. } => "epoch",
            ExchangeError::Impersonation { .. } => "impersonation",
            ExchangeError::NotForUs(_) => "misaddressed",
            ExchangeError::Replay(_) => "replay",
            ExchangeError::Unexpected(_) => "unexpected",
            ExchangeError::Suite { .. } => "suite",
            ExchangeError::Authentication => "authentication",
            ExchangeError::Collision => "collision",
            ExchangeError::ReservedSpi(_) => "reserved_spi",
            ExchangeError::Timeout => "timeout",
            ExchangeError::Crypto => "crypto",
        }
    }
}
