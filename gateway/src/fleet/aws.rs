//! The fleet's shell on AWS: reads what each account and region holds into
//! the model's resources, and carries out a plan's actions through the
//! SDK, retrying throttling, 5xx and timeouts with backoff and jitter and
//! counting every write (a second `up` must make none).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use meshgate_aws::{AwsError, ErrorKind, FleetClients, GroupSpec, Settings, TemplateData};

use super::docs::{canonical_text, POLICY_NAME};
use super::file::Fleet;
use super::model::{iam_path, Facts, Kind, Resource, Scope, FLEET_TAG, GROUP_TAG, MESH_TAG};
use super::plan::{Action, Change};

const ID_TAG: &str = "meshgate:id";
const PORT_TAG: &str = "meshgate:signal-port";

/// The clients of every account and region of a fleet, and the writes made.
pub struct FleetCloud {
    clients: BTreeMap<Scope, FleetClients>,
    pub writes: usize,
    pub reads: usize,
    /// Security group ids by (scope, name), as read or created.
    group_ids: BTreeMap<(Scope, String), String>,
    template_ids: BTreeMap<(Scope, String), String>,
}

fn settings(fleet: &Fleet, region: &str, role: &Option<String>) -> Settings {
    Settings {
        assume_role: role.clone(),
        ..Settings::new(region, fleet.endpoint_url.clone())
    }
}

