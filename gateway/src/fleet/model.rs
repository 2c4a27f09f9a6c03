//! The resources a fleet is made of, as plain data: what the fleet file
//! asks for (`desired`) and what the cloud holds (read by the shell) take
//! the same form, so the plan is a comparison of two lists.

use std::collections::BTreeMap;
use std::fmt;

use super::docs;
use super::file::{Fleet, FleetRegion, FleetZone, Market};
use super::user_data;

/// The tag on everything `up` creates: `down` removes what carries it.
pub const FLEET_TAG: &str = "meshgate:fleet";
/// The route tables' tags the gateways find them by.
pub const MESH_TAG: &str = "meshgate:mesh";
pub const GROUP_TAG: &str = "meshgate:group";
/// The security group's description (EC2 takes no apostrophe there).
pub const GROUP_DESCRIPTION: &str =
    "meshgate appliances: ESP-in-UDP and signalling between the fleet subnets";

/// Where a resource lives: an account (the caller's, or one reached
/// through a role) and a region (none for IAM, which is global).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub account_role: Option<String>,
    pub region: Option<String>,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.region {
            Some(r) => f.write_str(r)?,
            None => f.write_str("IAM")?,
        }
        if let Some(role) = &self.account_role {
            let account = role.split(':').nth(4).unwrap_or(role);
            write!(f, ", account {account}")?;
        }
        Ok(())
    }
}

/// The kinds, in the order they are created (each may refer to the ones
/// before it); removal goes the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Role,
    InstanceProfile,
    Secret,
    SecurityGroup,
    LaunchTemplate,
    AutoScalingGroup,
    /// The tags on a route table the fleet does not own.
    RouteTableTags,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Role,
        Kind::InstanceProfile,
        Kind::Secret,
        Kind::SecurityGroup,
        Kind::LaunchTemplate,
        Kind::AutoScalingGroup,
        Kind::RouteTableTags,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Role => "IAM role",
            Kind::InstanceProfile => "instance profile",
            Kind::Secret => "secret",
            Kind::SecurityGroup => "security group",
            Kind::LaunchTemplate => "launch template",
            Kind::AutoScalingGroup => "auto-scaling group",
            Kind::RouteTableTags => "route table tags",
        }
    }
}

/// One resource: its kind, where, its name, and the properties the plan
/// compares (documents in canonical JSON, lists sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    pub scope: Scope,
    pub name: String,
    pub props: BTreeMap<String, String>,
}

impl Resource {
    pub fn new(kind: Kind, scope: &Scope, name: impl Into<String>) -> Resource {
        Resource {
            kind,
            scope: scope.clone(),
            name: name.into(),
            props: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Resource {
        self.props.insert(key.to_string(), value.into());
        self
    }

    /// A property (empty when unset).
    pub fn prop(&self, key: &str) -> &str {
        self.props.get(key).map_or("", String::as_str)
    }

    /// What identifies it: two with the same key are the same resource.
    pub fn key(&self) -> (Kind, &Scope, &str) {
        (self.kind, &self.scope, &self.name)
    }
}

/// What the plan needs to know of the cloud beyond the file: each zone's
/// subnet CIDR (the security groups admit the appliances' subnets only)
/// and each account's id (for ARNs), by the role that reaches it.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub subnet_cidrs: BTreeMap<String, String>,
    pub accounts: BTreeMap<Option<String>, String>,
}

impl Facts {
    pub fn account(&self, role: &Option<String>) -> &str {
        self.accounts.get(role).map_or("*", String::as_str)
    }
}

/// Names of the fleet's resources.
pub fn slot_name(fleet: &Fleet, zone: &FleetZone) -> String {
    format!("meshgate-{}-{}", fleet.mesh, zone.zone)
}
pub fn secret_name(fleet: &Fleet, zone: &FleetZone) -> String {
    format!("meshgate/{}/{}", fleet.mesh, zone.zone)
}
pub fn group_sg_name(fleet: &Fleet) -> String {
    format!("meshgate-{}", fleet.mesh)
}
pub fn discovery_role_name(fleet: &Fleet) -> String {
    format!("meshgate-{}-discovery", fleet.mesh)
}
/// Roles and instance profiles live under this IAM path, so `down` and
/// the plan list exactly the fleet's.
pub fn iam_path(fleet: &Fleet) -> String {
    format!("/meshgate/{}/", fleet.mesh)
}

/// The accounts of the fleet (by the role that reaches them), in order.
pub fn accounts(fleet: &Fleet) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    for r in &fleet.regions {
        if !out.contains(&r.account_role) {
            out.push(r.account_role.clone());
        }
    }
    out
}

