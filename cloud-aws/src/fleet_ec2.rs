//! A fleet's EC2 resources: its security groups, launch templates and the
//! tags on the route tables it claims, read by tag and written one call
//! each. Plain data in and out; the gateway's planner decides.

use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};

use crate::{AwsError, Ec2};

/// A subnet as EC2 describes it.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc: String,
    pub cidr: String,
    pub zone: String,
}

/// A security group the fleet owns, with its ingress rules as
/// `(protocol, port, cidr)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub vpc: String,
    pub ingress: Vec<(String, i32, String)>,
}

/// What a launch template's default version launches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateData {
    pub image: String,
    pub instance_type: String,
    /// The instance profile's name.
    pub profile: String,
    pub security_groups: Vec<String>,
    /// The user data, decoded.
    pub user_data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchTemplate {
    pub id: String,
    pub name: String,
    pub data: TemplateData,
}

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect()
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

fn template_request(
    d: &TemplateData,
    sg_ids: &[String],
    tag_pairs: &[(&str, &str)],
) -> RequestLaunchTemplateData {
    let mut b = RequestLaunchTemplateData::builder()
        .image_id(&d.image)
        .instance_type(d.instance_type.as_str().into())
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(&d.profile)
                .build(),
        )
        .user_data(aws_smithy_types::base64::encode(d.user_data.as_bytes()))
        // IMDSv2 only: the user data's token calls work, and a request
        // forged through the instance cannot read its role's credentials.
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .build(),
        );
    for id in sg_ids {
        b = b.security_group_ids(id);
    }
    // The instance and its interface carry the fleet's tags (discovery
    // reads the instance's; the role may change only tagged interfaces).
    for t in [ResourceType::Instance, ResourceType::NetworkInterface] {
        b = b.tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(t)
                .set_tags(Some(tags(tag_pairs)))
                .build(),
        );
    }
    b.build()
}

impl Ec2 {
    /// Each subnet's VPC, IPv4 CIDR and availability zone.
    pub async fn subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, AwsError> {
        let out = self
            .client
            .describe_subnets()
            .set_subnet_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeSubnets", &ids.join(","), e))?;
        Ok(out
            .subnets()
            .iter()
            .filter_map(|s| {
                Some(Subnet {
                    id: s.subnet_id()?.to_string(),
                    vpc: s.vpc_id()?.to_string(),
                    cidr: s.cidr_block()?.to_string(),
                    zone: s.availability_zone()?.to_string(),
                })
            })
            .collect())
    }

