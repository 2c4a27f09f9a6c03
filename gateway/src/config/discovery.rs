//! `[signal.discovery]`: seeds found by EC2 tags, in the regions and
//! accounts of the mesh.

use super::raw::RawDiscovery;
use super::*;

impl Validator<'_> {
    pub(super) fn discovery(&self, d: &Spanned<RawDiscovery>) -> Result<TagDiscovery, ConfigError> {
        let d = d.get_ref();
        match d.backend.get_ref().as_str() {
            "ec2-tags" if cfg!(feature = "aws") => {}
            "ec2-tags" => {
                return self.err(
                    d.backend.span(),
                    "signal.discovery.backend",
                    "this build has no AWS SDK (built without the aws feature): list signal.seeds instead",
                )
            }
            other => {
                return self.err(
                    d.backend.span(),
                    "signal.discovery.backend",
                    format!("unknown discovery backend '{other}'; expected ec2-tags"),
                )
            }
        }
        let mesh = d.mesh.get_ref().trim();
        if mesh.is_empty() || mesh.len() > 256 {
            return self.err(
                d.mesh.span(),
                "signal.discovery.mesh",
                "the mesh's name, the value of the meshgate:mesh tag (1-256 characters)",
            );
        }
        if d.regions.get_ref().is_empty() {
            return self.err(
                d.regions.span(),
                "signal.discovery.regions",
                "name the regions of the mesh (for example [\"eu-west-1\", \"us-east-1\"])",
            );
        }
        let mut regions = Vec::new();
        for (i, r) in d.regions.get_ref().iter().enumerate() {
            let v = r.get_ref().trim();
            let valid = !v.is_empty()
                && v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return self.err(
                    r.span(),
                    &format!("signal.discovery.regions[{i}]"),
                    format!("'{v}' is not a region name (for example eu-west-1)"),
                );
            }
            if !regions.iter().any(|x| x == v) {
                regions.push(v.to_string());
            }
        }
        let mut roles = Vec::new();
        for (i, r) in d.roles.iter().enumerate() {
            let v = r.get_ref().trim();
            if !is_role_arn(v) {
                return self.err(
                    r.span(),
                    &format!("signal.discovery.roles[{i}]"),
                    format!("'{v}' is not a role ARN (arn:aws:iam::123456789012:role/NAME)"),
                );
            }
            roles.push(v.to_string());
        }
        let endpoint_url =
            self.http_url(d.endpoint_url.as_ref(), "signal.discovery.endpoint_url")?;
        Ok(TagDiscovery {
            mesh: mesh.to_string(),
            regions,
            roles,
            endpoint_url,
        })
    }

    /// An optional `http://` or `https://` URL (an endpoint other than
    /// AWS's: a VPC endpoint, or an emulator).
    pub(super) fn http_url(
        &self,
        url: Option<&Spanned<String>>,
        field: &str,
    ) -> Result<Option<String>, ConfigError> {
        match url {
            Some(u)
                if !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://")) =>
            {
                self.err(
                    u.span(),
                    field,
                    format!("'{}' is not an http:// or https:// URL", u.get_ref()),
                )
            }
            Some(u) => Ok(Some(u.get_ref().clone())),
            None => Ok(None),
        }
    }
}

/// `arn:<partition>:iam::<12 digits>:role/<path and name>`.
pub(crate) fn is_role_arn(v: &str) -> bool {
    let parts: Vec<&str> = v.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|n| !n.is_empty()))
}