/// A call retried while it fails in a way that passes (5 tries, backoff
/// from 200 ms doubling, with jitter).
async fn retried<T, F, Fut>(mut call: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let mut wait = Duration::from_millis(200);
    for attempt in 1.. {
        match call().await {
            Err(e)
                if attempt < 5
                    && matches!(
                        e.kind,
                        ErrorKind::Throttled | ErrorKind::Server(_) | ErrorKind::Timeout
                    ) =>
            {
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos()),
                ) % 1000;
                tokio::time::sleep(wait / 2 + (wait / 2).mul_f64(jitter as f64 / 1000.0)).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns by its fifth try")
}

impl FleetCloud {
    /// Clients for each account's IAM and each region of the fleet.
    pub async fn connect(fleet: &Fleet) -> FleetCloud {
        let mut clients = BTreeMap::new();
        for region in &fleet.regions {
            let c =
                FleetClients::connect(&settings(fleet, &region.name, &region.account_role)).await;
            let iam = Scope {
                account_role: region.account_role.clone(),
                region: None,
            };
            clients.entry(iam).or_insert_with(|| c.clone());
            clients.insert(
                Scope {
                    account_role: region.account_role.clone(),
                    region: Some(region.name.clone()),
                },
                c,
            );
        }
        FleetCloud {
            clients,
            writes: 0,
            reads: 0,
            group_ids: BTreeMap::new(),
            template_ids: BTreeMap::new(),
        }
    }

    fn at(&self, scope: &Scope) -> Result<&FleetClients, AwsError> {
        self.clients.get(scope).ok_or_else(|| {
            AwsError::refused(
                "fleet",
                &scope.to_string(),
                "not a region or account of the fleet file".to_string(),
            )
        })
    }

    /// What the plan needs beyond the file: account ids, subnet CIDRs.
    pub async fn facts(&mut self, fleet: &Fleet) -> Result<Facts, AwsError> {
        let mut facts = Facts::default();
        for region in &fleet.regions {
            let here = Scope {
                account_role: region.account_role.clone(),
                region: Some(region.name.clone()),
            };
            let c = self.at(&here)?.clone();
            if !facts.accounts.contains_key(&region.account_role) {
                self.reads += 1;
                facts
                    .accounts
                    .insert(region.account_role.clone(), retried(|| c.account()).await?);
            }
            let subnets: Vec<String> = region.zones.iter().map(|z| z.subnet.clone()).collect();
            self.reads += 1;
            let found = retried(|| c.ec2.subnets(&subnets)).await?;
            for zone in &region.zones {
                let Some(s) = found.iter().find(|s| s.id == zone.subnet) else {
                    return Err(AwsError::refused(
                        "DescribeSubnets",
                        &zone.subnet,
                        format!(
                            "no such subnet in {} (zone {} of the fleet file)",
                            region.name, zone.zone
                        ),
                    ));
                };
                if s.vpc != region.vpc || s.zone != zone.zone {
                    return Err(AwsError::refused(
                        "DescribeSubnets",
                        &zone.subnet,
                        format!(
                            "the fleet file puts it in {} of {}, but it is in {} of {}: name a subnet of the region's VPC in that zone",
                            zone.zone, region.vpc, s.zone, s.vpc
                        ),
                    ));
                }
                facts.subnet_cidrs.insert(s.id.clone(), s.cidr.clone());
            }
        }
        Ok(facts)
    }

    /// Everything of the fleet the cloud holds, as resources.
    pub async fn actual(&mut self, fleet: &Fleet) -> Result<Vec<Resource>, AwsError> {
        let mut out = Vec::new();
        let scopes: Vec<Scope> = self.clients.keys().cloned().collect();
        let mesh = fleet.mesh.as_str();
        let path = iam_path(fleet);
        let secret_prefix = format!("meshgate/{mesh}/");
        for scope in scopes {
            let c = self.at(&scope)?.clone();
            if scope.region.is_none() {
                self.reads += 2;
                for r in retried(|| c.roles(&path, POLICY_NAME)).await? {
                    let doc = |t: &str| canonical_text(t).unwrap_or_else(|| t.to_string());
                    out.push(
                        Resource::new(Kind::Role, &scope, &r.name)
                            .with("path", &r.path)
                            .with("trust", doc(&r.trust))
                            .with("policy", r.policy.as_deref().map(doc).unwrap_or_default()),
                    );
                }
                for (name, roles) in retried(|| c.instance_profiles(&path)).await? {
                    out.push(
                        Resource::new(Kind::InstanceProfile, &scope, &name)
                            .with("path", iam_path(fleet))
                            .with("role", roles.join(",")),
                    );
                }
                continue;
            }
            self.reads += 5;
            let groups = retried(|| c.ec2.security_groups(FLEET_TAG, mesh)).await?;
            let mut group_names = BTreeMap::new();
            for g in &groups {
                // Sorted as text, as the model sorts its rules.
                let mut ingress: Vec<String> = g
                    .ingress
                    .iter()
                    .map(|(p, port, cidr)| format!("{p} {port} {cidr}"))
                    .collect();
                ingress.sort();
                self.group_ids
                    .insert((scope.clone(), g.name.clone()), g.id.clone());
                group_names.insert(g.id.clone(), g.name.clone());
                out.push(
                    Resource::new(Kind::SecurityGroup, &scope, &g.name)
                        .with("vpc", &g.vpc)
                        .with("ingress", ingress.join(", ")),
                );
            }
            for t in retried(|| c.ec2.launch_templates(FLEET_TAG, mesh)).await? {
                self.template_ids
                    .insert((scope.clone(), t.name.clone()), t.id.clone());
                let sgs: Vec<String> = t
                    .data
                    .security_groups
                    .iter()
                    .map(|id| group_names.get(id).cloned().unwrap_or_else(|| id.clone()))
                    .collect();
                out.push(
                    Resource::new(Kind::LaunchTemplate, &scope, &t.name)
                        .with("image", &t.data.image)
                        .with("instance_profile", &t.data.profile)
                        .with("security_group", sgs.join(","))
                        .with("user_data", &t.data.user_data)
                        .with("instance_type", &t.data.instance_type),
                );
            }
            for g in retried(|| c.scaling_groups(FLEET_TAG, mesh)).await? {
                let tag = |k: &str| {
                    g.tags
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let market = if g.spot_types.is_empty() {
                    "on-demand".to_string()
                } else {
                    format!("spot {}", g.spot_types.join(","))
                };
                let size = if g.sizes == (1, 1, 1) {
                    "1".to_string()
                } else {
                    format!("{}/{}/{}", g.sizes.0, g.sizes.1, g.sizes.2)
                };
                out.push(
                    Resource::new(Kind::AutoScalingGroup, &scope, &g.name)
                        .with("subnet", &g.subnet)
                        .with("launch_template", &g.template)
                        .with("market", market)
                        .with("size", size)
                        .with("member", tag(ID_TAG))
                        .with("signal_port", tag(PORT_TAG)),
                );
            }
            for s in retried(|| c.secrets(&secret_prefix, FLEET_TAG, mesh)).await? {
                out.push(Resource::new(Kind::Secret, &scope, &s.name).with("kms_key", &s.kms_key));
            }
            for (table, group) in
                retried(|| c.ec2.tagged_route_tables(FLEET_TAG, mesh, GROUP_TAG)).await?
            {
                out.push(Resource::new(Kind::RouteTableTags, &scope, &table).with("group", &group));
            }
        }
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(out)
    }

    /// Carries out one action. `secret` makes a new secret's value.
    pub async fn apply(
        &mut self,
        fleet: &Fleet,
        action: &Action,
        actual: &[Resource],
        secret: &mut dyn FnMut(&Resource) -> Result<zeroize::Zeroizing<String>, String>,
    ) -> Result<(), AwsError> {
        let r = &action.resource;
        let c = self.at(&r.scope)?.clone();
        let mesh = fleet.mesh.as_str();
        let fleet_tag = [(FLEET_TAG, mesh)];
        let was = |key: &str| {
            actual
                .iter()
                .find(|a| a.key() == r.key())
                .map(|a| a.prop(key).to_string())
                .unwrap_or_default()
        };
        let changed = |key: &str| match &action.change {
            Change::Update(c) => c.iter().any(|(k, _)| k == key),
            _ => true,
        };
        let name = r.name.as_str();
        let mut writes = 0;
        let result = match (&action.change, r.kind) {
            (Change::Create, Kind::Role) => {
                writes += 2;
                retried(|| c.create_role(name, r.prop("path"), r.prop("trust"), &fleet_tag)).await?;
                retried(|| c.put_role_policy(name, POLICY_NAME, r.prop("policy"))).await
            }
            (Change::Update(_), Kind::Role) => {
                if changed("trust") {
                    writes += 1;
                    retried(|| c.update_trust(name, r.prop("trust"))).await?;
                }
                if changed("policy") {
                    writes += 1;
                    retried(|| c.put_role_policy(name, POLICY_NAME, r.prop("policy"))).await?;
                }
                Ok(())
            }
            (Change::Delete, Kind::Role) => {
                writes += 2;
                retried(|| c.delete_role(name, POLICY_NAME)).await
            }
            (Change::Create, Kind::InstanceProfile) => {
                writes += 2;
                retried(|| c.create_instance_profile(name, r.prop("path"), r.prop("role"), &fleet_tag)).await
            }
            (Change::Update(_), Kind::InstanceProfile) => {
                let current: Vec<String> = was("role").split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                writes += current.len() + 1;
                retried(|| c.set_profile_role(name, &current, r.prop("role"))).await
            }
            (Change::Delete, Kind::InstanceProfile) => {
                let current: Vec<String> = r.prop("role").split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                writes += current.len() + 1;
                retried(|| c.delete_instance_profile(name, &current)).await
            }
            (Change::Create, Kind::Secret) => {
                let value = secret(r).map_err(|e| AwsError::refused("CreateSecret", name, e))?;
                writes += 1;
                retried(|| c.create_secret(name, r.prop("kms_key"), &value, &fleet_tag)).await
            }
            (Change::Update(_), Kind::Secret) => Err(AwsError::refused(
                "UpdateSecret",
                name,
                "a secret's KMS key does not change in place: remove the zone from the fleet file, up, and add it again".to_string(),
            )),
            (Change::Delete, Kind::Secret) => {
                writes += 1;
                retried(|| c.delete_secret(name)).await
            }
            (Change::Create, Kind::SecurityGroup) => {
                writes += 2;
                let id = retried(|| c.ec2.create_security_group(name, r.prop("vpc"), super::model::GROUP_DESCRIPTION, &fleet_tag)).await?;
                self.group_ids.insert((r.scope.clone(), name.to_string()), id.clone());
                let want = rules(r.prop("ingress"));
                retried(|| c.ec2.authorize_ingress(&id, &want)).await
            }
            (Change::Update(_), Kind::SecurityGroup) => {
                let id = self.group_id(&r.scope, name)?;
                let (want, have) = (rules(r.prop("ingress")), rules(&was("ingress")));
                let add: Vec<_> = want.iter().filter(|x| !have.contains(x)).cloned().collect();
                let drop: Vec<_> = have.iter().filter(|x| !want.contains(x)).cloned().collect();
                writes += usize::from(!add.is_empty()) + usize::from(!drop.is_empty());
                retried(|| c.ec2.authorize_ingress(&id, &add)).await?;
                retried(|| c.ec2.revoke_ingress(&id, &drop)).await
            }
            (Change::Delete, Kind::SecurityGroup) => {
                let id = self.group_id(&r.scope, name)?;
                writes += 1;
                // An interface of a terminating instance may hold it a
                // while longer than its auto-scaling group.
                let mut tries = 0;
                loop {
                    match retried(|| c.ec2.delete_security_group(&id)).await {
                        Err(e) if e.code.as_deref() == Some("DependencyViolation") && tries < 30 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_secs(10)).await;
                        }
                        other => break other,
                    }
                }
            }
            (Change::Create | Change::Update(_), Kind::LaunchTemplate) => {
                let data = TemplateData {
                    image: r.prop("image").to_string(),
                    instance_type: r.prop("instance_type").to_string(),
                    profile: r.prop("instance_profile").to_string(),
                    security_groups: vec![r.prop("security_group").to_string()],
                    user_data: r.prop("user_data").to_string(),
                };
                let sg_ids = vec![self.group_id(&r.scope, r.prop("security_group"))?];
                if action.change == Change::Create {
                    writes += 1;
                    let id = retried(|| c.ec2.create_launch_template(name, &data, &sg_ids, &fleet_tag)).await?;
                    self.template_ids.insert((r.scope.clone(), name.to_string()), id);
                    Ok(())
                } else {
                    let id = self.template_ids.get(&(r.scope.clone(), name.to_string())).cloned().unwrap_or_default();
                    writes += 2;
                    retried(|| c.ec2.update_launch_template(&id, &data, &sg_ids, &fleet_tag)).await
                }
            }
            (Change::Delete, Kind::LaunchTemplate) => {
                let id = self.template_ids.get(&(r.scope.clone(), name.to_string())).cloned().unwrap_or_default();
                writes += 1;
                retried(|| c.ec2.delete_launch_template(&id)).await
            }
            (Change::Create | Change::Update(_), Kind::AutoScalingGroup) => {
                let spot: Vec<String> = r.prop("market").strip_prefix("spot ").map(|t| t.split(',').map(str::to_string).collect()).unwrap_or_default();
                let region = r.scope.region.clone().unwrap_or_default();
                let tags = [(FLEET_TAG, mesh), (MESH_TAG, mesh), (ID_TAG, r.prop("member")), (PORT_TAG, r.prop("signal_port")), (GROUP_TAG, region.as_str())];
                let spec = GroupSpec { name, subnet: r.prop("subnet"), template: r.prop("launch_template"), spot_types: &spot, tags: &tags };
                writes += if action.change == Change::Create { 1 } else { 2 };
                if action.change == Change::Create {
                    retried(|| c.create_scaling_group(&spec)).await
                } else {
                    retried(|| c.update_scaling_group(&spec)).await
                }
            }
            (Change::Delete, Kind::AutoScalingGroup) => {
                writes += 1;
                retried(|| c.delete_scaling_group(name)).await?;
                // Its instance must be gone before its security group can
                // go (every 5 s, up to 15 min: spot or not, EC2 takes
                // minutes to terminate).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
                while retried(|| c.scaling_group_exists(name)).await? {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AwsError::refused(
                            "DescribeAutoScalingGroups",
                            name,
                            "still being deleted after 15 minutes (its instance terminating): run down again later".to_string(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok(())
            }
            (Change::Create | Change::Update(_), Kind::RouteTableTags) => {
                writes += 1;
                let tags = [(FLEET_TAG, mesh), (MESH_TAG, mesh), (GROUP_TAG, r.prop("group"))];
                retried(|| c.ec2.tag(name, &tags)).await
            }
            (Change::Delete, Kind::RouteTableTags) => {
                writes += 1;
                retried(|| c.ec2.untag(name, &[FLEET_TAG, MESH_TAG, GROUP_TAG])).await
            }
        };
        self.writes += writes;
        result
    }

    /// A secret's value, read with the operator's credentials.
    pub async fn secret_value(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<zeroize::Zeroizing<String>, AwsError> {
        let c = self.at(scope)?;
        retried(|| c.secret_value(name)).await
    }

    fn group_id(&self, scope: &Scope, name: &str) -> Result<String, AwsError> {
        self.group_ids
            .get(&(scope.clone(), name.to_string()))
            .cloned()
            .ok_or_else(|| {
                AwsError::refused(
                    "DescribeSecurityGroups",
                    name,
                    "the fleet's security group is missing".to_string(),
                )
            })
    }
}

/// `udp 4500 10.1.0.0/24, ...` as `(protocol, port, cidr)` rules.
fn rules(text: &str) -> Vec<(String, i32, String)> {
    text.split(", ")
        .filter_map(|r| {
            let mut p = r.split(' ');
            Some((
                p.next()?.to_string(),
                p.next()?.parse().ok()?,
                p.next()?.to_string(),
            ))
        })
        .collect()
}