/// Everything the fleet file asks for.
pub fn desired(fleet: &Fleet, facts: &Facts) -> Vec<Resource> {
    let mut out = Vec::new();
    let accounts = accounts(fleet);
    if accounts.len() > 1 {
        for account in &accounts {
            let iam = Scope {
                account_role: account.clone(),
                region: None,
            };
            let others: Vec<String> = accounts
                .iter()
                .filter(|a| *a != account)
                .map(|a| facts.account(a).to_string())
                .collect();
            out.push(
                Resource::new(Kind::Role, &iam, discovery_role_name(fleet))
                    .with("path", iam_path(fleet))
                    .with("trust", docs::discovery_trust(fleet, &others))
                    .with("policy", docs::discovery_policy()),
            );
        }
    }
    for region in &fleet.regions {
        region_resources(fleet, facts, region, &accounts, &mut out);
    }
    out.sort_by(|a, b| a.key().cmp(&b.key()));
    out
}

fn region_resources(
    fleet: &Fleet,
    facts: &Facts,
    region: &FleetRegion,
    accounts: &[Option<String>],
    out: &mut Vec<Resource>,
) {
    let iam = Scope {
        account_role: region.account_role.clone(),
        region: None,
    };
    let here = Scope {
        account_role: region.account_role.clone(),
        region: Some(region.name.clone()),
    };
    let account = facts.account(&region.account_role);
    // The other accounts' discovery roles this region's appliances assume.
    let discovery_roles: Vec<String> = if accounts.len() > 1 {
        accounts
            .iter()
            .filter(|a| **a != region.account_role)
            .map(|a| {
                format!(
                    "arn:aws:iam::{}:role{}{}",
                    facts.account(a),
                    iam_path(fleet),
                    discovery_role_name(fleet)
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    // Appliances talk to each other across the fleet's subnets only.
    let mut sources: Vec<&str> = facts.subnet_cidrs.values().map(String::as_str).collect();
    sources.sort();
    sources.dedup();
    let mut ingress = Vec::new();
    for s in &sources {
        ingress.push(format!("udp 4500 {s}"));
        ingress.push(format!("udp {} {s}", fleet.signal_port));
    }
    ingress.sort();
    out.push(
        Resource::new(Kind::SecurityGroup, &here, group_sg_name(fleet))
            .with("vpc", &region.vpc)
            .with("ingress", ingress.join(", ")),
    );
    for table in &region.route_tables {
        out.push(Resource::new(Kind::RouteTableTags, &here, table).with("group", &region.name));
    }
    for zone in region.slots() {
        let name = slot_name(fleet, zone);
        let secret = secret_name(fleet, zone);
        out.push(
            Resource::new(Kind::Role, &iam, &name)
                .with("path", iam_path(fleet))
                .with("trust", docs::ec2_trust())
                .with(
                    "policy",
                    docs::appliance_policy(fleet, region, account, &secret, &discovery_roles),
                ),
        );
        out.push(
            Resource::new(Kind::InstanceProfile, &iam, &name)
                .with("path", iam_path(fleet))
                .with("role", &name),
        );
        out.push(Resource::new(Kind::Secret, &here, &secret).with("kms_key", &region.secrets_key));
        let template = Resource::new(Kind::LaunchTemplate, &here, &name)
            .with("image", &region.image)
            .with("instance_profile", &name)
            .with("security_group", group_sg_name(fleet))
            .with(
                "user_data",
                user_data::script(fleet, region, zone, &discovery_roles),
            );
        out.push(match &zone.market {
            Market::OnDemand { instance_type } => template.with("instance_type", instance_type),
            Market::Spot { instance_types } => template.with("instance_type", &instance_types[0]),
        });
        let market = match &zone.market {
            Market::OnDemand { .. } => "on-demand".to_string(),
            Market::Spot { instance_types } => format!("spot {}", instance_types.join(",")),
        };
        out.push(
            Resource::new(Kind::AutoScalingGroup, &here, &name)
                .with("subnet", &zone.subnet)
                .with("launch_template", &name)
                .with("market", market)
                .with("size", "1")
                .with("member", &zone.zone)
                .with("signal_port", fleet.signal_port.to_string()),
        );
    }
}
