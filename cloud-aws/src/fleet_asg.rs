//! A fleet's auto-scaling groups: one per appliance, of size one, found
//! by tag; spot across several types or on-demand.

use aws_sdk_autoscaling::types::{
    Filter as AsgFilter, InstancesDistribution, LaunchTemplate as AsgTemplate,
    LaunchTemplateOverrides, LaunchTemplateSpecification, MixedInstancesPolicy, Tag as AsgTag,
};

use crate::{AwsError, FleetClients};

/// An auto-scaling group and what it launches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalingGroup {
    pub name: String,
    pub subnet: String,
    pub template: String,
    /// Spot across these types, or on-demand when empty.
    pub spot_types: Vec<String>,
    pub sizes: (i32, i32, i32),
    pub tags: Vec<(String, String)>,
}

/// What one auto-scaling group should be.
#[derive(Clone, Debug)]
pub struct GroupSpec<'a> {
    pub name: &'a str,
    pub subnet: &'a str,
    pub template: &'a str,
    pub spot_types: &'a [String],
    /// Tags propagated to the instances it launches.
    pub tags: &'a [(&'a str, &'a str)],
}

impl FleetClients {
    /// The auto-scaling groups tagged `key = value`.
    pub async fn scaling_groups(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ScalingGroup>, AwsError> {
        let mut groups = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .asg
                .describe_auto_scaling_groups()
                .filters(
                    AsgFilter::builder()
                        .name(format!("tag:{key}"))
                        .values(value)
                        .build(),
                )
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DescribeAutoScalingGroups", value, e))?;
            for g in out.auto_scaling_groups() {
                // Being deleted: gone, as far as a plan is concerned.
                if g.status().is_some_and(|s| s.starts_with("Delete")) {
                    continue;
                }
                let tagged = g
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value));
                if !tagged {
                    continue;
                }
                let mixed = g.mixed_instances_policy().and_then(|m| m.launch_template());
                let template = g
                    .launch_template()
                    .or_else(|| mixed.and_then(|m| m.launch_template_specification()))
                    .and_then(|t| t.launch_template_name())
                    .unwrap_or_default();
                let spot_types = mixed
                    .map(|m| {
                        m.overrides()
                            .iter()
                            .filter_map(|o| o.instance_type().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut tags: Vec<(String, String)> = g
                    .tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_string(),
                            t.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                tags.sort();
                groups.push(ScalingGroup {
                    name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
                    subnet: g.vpc_zone_identifier().unwrap_or_default().to_string(),
                    template: template.to_string(),
                    spot_types,
                    sizes: (
                        g.min_size().unwrap_or(0),
                        g.max_size().unwrap_or(0),
                        g.desired_capacity().unwrap_or(0),
                    ),
                    tags,
                });
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(groups);
            }
        }
    }

    fn template_spec(name: &str) -> LaunchTemplateSpecification {
        LaunchTemplateSpecification::builder()
            .launch_template_name(name)
            .version("$Default")
            .build()
    }

    /// Spot across the types, the cheapest pools with capacity first.
    fn mixed(spec: &GroupSpec) -> MixedInstancesPolicy {
        let mut t = AsgTemplate::builder()
            .launch_template_specification(Self::template_spec(spec.template));
        for ty in spec.spot_types {
            t = t.overrides(LaunchTemplateOverrides::builder().instance_type(ty).build());
        }
        MixedInstancesPolicy::builder()
            .launch_template(t.build())
            .instances_distribution(
                InstancesDistribution::builder()
                    .on_demand_base_capacity(0)
                    .on_demand_percentage_above_base_capacity(0)
                    .spot_allocation_strategy("price-capacity-optimized")
                    .build(),
            )
            .build()
    }

    /// The group's tags, each propagated to the instance it launches.
    fn tags(spec: &GroupSpec) -> Vec<AsgTag> {
        spec.tags
            .iter()
            .map(|(k, v)| {
                AsgTag::builder()
                    .key(*k)
                    .value(*v)
                    .propagate_at_launch(true)
                    .resource_id(spec.name)
                    .resource_type("auto-scaling-group")
                    .build()
            })
            .collect()
    }

    /// A group of one instance in one subnet, replaced when it dies.
    pub async fn create_scaling_group(&self, spec: &GroupSpec<'_>) -> Result<(), AwsError> {
        let tags = Self::tags(spec);
        let mut call = self
            .asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(spec.name)
            .min_size(1)
            .max_size(1)
            .desired_capacity(1)
            .vpc_zone_identifier(spec.subnet)
            .set_tags(Some(tags));
        call = if spec.spot_types.is_empty() {
            call.launch_template(Self::template_spec(spec.template))
        } else {
            call.mixed_instances_policy(Self::mixed(spec))
        };
        call.send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateAutoScalingGroup", spec.name, e))?;
        Ok(())
    }

    /// Sets a group's size, subnet and what it launches.
    pub async fn update_scaling_group(&self, spec: &GroupSpec<'_>) -> Result<(), AwsError> {
        let mut call = self
            .asg
            .update_auto_scaling_group()
            .auto_scaling_group_name(spec.name)
            .min_size(1)
            .max_size(1)
            .desired_capacity(1)
            .vpc_zone_identifier(spec.subnet);
        call = if spec.spot_types.is_empty() {
            call.launch_template(Self::template_spec(spec.template))
        } else {
            call.mixed_instances_policy(Self::mixed(spec))
        };
        call.send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateAutoScalingGroup", spec.name, e))?;
        // The update leaves tags alone: a changed one (the signalling
        // port) is set here, and reaches instances launched from now on.
        self.asg
            .create_or_update_tags()
            .set_tags(Some(Self::tags(spec)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateOrUpdateTags", spec.name, e))?;
        Ok(())
    }

    /// Removes a group and terminates its instance.
    pub async fn delete_scaling_group(&self, name: &str) -> Result<(), AwsError> {
        self.asg
            .delete_auto_scaling_group()
            .auto_scaling_group_name(name)
            .force_delete(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteAutoScalingGroup", name, e))?;
        Ok(())
    }

    /// Whether group `name` still exists (deleted, it lasts until its
    /// instance has terminated).
    pub async fn scaling_group_exists(&self, name: &str) -> Result<bool, AwsError> {
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeAutoScalingGroups", name, e))?;
        Ok(!out.auto_scaling_groups().is_empty())
    }
}
