//! The signalling channel's transport: one QUIC endpoint per appliance
//! (quinn), mutual TLS 1.3 with the mesh CA as the only trust anchor. A
//! client checks that the server's certificate names the member it meant
//! to reach; a server accepts only clients whose certificate chains to the
//! mesh CA and learns from it which member they are. A peer that fails
//! either never gets a connection, so nothing it says is read.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::identity::{load_cert, Claims, IdentityError, MeshCa};

/// The ALPN protocol of the signalling channel.
pub const ALPN: &[u8] = b"meshgate/1";

/// Why the channel could not be set up or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("binding the signalling endpoint {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("connecting to {peer} at {addr}: {reason}")]
    Connect {
        peer: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("a connection from {addr} was refused: {reason}")]
    Refused { addr: SocketAddr, reason: String },
}

impl TransportError {
    /// The counter's reason label.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect_failed",
            TransportError::Refused { .. } => "refused",
            _ => "local",
        }
    }

    /// The member or address concerned, if any.
    pub fn peer(&self) -> Option<String> {
        match self {
            TransportError::Connect { peer, .. } => Some(peer.clone()),
            TransportError::Refused { addr, .. } => Some(addr.to_string()),
            _ => None,
        }
    }
}

/// This appliance's credentials: its certificate and key, and the mesh CA.
pub struct Credentials {
    pub claims: Claims,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ca: Arc<MeshCa>,
    ca_der: CertificateDer<'static>,
}

/// Which part of the credentials a load failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialPart {
    /// The CA file.
    Ca,
    /// The certificate file.
    Cert,
    /// The certificate does not chain to the CA (or names no member).
    Chain,
    /// The key file.
    Key,
}

impl Credentials {
    /// Loads them and checks that our own certificate chains to the CA
    /// (a misissued certificate is a start-up error, not a silent outage).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TransportError> {
        Credentials::load_each(ca, cert, key).map_err(|(_, e)| e)
    }

    /// As [`load`](Self::load), each file read once, an error saying which
    /// part it concerns (so the config can name the field).
    pub fn load_each(
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Credentials, (CredentialPart, TransportError)> {
        use rustls_pki_types::pem::PemObject;
        let mesh_ca = MeshCa::load(ca).map_err(|e| (CredentialPart::Ca, e.into()))?;
        let ca_der = mesh_ca.der().clone();
        let cert_der = load_cert(cert).map_err(|e| (CredentialPart::Cert, e.into()))?;
        let claims = mesh_ca
            .verify(&cert_der, None, UnixTime::now())
            .map_err(|e| (CredentialPart::Chain, e.into()))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            (
                CredentialPart::Key,
                TransportError::Key {
                    path: key.display().to_string(),
                    reason: e.to_string(),
                },
            )
        })?;
        Ok(Credentials {
            claims,
            cert: cert_der,
            key,
            ca: Arc::new(mesh_ca),
            ca_der,
        })
    }

    /// Whether the key is the certificate's (their public keys agree):
    /// a mismatch would otherwise surface only as a failed TLS set-up.
    pub fn keys_match(&self) -> Result<(), String> {
        let signer =
            rustls::crypto::ring::sign::any_supported_type(&self.key).map_err(|e| e.to_string())?;
        rustls::sign::CertifiedKey::new(vec![self.cert.clone()], signer)
            .keys_match()
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "their public keys differ".to_string()
                }
                other => other.to_string(),
            })
    }

    pub fn ca(&self) -> &Arc<MeshCa> {
        &self.ca
    }

    /// This appliance as its peers see it.
    pub fn as_peer(&self) -> PeerCert {
        PeerCert {
            claims: self.claims.clone(),
            cert: self.cert.clone(),
        }
    }

    /// The appliance key as a signer of member records (an ECDSA P-256
    /// key, as `meshgate cert issue` makes).
    pub fn record_signer(&self) -> Result<ring::signature::EcdsaKeyPair, TransportError> {
        let PrivateKeyDer::Pkcs8(k) = &self.key else {
            return Err(TransportError::Tls(
                "the appliance key is not a PKCS#8 key".into(),
            ));
        };
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            k.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| {
            TransportError::Tls(format!(
                "the appliance key must be ECDSA P-256 (as `meshgate cert issue` makes): {e}"
            ))
        })
    }
}

fn tls(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// Timeouts suited to inter-region round trips: keep-alives well inside
/// the idle timeout, so a quiet but healthy link never closes.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    t.datagram_receive_buffer_size(Some(1 << 20));
    Arc::new(t)
}

/// A QUIC endpoint bound to `addr` that serves and connects with `creds`.
pub fn endpoint(creds: &Credentials, addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(creds.ca_der.clone()).map_err(tls)?;
    let roots = Arc::new(roots);

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(tls)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![creds.cert.clone()], creds.key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server).map_err(tls)?,
    ));
    server.transport_config(transport_config());

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![creds.cert.clone()], creds.key.clone_key())
        .map_err(tls)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut client =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).map_err(tls)?));
    client.transport_config(transport_config());

    let mut endpoint = quinn::Endpoint::server(server, addr).map_err(|e| TransportError::Bind {
        addr,
        reason: e.to_string(),
    })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The server name that proves a peer is `id`.
pub fn server_name(id: &str) -> String {
    format!("{id}.member.meshgate")
}

/// A peer as its certificate (chain-checked by TLS, then by us) shows it.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub claims: Claims,
    pub cert: CertificateDer<'static>,
}

/// What the peer's certificate (already chain-checked by TLS) certifies.
fn peer_claims(conn: &quinn::Connection, ca: &MeshCa) -> Result<PeerCert, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no peer certificate")?;
    let leaf = certs.first().ok_or("no peer certificate")?;
    let claims = ca
        .verify(leaf, None, UnixTime::now())
        .map_err(|e| e.to_string())?;
    Ok(PeerCert {
        claims,
        cert: leaf.clone(),
    })
}

/// Connects to member `peer` at `addr`; fails unless its certificate chains
/// to the mesh CA and names `peer`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    creds: &Credentials,
    peer: &str,
    addr: SocketAddr,
) -> Result<(quinn::Connection, PeerCert), TransportError> {
    let err = |reason: String| TransportError::Connect {
        peer: peer.to_string(),
        addr,
        reason,
    };
    let conn = endpoint
        .connect(addr, &server_name(peer))
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))?;
    let pc = peer_claims(&conn, creds.ca()).map_err(err)?;
    if pc.claims.id != peer {
        conn.close(1u32.into(), b"wrong member");
        return Err(err(format!("its certificate is {}'s", pc.claims.id)));
    }
    Ok((conn, pc))
}

/// Completes an incoming connection: the TLS handshake has checked the
/// client's certificate against the mesh CA; returns who it is.
pub async fn accept(
    incoming: quinn::Incoming,
    creds: &Credentials,
) -> Result<(quinn::Connection, PeerCert), TransportError> {
    let addr = incoming.remote_address();
    let refused = |reason: String| TransportError::Refused { addr, reason };
    let conn = incoming.await.map_err(|e| refused(e.to_string()))?;
    let pc = peer_claims(&conn, creds.ca()).map_err(refused)?;
    Ok((conn, pc))
}
