//! `meshgate plan --output cloudformation`: the fleet's resources as
//! CloudFormation templates, one stack per account and region (a stack
//! lives in one region of one account). IAM, being global, goes into the
//! stack of the account's first region. Two kinds stay with `meshgate up`:
//! the appliances' secrets, which hold private keys no template may carry,
//! and the tags on route tables the fleet does not own, which no
//! CloudFormation resource can set.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::file::Fleet;
use super::model::{Kind, Resource, Scope, FLEET_TAG, GROUP_TAG, MESH_TAG};

/// One template: the account and region of its stack, and its JSON.
pub struct Stack {
    pub scope: Scope,
    pub template: Value,
}

impl Stack {
    /// A file name for it: `<region>[-<account>].json`.
    pub fn file_name(&self) -> String {
        let region = self.scope.region.as_deref().unwrap_or("global");
        match &self.scope.account_role {
            Some(role) => format!(
                "{region}-{}.json",
                role.split(':').nth(4).unwrap_or("account")
            ),
            None => format!("{region}.json"),
        }
    }
}

/// `meshgate-corp-eu-west-1a` as `MeshgateCorpEuWest1a`, prefixed by kind.
fn logical_id(kind: Kind, name: &str) -> String {
    let prefix = match kind {
        Kind::Role => "Role",
        Kind::InstanceProfile => "Profile",
        Kind::Secret => "Secret",
        Kind::SecurityGroup => "Group",
        Kind::LaunchTemplate => "Template",
        Kind::AutoScalingGroup => "Scaling",
        Kind::RouteTableTags => "Table",
    };
    let mut id = prefix.to_string();
    for part in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

fn tags(mesh: &str, extra: &[(&str, &str)], propagate: bool) -> Value {
    let mut all = vec![(FLEET_TAG, mesh)];
    all.extend_from_slice(extra);
    all.iter()
        .map(|(k, v)| {
            let mut t = json!({"Key": k, "Value": v});
            if propagate {
                t["PropagateAtLaunch"] = json!("true");
            }
            t
        })
        .collect()
}

fn document(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!(text))
}

/// The CloudFormation resource for `r`, or none for the kinds `up` keeps.
fn resource(
    fleet: &Fleet,
    r: &Resource,
    local: &dyn Fn(Kind, &str) -> Option<String>,
) -> Option<Value> {
    let mesh = fleet.mesh.as_str();
    let name = r.name.as_str();
    // A reference when the resource is in this template, else its name
    // (its stack deploys first: the account's first region).
    let by_name =
        |kind: Kind, n: &str| local(kind, n).map_or_else(|| json!(n), |id| json!({"Ref": id}));
    Some(match r.kind {
        Kind::Secret | Kind::RouteTableTags => return None,
        Kind::Role => json!({
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": name,
                "Path": r.prop("path"),
                "AssumeRolePolicyDocument": document(r.prop("trust")),
                "Policies": [{"PolicyName": super::docs::POLICY_NAME, "PolicyDocument": document(r.prop("policy"))}],
                "Tags": tags(mesh, &[], false),
            }
        }),
        Kind::InstanceProfile => json!({
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {
                "InstanceProfileName": name,
                "Path": r.prop("path"),
                "Roles": [by_name(Kind::Role, r.prop("role"))],
            }
        }),
        Kind::SecurityGroup => {
            let ingress: Vec<Value> = r
                .prop("ingress")
                .split(", ")
                .filter_map(|rule| {
                    let mut p = rule.split(' ');
                    let (proto, port, cidr) = (p.next()?, p.next()?.parse::<u16>().ok()?, p.next()?);
                    Some(json!({"IpProtocol": proto, "FromPort": port, "ToPort": port, "CidrIp": cidr}))
                })
                .collect();
            json!({
                "Type": "AWS::EC2::SecurityGroup",
                "Properties": {
                    "GroupName": name,
                    "GroupDescription": super::model::GROUP_DESCRIPTION,
                    "VpcId": r.prop("vpc"),
                    "SecurityGroupIngress": ingress,
                    "Tags": tags(mesh, &[], false),
                }
            })
        }
        Kind::LaunchTemplate => {
            let group = local(Kind::SecurityGroup, r.prop("security_group"))?;
            json!({
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {
                    "LaunchTemplateName": name,
                    "LaunchTemplateData": {
                        "ImageId": r.prop("image"),
                        "InstanceType": r.prop("instance_type"),
                        "IamInstanceProfile": {"Name": by_name(Kind::InstanceProfile, r.prop("instance_profile"))},
                        "SecurityGroupIds": [{"Fn::GetAtt": [group, "GroupId"]}],
                        "UserData": {"Fn::Base64": r.prop("user_data")},
                        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
                        "TagSpecifications": [
                            {"ResourceType": "instance", "Tags": tags(mesh, &[], false)},
                            {"ResourceType": "network-interface", "Tags": tags(mesh, &[], false)},
                        ],
                    },
                    "TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags(mesh, &[], false)}],
                }
            })
        }
        Kind::AutoScalingGroup => {
            let template = local(Kind::LaunchTemplate, r.prop("launch_template"))?;
            let spec = json!({
                "LaunchTemplateId": {"Ref": template},
                "Version": {"Fn::GetAtt": [template, "LatestVersionNumber"]},
            });
            let region = r.scope.region.clone().unwrap_or_default();
            let mut props = json!({
                "AutoScalingGroupName": name,
                "MinSize": "1",
                "MaxSize": "1",
                "DesiredCapacity": "1",
                "VPCZoneIdentifier": [r.prop("subnet")],
                "Tags": tags(mesh, &[
                    (MESH_TAG, mesh),
                    ("meshgate:id", r.prop("member")),
                    ("meshgate:signal-port", r.prop("signal_port")),
                    (GROUP_TAG, region.as_str()),
                ], true),
            });
            match r.prop("market").strip_prefix("spot ") {
                Some(types) => {
                    props["MixedInstancesPolicy"] = json!({
                        "LaunchTemplate": {
                            "LaunchTemplateSpecification": spec,
                            "Overrides": types.split(',').map(|t| json!({"InstanceType": t})).collect::<Vec<_>>(),
                        },
                        "InstancesDistribution": {
                            "OnDemandBaseCapacity": 0,
                            "OnDemandPercentageAboveBaseCapacity": 0,
                            "SpotAllocationStrategy": "price-capacity-optimized",
                        },
                    });
                }
                None => props["LaunchTemplate"] = spec,
            }
            json!({"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": props})
        }
    })
}