    /// The security groups tagged `key = value`.
    pub async fn security_groups(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<SecurityGroup>, AwsError> {
        let out = self
            .client
            .describe_security_groups()
            .filters(tag_filter(key, value))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeSecurityGroups", value, e))?;
        let mut groups = Vec::new();
        for g in out.security_groups() {
            let mut ingress = Vec::new();
            for p in g.ip_permissions() {
                for r in p.ip_ranges() {
                    ingress.push((
                        p.ip_protocol().unwrap_or_default().to_string(),
                        p.from_port().unwrap_or(-1),
                        r.cidr_ip().unwrap_or_default().to_string(),
                    ));
                }
            }
            ingress.sort();
            groups.push(SecurityGroup {
                id: g.group_id().unwrap_or_default().to_string(),
                name: g.group_name().unwrap_or_default().to_string(),
                vpc: g.vpc_id().unwrap_or_default().to_string(),
                ingress,
            });
        }
        Ok(groups)
    }

    /// A security group in `vpc`, tagged; its id.
    pub async fn create_security_group(
        &self,
        name: &str,
        vpc: &str,
        description: &str,
        tag_pairs: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let out = self
            .client
            .create_security_group()
            .group_name(name)
            .vpc_id(vpc)
            .description(description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .set_tags(Some(tags(tag_pairs)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateSecurityGroup", name, e))?;
        Ok(out.group_id().unwrap_or_default().to_string())
    }

    fn permissions(rules: &[(String, i32, String)]) -> Vec<IpPermission> {
        rules
            .iter()
            .map(|(proto, port, cidr)| {
                IpPermission::builder()
                    .ip_protocol(proto)
                    .from_port(*port)
                    .to_port(*port)
                    .ip_ranges(
                        IpRange::builder()
                            .cidr_ip(cidr)
                            .description("meshgate appliances")
                            .build(),
                    )
                    .build()
            })
            .collect()
    }

    /// Admits `rules` (`(protocol, port, cidr)`) into group `id`.
    pub async fn authorize_ingress(
        &self,
        id: &str,
        rules: &[(String, i32, String)],
    ) -> Result<(), AwsError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.client
            .authorize_security_group_ingress()
            .group_id(id)
            .set_ip_permissions(Some(Self::permissions(rules)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AuthorizeSecurityGroupIngress", id, e))?;
        Ok(())
    }

    pub async fn revoke_ingress(
        &self,
        id: &str,
        rules: &[(String, i32, String)],
    ) -> Result<(), AwsError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.client
            .revoke_security_group_ingress()
            .group_id(id)
            .set_ip_permissions(Some(Self::permissions(rules)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("RevokeSecurityGroupIngress", id, e))?;
        Ok(())
    }

    pub async fn delete_security_group(&self, id: &str) -> Result<(), AwsError> {
        self.client
            .delete_security_group()
            .group_id(id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteSecurityGroup", id, e))?;
        Ok(())
    }

    /// The launch templates tagged `key = value`, each with its default
    /// version's data.
    pub async fn launch_templates(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<LaunchTemplate>, AwsError> {
        let out = self
            .client
            .describe_launch_templates()
            .filters(tag_filter(key, value))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeLaunchTemplates", value, e))?;
        let mut templates = Vec::new();
        for t in out.launch_templates() {
            let id = t.launch_template_id().unwrap_or_default().to_string();
            let versions = self
                .client
                .describe_launch_template_versions()
                .launch_template_id(&id)
                .versions("$Default")
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DescribeLaunchTemplateVersions", &id, e))?;
            let data = versions
                .launch_template_versions()
                .first()
                .and_then(|v| v.launch_template_data())
                .map(|d| TemplateData {
                    image: d.image_id().unwrap_or_default().to_string(),
                    instance_type: d
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    profile: d
                        .iam_instance_profile()
                        .and_then(|p| p.name())
                        .unwrap_or_default()
                        .to_string(),
                    security_groups: d.security_group_ids().to_vec(),
                    user_data: d
                        .user_data()
                        .and_then(|u| aws_smithy_types::base64::decode(u).ok())
                        .and_then(|b| String::from_utf8(b).ok())
                        .unwrap_or_default(),
                })
                .unwrap_or_default();
            templates.push(LaunchTemplate {
                id,
                name: t.launch_template_name().unwrap_or_default().to_string(),
                data,
            });
        }
        Ok(templates)
    }

    /// A launch template; its id. `sg_ids` are the data's security
    /// groups as ids.
    pub async fn create_launch_template(
        &self,
        name: &str,
        data: &TemplateData,
        sg_ids: &[String],
        tag_pairs: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let out = self
            .client
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(template_request(data, sg_ids, tag_pairs))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::LaunchTemplate)
                    .set_tags(Some(tags(tag_pairs)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateLaunchTemplate", name, e))?;
        Ok(out
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .unwrap_or_default()
            .to_string())
    }

    /// A new version of template `id`, made its default (the auto-scaling
    /// group launches `$Default`; running instances stay until replaced).
    pub async fn update_launch_template(
        &self,
        id: &str,
        data: &TemplateData,
        sg_ids: &[String],
        tag_pairs: &[(&str, &str)],
    ) -> Result<(), AwsError> {
        let out = self
            .client
            .create_launch_template_version()
            .launch_template_id(id)
            .launch_template_data(template_request(data, sg_ids, tag_pairs))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateLaunchTemplateVersion", id, e))?;
        let version = out
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| {
                AwsError::missing("CreateLaunchTemplateVersion", id, "a version number")
            })?;
        self.client
            .modify_launch_template()
            .launch_template_id(id)
            .default_version(version.to_string())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ModifyLaunchTemplate", id, e))?;
        Ok(())
    }

    pub async fn delete_launch_template(&self, id: &str) -> Result<(), AwsError> {
        self.client
            .delete_launch_template()
            .launch_template_id(id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteLaunchTemplate", id, e))?;
        Ok(())
    }

    /// Route tables tagged `key = value`, with the value of their tag
    /// `group_key`.
    pub async fn tagged_route_tables(
        &self,
        key: &str,
        value: &str,
        group_key: &str,
    ) -> Result<Vec<(String, String)>, AwsError> {
        let out = self
            .client
            .describe_route_tables()
            .filters(tag_filter(key, value))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeRouteTables", value, e))?;
        Ok(out
            .route_tables()
            .iter()
            .map(|t| {
                let group = t
                    .tags()
                    .iter()
                    .find(|g| g.key() == Some(group_key))
                    .and_then(|g| g.value());
                (
                    t.route_table_id().unwrap_or_default().to_string(),
                    group.unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Tags `resource` (an existing one the fleet does not own).
    pub async fn tag(&self, resource: &str, tag_pairs: &[(&str, &str)]) -> Result<(), AwsError> {
        self.client
            .create_tags()
            .resources(resource)
            .set_tags(Some(tags(tag_pairs)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateTags", resource, e))?;
        Ok(())
    }

    /// Removes the tags named `keys` from `resource`.
    pub async fn untag(&self, resource: &str, keys: &[&str]) -> Result<(), AwsError> {
        let tags = keys
            .iter()
            .map(|k| Tag::builder().key(*k).build())
            .collect();
        self.client
            .delete_tags()
            .resources(resource)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteTags", resource, e))?;
        Ok(())
    }
}
