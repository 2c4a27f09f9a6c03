//! Signalling messages on a QUIC connection: each travels on its own
//! unidirectional stream, a kind byte and the body, so a slow or large one
//! never holds up another, and a reader never buffers more than the
//! largest message of its kind.

use crate::keys::message::MAX_MESSAGE_LEN;

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A key-exchange message (`keys::message`).
    KeyExchange,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::KeyExchange => 1,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        match c {
            1 => Some(Kind::KeyExchange),
            _ => None,
        }
    }

    /// The largest body of this kind.
    fn max_len(self) -> usize {
        match self {
            Kind::KeyExchange => MAX_MESSAGE_LEN,
        }
    }
}

/// Why a message from a peer was refused (the connection stays).
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("a {kind:?} message over {max} bytes")]
    Oversized { kind: Kind, max: usize },
    #[error("reading a message: {0}")]
    Read(String),
    #[error("sending a message: {0}")]
    Write(String),
}

impl MessageError {
    /// The counter's reason label.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::UnknownKind(_) => "unknown_kind",
            MessageError::Oversized { .. } => "oversized",
            MessageError::Read(_) => "unreadable",
            MessageError::Write(_) => "unwritable",
        }
    }
}

/// Sends one message of `kind`.
pub async fn send(conn: &quinn::Connection, kind: Kind, body: &[u8]) -> Result<(), MessageError> {
    let write = |e: String| MessageError::Write(e);
    let mut s = conn.open_uni().await.map_err(|e| write(e.to_string()))?;
    s.write_all(&[kind.code()])
        .await
        .map_err(|e| write(e.to_string()))?;
    s.write_all(body).await.map_err(|e| write(e.to_string()))?;
    s.finish().map_err(|e| write(e.to_string()))
}

/// Reads one message from a stream the peer opened; refuses unknown kinds
/// and bodies past their kind's limit without reading them whole.
pub async fn read(mut s: quinn::RecvStream) -> Result<(Kind, Vec<u8>), MessageError> {
    let mut code = [0u8; 1];
    s.read_exact(&mut code)
        .await
        .map_err(|e| MessageError::Read(e.to_string()))?;
    let kind = Kind::from_code(code[0]).ok_or(MessageError::UnknownKind(code[0]))?;
    match s.read_to_end(kind.max_len()).await {
        Ok(body) => Ok((kind, body)),
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = s.stop(1u32.into());
            Err(MessageError::Oversized {
                kind,
                max: kind.max_len(),
            })
        }
        Err(e) => Err(MessageError::Read(e.to_string())),
    }
}
