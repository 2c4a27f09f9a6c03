//! Validation of `[cloud]`: where an active appliance claims its
//! redundancy group's routes.

use super::*;

impl Validator<'_> {
    pub(super) fn cloud(
        &self,
        raw: &RawConfig,
        placement: &Placement,
    ) -> Result<Option<CloudConfig>, ConfigError> {
        let Some(c) = &raw.cloud else {
            return Ok(None);
        };
        if placement.group.is_none() {
            return self.err(
                c.span(),
                "cloud",
                "[cloud] claims a redundancy group's routes for its active member: set gateway.group",
            );
        }
        let c = c.get_ref();
        let interface = c.interface.get_ref().trim();
        if interface.is_empty() {
            return self.err(
                c.interface.span(),
                "cloud.interface",
                "empty: name this appliance's network interface",
            );
        }
        if c.route_tables.is_empty() {
            return self.err(
                c.backend.span(),
                "cloud.route_tables",
                "no route table to claim: list the group's VPC route tables",
            );
        }
        let mut tables = Vec::new();
        for (i, t) in c.route_tables.iter().enumerate() {
            let id = t.get_ref().trim();
            if id.is_empty() || tables.iter().any(|k| k == id) {
                return self.err(
                    t.span(),
                    &format!("cloud.route_tables[{i}]"),
                    format!("'{id}' is empty or listed twice"),
                );
            }
            tables.push(id.to_string());
        }
        let backend = match c.backend.get_ref().as_str() {
            "lab" => {
                let mut routers = std::collections::BTreeMap::new();
                for t in &tables {
                    let Some(ns) = c.routers.get(t) else {
                        return self.err(c.backend.span(), "cloud.routers", format!("the lab backend needs the router namespace of route table {t}"));
                    };
                    routers.insert(t.clone(), ns.get_ref().clone());
                }
                CloudBackendKind::Lab { routers }
            }
            other => {
                return self.err(
                    c.backend.span(),
                    "cloud.backend",
                    format!("unknown cloud backend '{other}'; this build has lab (the AWS backend is not in it yet)"),
                )
            }
        };
        Ok(Some(CloudConfig {
            backend,
            interface: interface.to_string(),
            route_tables: tables,
        }))
    }
}
