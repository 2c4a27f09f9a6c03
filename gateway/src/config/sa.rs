//! Validation of `[sa]` (what every SA uses) and of each configured
//! peer's SAs and keys.

use super::*;

impl Validator<'_> {
    pub(super) fn sa_defaults(&self, d: &RawSaDefaults) -> Result<SaDefaults, ConfigError> {
        let suite = match &d.cipher {
            None => CipherSuite::Aes128Gcm,
            Some(c) => match CipherSuite::from_name(c.get_ref()) {
                Some(suite) => suite,
                None => {
                    return self.err(
                        c.span(),
                        "sa.cipher",
                        format!(
                            "unknown cipher '{}'; expected aes128gcm16 or aes256gcm16",
                            c.get_ref()
                        ),
                    )
                }
            },
        };
        let backend = match &d.backend {
            None => Backend::Ring,
            Some(b) => match Backend::from_name(b.get_ref()) {
                Some(backend) => backend,
                None => {
                    return self.err(
                        b.span(),
                        "sa.backend",
                        format!(
                            "unknown AEAD backend '{}'; expected ring or rustcrypto",
                            b.get_ref()
                        ),
                    )
                }
            },
        };
        let replay_window = match &d.replay_window {
            None => 4096,
            Some(w) => {
                let v = *w.get_ref();
                if v < MIN_REPLAY_WINDOW as u64 || v > 1 << 20 {
                    return self.err(
                        w.span(),
                        "sa.replay_window",
                        format!("{v} is outside {MIN_REPLAY_WINDOW}..=1048576 packets"),
                    );
                }
                v as usize
            }
        };
        let lifetime = Lifetime {
            soft: d.lifetime.soft.to_limits(),
            hard: d.lifetime.hard.to_limits(),
        };
        for (stage, limits) in [("soft", &d.lifetime.soft), ("hard", &d.lifetime.hard)] {
            for (kind, v) in limits.named() {
                if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
                    return self.err(
                        v.span(),
                        &format!("sa.lifetime.{stage}.{kind}"),
                        "a limit of 0 would expire the SA at once; leave it out for no limit",
                    );
                }
            }
        }
        for ((kind, soft), (_, hard)) in d
            .lifetime
            .soft
            .named()
            .into_iter()
            .zip(d.lifetime.hard.named())
        {
            if let (Some(s), Some(h)) = (soft, hard) {
                if s.get_ref() >= h.get_ref() {
                    return self.err(
                        s.span(),
                        &format!("sa.lifetime.soft.{kind}"),
                        format!(
                            "soft limit {} must be below the hard limit {}",
                            s.get_ref(),
                            h.get_ref()
                        ),
                    );
                }
            }
        }
        Ok(SaDefaults {
            suite,
            esn: d.esn.unwrap_or(true),
            backend,
            replay_window,
            lifetime,
        })
    }

    pub(super) fn sa(
        &self,
        s: &Spanned<RawSa>,
        field: &str,
        d: &SaDefaults,
    ) -> Result<SaParams, ConfigError> {
        let raw = s.get_ref();
        let spi = *raw.spi.get_ref();
        if !(256..=u32::MAX as u64).contains(&spi) {
            return self.err(
                raw.spi.span(),
                &format!("{field}.spi"),
                format!(
                    "{spi} is not a usable SPI (256..=4294967295; 0-255 are reserved by RFC 4303)"
                ),
            );
        }
        let hex = match (&raw.key_file, &raw.key_env) {
            (Some(f), None) => {
                let p = self.relative_path(f.get_ref());
                match std::fs::read_to_string(&p) {
                    Ok(t) => (t, f.span(), format!("{field}.key_file")),
                    Err(e) => {
                        return self.err(
                            f.span(),
                            &format!("{field}.key_file"),
                            format!("cannot read {}: {e}", p.display()),
                        )
                    }
                }
            }
            (None, Some(v)) => match (self.env)(v.get_ref()) {
                Some(t) => (t, v.span(), format!("{field}.key_env")),
                None => {
                    return self.err(
                        v.span(),
                        &format!("{field}.key_env"),
                        format!("environment variable {} is not set", v.get_ref()),
                    )
                }
            },
            _ => return self.err(s.span(), field, "give exactly one of key_file or key_env"),
        };
        let parsed = KeyMaterial::from_hex(d.suite, hex.0.trim());
        // The text of the key file is dropped here; wipe it, whatever the outcome.
        let mut text = hex.0;
        zeroize::Zeroize::zeroize(&mut text);
        let key = match parsed {
            Ok(k) => k,
            Err(e) => return self.err(hex.1, &hex.2, e),
        };
        Ok(SaParams {
            spi: spi as u32,
            suite: d.suite,
            key,
            esn: d.esn,
            backend: d.backend,
            lifetime: d.lifetime,
            replay_window: d.replay_window,
        })
    }
}
