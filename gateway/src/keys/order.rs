//! The operator's orders to the mesh, signed with the mesh CA's key: the
//! key epochs in force and the appliance certificates revoked.
//!
//! Moving the mesh to another epoch, or revoking one, is the operator's
//! act, not any member's: a member holding a valid appliance certificate
//! could otherwise rotate or revoke for the whole mesh (a mesh-wide
//! rekey or outage) by advertising it in its record. So an epoch change
//! is an [`MeshOrder`] that the operator's `meshgate keys rotate` or
//! `keys revoke` signs with the CA key (`ca.key`, kept offline like a
//! CA's key should be), and members take one only if the CA signed it.
//! Each member advertises the newest order it holds in its record, so an
//! order given to one appliance reaches all and outlives that appliance.
//!
//! Revoking an appliance's certificate is an order too (`meshgate cert
//! revoke`): it lists the certificate, and every member cuts off the
//! appliance that holds it.
//!
//! An order states the whole state (not a step), numbered by `serial`:
//! the newest wins, and replaying an older one changes nothing.

use serde::{Deserialize, Serialize};

use super::rotation::EpochState;
use super::wrapped::KeyDigest;
use super::Epoch;

/// Revoked epochs an order lists beside its floor (every epoch below the
/// floor is revoked).
pub const MAX_ORDER_REVOKED: usize = 16;
/// Revoked certificates an order lists (they leave the list when the
/// operator drops them after they expire).
pub const MAX_ORDER_CERTS: usize = 16;
/// The largest signed order a record may carry: its body (at most 16
/// revoked epochs and 16 certificates) and an ECDSA P-256 signature (at
/// most 72 bytes).
pub const MAX_SIGNED_ORDER_LEN: usize = 480;

/// Epochs whose KMS data key an order names (the current one and the one
/// before: a rotation revokes the epoch two back).
pub const MAX_ORDER_WRAPPED: usize = 2;

/// A certificate as orders name it: the first 128 bits of the SHA-256 of
/// its DER encoding (see `identity::cert_id`).
pub type CertId = [u8; 16];

/// A certificate id as printed (hex).
pub fn cert_hex(id: &CertId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate id from its hex form.
pub fn parse_cert_id(text: &str) -> Option<CertId> {
    let bytes = hex(text.trim())?;
    bytes.try_into().ok()
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}
/// What the CA signs is this context and the order's encoding, so the
/// signature can be taken for nothing else the CA key signs.
const CONTEXT: &[u8] = b"meshgate epoch order v1\0";

/// The epoch state an operator orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshOrder {
    /// Grows with every order: a member takes only an order newer than
    /// the one it holds.
    pub serial: u64,
    /// The epoch new SAs are negotiated under.
    pub current: Epoch,
    /// Every epoch below this one is revoked (a rotation revokes the
    /// epoch two back, whose SAs were rekeyed at the rotation before), so
    /// no revocation is ever forgotten.
    pub floor: Epoch,
    /// Further revoked epochs, at or above the floor.
    pub revoked: Vec<Epoch>,
    /// Revoked appliance certificates: their holders are cut off.
    pub certs: Vec<CertId>,
    /// With KMS epoch keys: the digest of each live epoch's data key as
    /// KMS encrypted it (`keys::wrapped`). Only the ciphertext travels in
    /// the mesh; the CA's signature here is what a member checks a
    /// ciphertext from a peer against before asking KMS to decrypt it.
    pub wrapped: Vec<(Epoch, KeyDigest)>,
}

/// An order as it travels: its encoding and the CA's signature over it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedOrder {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Who signs orders: the mesh CA (see `identity::CaSigner` and
/// `identity::MeshCa`).
pub trait OrderAuthority: Send + Sync {
    /// Whether `signature` over `message` is the CA's.
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool;
}

/// Why an order is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order is not signed by the mesh CA")]
    Forged,
    #[error("the order is malformed: {0}")]
    Malformed(String),
    #[error("order {theirs} is not newer than order {ours}, in force here")]
    Stale { theirs: u64, ours: u64 },
    #[error("epoch {0} is not in use yet (the mesh is in epoch {1})")]
    Future(Epoch, Epoch),
    #[error("epoch {0} is revoked already")]
    AlreadyRevoked(Epoch),
    #[error("no epoch is left after {0}")]
    Exhausted(Epoch),
    #[error("an order lists at most {MAX_ORDER_REVOKED} revoked epochs beside its floor; rotate first, which moves the floor up")]
    TooManyRevoked,
    #[error("certificate {0} is revoked already")]
    CertRevoked(String),
    #[error("an order lists at most {MAX_ORDER_CERTS} revoked certificates; drop one that has expired first (`cert revoke --drop`)")]
    TooManyCerts,
}

impl MeshOrder {
    /// The bytes the CA signs.
    pub fn message(body: &[u8]) -> Vec<u8> {
        [CONTEXT, body].concat()
    }