/// The templates of `desired` (what the plan wants), one per account and
/// region that holds any of it.
pub fn templates(fleet: &Fleet, desired: &[Resource]) -> Vec<Stack> {
    // Each account's IAM goes to the stack of its first region.
    let home = |account: &Option<String>| {
        fleet
            .regions
            .iter()
            .find(|r| &r.account_role == account)
            .map(|r| r.name.clone())
    };
    let stack_of = |r: &Resource| Scope {
        account_role: r.scope.account_role.clone(),
        region: r
            .scope
            .region
            .clone()
            .or_else(|| home(&r.scope.account_role)),
    };
    let mut by_stack: BTreeMap<Scope, Vec<&Resource>> = BTreeMap::new();
    for r in desired {
        by_stack.entry(stack_of(r)).or_default().push(r);
    }
    let mut stacks = Vec::new();
    for region in &fleet.regions {
        let scope = Scope {
            account_role: region.account_role.clone(),
            region: Some(region.name.clone()),
        };
        let Some(members) = by_stack.get(&scope) else {
            continue;
        };
        let local = |kind: Kind, name: &str| {
            members
                .iter()
                .any(|m| m.kind == kind && m.name == name)
                .then(|| logical_id(kind, name))
        };
        let mut resources = Map::new();
        for r in members {
            if let Some(v) = resource(fleet, r, &local) {
                resources.insert(logical_id(r.kind, &r.name), v);
            }
        }
        let kept: Vec<&str> = members
            .iter()
            .filter(|r| matches!(r.kind, Kind::Secret | Kind::RouteTableTags))
            .map(|r| r.name.as_str())
            .collect();
        let description = format!(
            "meshgate fleet {} in {} (written by meshgate plan --output cloudformation). \
             Not here, made by meshgate up: the appliances' secrets (their keys stay out of templates) \
             and the route tables' tags: {}.",
            fleet.mesh,
            scope,
            kept.join(", ")
        );
        stacks.push(Stack {
            scope,
            template: json!({
                "AWSTemplateFormatVersion": "2010-09-09",
                "Description": description.chars().take(1024).collect::<String>(),
                "Resources": resources,
            }),
        });
    }
    stacks
}
