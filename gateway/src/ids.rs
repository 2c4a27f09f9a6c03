//! What may name a member: the one rule for the config, the records, the
//! liveness reports and the key-exchange messages. A leaf module, so the
//! cores that parse ids (membership, keys) need not use each other.

/// The longest member id (a DNS label: certificates bind it as one).
pub const MAX_ID_LEN: usize = 63;

/// Whether `id` may name a member: 1 to [`MAX_ID_LEN`] letters, digits,
/// `-`, `_` or `.`. The one rule, for the config, the records, the
/// liveness reports and the key-exchange messages.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