    /// Encodes and signs with `sign` (the CA key's signature over a message).
    pub fn seal(
        &self,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<SignedOrder, String> {
        let body = postcard::to_allocvec(self).map_err(|e| e.to_string())?;
        let signature = sign(&Self::message(&body))?;
        let order = SignedOrder { body, signature };
        if order.len() > MAX_SIGNED_ORDER_LEN {
            return Err(format!(
                "the signed order is {} bytes, over {MAX_SIGNED_ORDER_LEN}",
                order.len()
            ));
        }
        Ok(order)
    }

    fn problem(&self) -> Option<String> {
        if self.revoked.len() > MAX_ORDER_REVOKED {
            return Some(format!("{} revoked epochs", self.revoked.len()));
        }
        if self.certs.len() > MAX_ORDER_CERTS {
            return Some(format!("{} revoked certificates", self.certs.len()));
        }
        if self.wrapped.len() > MAX_ORDER_WRAPPED {
            return Some(format!("{} wrapped keys", self.wrapped.len()));
        }
        if let Some((e, _)) = self.wrapped.iter().find(|(e, _)| *e < self.floor) {
            return Some(format!("a wrapped key for epoch {e}, below the floor"));
        }
        if self.current < self.floor {
            return Some(format!(
                "epoch {} is below the floor {}",
                self.current, self.floor
            ));
        }
        None
    }

    /// The state the order describes.
    pub fn state(&self) -> EpochState {
        EpochState::from_order(self)
    }
}

impl SignedOrder {
    pub fn len(&self) -> usize {
        self.body.len() + self.signature.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The order, if `authority` signed it: the signature is checked
    /// before the body is decoded.
    pub fn open(&self, authority: &dyn OrderAuthority) -> Result<MeshOrder, OrderError> {
        if self.len() > MAX_SIGNED_ORDER_LEN {
            return Err(OrderError::Malformed(format!("{} bytes", self.len())));
        }
        if !authority.verify(&MeshOrder::message(&self.body), &self.signature) {
            return Err(OrderError::Forged);
        }
        let order: MeshOrder =
            postcard::from_bytes(&self.body).map_err(|e| OrderError::Malformed(e.to_string()))?;
        match order.problem() {
            Some(p) => Err(OrderError::Malformed(p)),
            None => Ok(order),
        }
    }

    /// The text form an operator carries between machines (hex).
    pub fn to_hex(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Result<SignedOrder, OrderError> {
        let text = text.trim();
        let malformed = || OrderError::Malformed("not the hex of a signed order".into());
        if text.len() > 4 * MAX_SIGNED_ORDER_LEN {
            return Err(malformed());
        }
        let bytes = hex(text).ok_or_else(malformed)?;
        postcard::from_bytes(&bytes).map_err(|_| malformed())
    }
}

impl std::fmt::Display for MeshOrder {
    /// `serial 3 current 4 floor 2 revoked 3 certs none`: what `keys
    /// show` prints and `keys rotate --state` reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(",")
            }
        };
        write!(
            f,
            "serial {} current {} floor {} revoked {} certs {}",
            self.serial,
            self.current,
            self.floor,
            list(self.revoked.iter().map(|e| e.to_string()).collect()),
            list(self.certs.iter().map(cert_hex).collect()),
        )?;
        // Only with KMS epoch keys, so the local provider's form is as it was.
        if !self.wrapped.is_empty() {
            let keys = self
                .wrapped
                .iter()
                .map(|(e, d)| format!("{e}:{}", cert_hex(d)));
            write!(f, " keys {}", list(keys.collect()))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for MeshOrder {
    type Err = OrderError;

    fn from_str(s: &str) -> Result<MeshOrder, OrderError> {
        let bad = |why: &str| OrderError::Malformed(format!("'{}': {why}", s.trim()));
        const FORM: &str =
            "expected: serial N current N floor N revoked none|N,N certs none|HEX,HEX [keys EPOCH:HEX,EPOCH:HEX]";
        let words: Vec<&str> = s.split_whitespace().collect();
        let (words, keys) = match words.len() {
            12 if words[10] == "keys" => (&words[..10], Some(words[11])),
            _ => (&words[..], None),
        };
        let [s0, serial, c0, current, f0, floor, r0, revoked, k0, certs] = words[..] else {
            return Err(bad(FORM));
        };
        if [s0, c0, f0, r0, k0] != ["serial", "current", "floor", "revoked", "certs"] {
            return Err(bad(FORM));
        }
        let number = |w: &str| {
            w.parse::<u64>()
                .map_err(|_| bad(&format!("'{w}' is not a number")))
        };
        let epoch = |w: &str| {
            w.parse::<Epoch>()
                .map_err(|_| bad(&format!("'{w}' is not an epoch")))
        };
        let revoked = if revoked == "none" {
            Vec::new()
        } else {
            revoked
                .split(',')
                .map(epoch)
                .collect::<Result<Vec<_>, _>>()?
        };
        let certs = if certs == "none" {
            Vec::new()
        } else {
            certs
                .split(',')
                .map(|c| {
                    parse_cert_id(c).ok_or_else(|| bad(&format!("'{c}' is not a certificate id")))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let wrapped = match keys {
            None | Some("none") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|k| {
                    let (e, d) = k.split_once(':').unwrap_or((k, ""));
                    let d = parse_cert_id(d)
                        .ok_or_else(|| bad(&format!("'{k}' is not EPOCH:DIGEST")))?;
                    Ok((epoch(e)?, d))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let order = MeshOrder {
            serial: number(serial)?,
            current: epoch(current)?,
            floor: epoch(floor)?,
            revoked,
            certs,
            wrapped,
        };
        match order.problem() {
            Some(p) => Err(OrderError::Malformed(p)),
            None => Ok(order),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A stand-in for the CA in tests on virtual time: its "signature" is
    /// a digest keyed with a secret only it holds.
    pub struct TestCa(pub &'static [u8]);

    impl TestCa {
        pub fn sign(&self, order: &MeshOrder) -> SignedOrder {
            order
                .seal(|m| Ok(self.signature(m)))
                .expect("a test order fits")
        }

        fn signature(&self, message: &[u8]) -> Vec<u8> {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0);
            ring::hmac::sign(&key, message).as_ref().to_vec()
        }
    }

    impl OrderAuthority for TestCa {
        fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0);
            ring::hmac::verify(&key, message, signature).is_ok()
        }
    }

    fn order() -> MeshOrder {
        MeshOrder {
            serial: 3,
            current: 4,
            floor: 2,
            revoked: vec![3],
            certs: vec![[0xab; 16]],
            wrapped: Vec::new(),
        }
    }

    #[test]
    fn an_order_opens_only_with_the_cas_signature() {
        let ca = TestCa(b"the mesh CA");
        let signed = ca.sign(&order());
        assert_eq!(signed.open(&ca), Ok(order()));
        // Signed by another key (a member's own), or altered after signing.
        let forged = TestCa(b"a member").sign(&order());
        assert_eq!(forged.open(&ca), Err(OrderError::Forged));
        let mut altered = signed.clone();
        let last = altered.body.len() - 1;
        altered.body[last] ^= 1;
        assert_eq!(altered.open(&ca), Err(OrderError::Forged));
        // The hex form round-trips; garbage is refused with a reason.
        assert_eq!(SignedOrder::from_hex(&signed.to_hex()).unwrap(), signed);
        for bad in ["", "0", "zz", &"00".repeat(1000)] {
            assert!(SignedOrder::from_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_text_form_round_trips_and_refuses_nonsense() {
        let text = order().to_string();
        assert_eq!(
            text,
            format!(
                "serial 3 current 4 floor 2 revoked 3 certs {}",
                "ab".repeat(16)
            )
        );
        assert_eq!(text.parse::<MeshOrder>().unwrap(), order());
        let none = "serial 0 current 1 floor 0 revoked none certs none"
            .parse::<MeshOrder>()
            .unwrap();
        assert!(none.revoked.is_empty() && none.certs.is_empty());
        // KMS data keys' digests, when the order names any.
        let kms = MeshOrder {
            wrapped: vec![(3, [0x11; 16]), (4, [0x22; 16])],
            ..order()
        };
        let text = kms.to_string();
        assert!(
            text.ends_with(&format!(
                " keys 3:{},4:{}",
                "11".repeat(16),
                "22".repeat(16)
            )),
            "{text}"
        );
        assert_eq!(text.parse::<MeshOrder>().unwrap(), kms);
        for bad in [
            "",
            "serial x current 1 floor 0 revoked none certs none",
            "serial 1 current 1 floor 2 revoked none certs none",
            "current 1 serial 1 floor 0 revoked none certs none",
            "serial 1 current 1 floor 0 revoked none certs abc",
            "serial 1 current 1 floor 0 revoked none",
            "serial 1 current 1 floor 0 revoked none certs none keys 1:zz",
            "serial 1 current 2 floor 2 revoked none certs none keys 1:00000000000000000000000000000000",
        ] {
            assert!(bad.parse::<MeshOrder>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_order_at_its_limits_fits_a_record() {
        let ca = TestCa(b"ca");
        let big = MeshOrder {
            serial: u64::MAX,
            current: Epoch::MAX,
            floor: Epoch::MAX - 100,
            revoked: (0..MAX_ORDER_REVOKED as Epoch)
                .map(|e| Epoch::MAX - e)
                .collect(),
            certs: vec![[0xff; 16]; MAX_ORDER_CERTS],
            wrapped: vec![(Epoch::MAX - 1, [0xff; 16]), (Epoch::MAX, [0xff; 16])],
        };
        // An ECDSA P-256 signature is at most 72 bytes; the test CA's 32.
        let signed = big.seal(|_| Ok(vec![0xff; 72])).expect("fits");
        assert!(signed.len() <= MAX_SIGNED_ORDER_LEN, "{}", signed.len());
        let mut too_many = big.clone();
        too_many.revoked.push(1);
        assert!(matches!(
            ca.sign_unchecked(&too_many).open(&ca),
            Err(OrderError::Malformed(_))
        ));
    }

    impl TestCa {
        fn sign_unchecked(&self, order: &MeshOrder) -> SignedOrder {
            let body = postcard::to_allocvec(order).unwrap();
            let signature = self.signature(&MeshOrder::message(&body));
            SignedOrder { body, signature }
        }
    }
}
