//! The lab's side of EC2, when an emulator plays AWS: each lab region's
//! VPC, subnet, route table and the appliances' network interfaces.

use aws_sdk_ec2::types::Tag;

use crate::{AwsError, Ec2};

/// One lab region's VPC as created in EC2.
#[derive(Clone, Debug)]
pub struct LabVpc {
    pub vpc: String,
    pub subnet: String,
    pub route_table: String,
    /// One per address asked for, in order.
    pub interfaces: Vec<String>,
}

impl Ec2 {
    /// Creates a VPC of `cidr` with one `subnet` in `zone`, a route table
    /// tagged with `tags`, and a network interface per private address
    /// in `addresses`.
    pub async fn create_lab_vpc(
        &self,
        cidr: &str,
        subnet: &str,
        zone: &str,
        addresses: &[String],
        tags: &[(&str, &str)],
    ) -> Result<LabVpc, AwsError> {
        let c = self.client();
        let (vpc, subnet) = self.vpc_with_subnet(cidr, subnet, zone).await?;
        let route_table = c
            .create_route_table()
            .vpc_id(&vpc)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateRouteTable", &vpc, e))?
            .route_table()
            .and_then(|t| t.route_table_id())
            .unwrap_or_default()
            .to_string();
        let mut tagging = c.create_tags().resources(&route_table);
        for (k, v) in tags {
            tagging = tagging.tags(Tag::builder().key(*k).value(*v).build());
        }
        tagging
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateTags", &route_table, e))?;
        let mut interfaces = Vec::new();
        for a in addresses {
            let eni = c
                .create_network_interface()
                .subnet_id(&subnet)
                .private_ip_address(a)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("CreateNetworkInterface", a, e))?
                .network_interface()
                .and_then(|n| n.network_interface_id())
                .unwrap_or_default()
                .to_string();
            interfaces.push(eni);
        }
        Ok(LabVpc {
            vpc,
            subnet,
            route_table,
            interfaces,
        })
    }

    /// Creates a VPC of `cidr` with a subnet per `(cidr, zone)` and one
    /// route table, untagged (a fleet's `up` tags it): a VPC a fleet file
    /// joins. Returns the VPC, the subnets in order, and the table.
    pub async fn create_fleet_vpc(
        &self,
        cidr: &str,
        subnets: &[(&str, &str)],
    ) -> Result<(String, Vec<String>, String), AwsError> {
        let c = self.client();
        let Some(((first, first_zone), rest)) = subnets.split_first() else {
            return Err(AwsError::refused(
                "CreateSubnet",
                cidr,
                "no subnet asked for".to_string(),
            ));
        };
        let (vpc, subnet) = self.vpc_with_subnet(cidr, first, first_zone).await?;
        let mut ids = vec![subnet];
        for (block, zone) in rest {
            let id = c
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(*block)
                .availability_zone(*zone)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("CreateSubnet", block, e))?
                .subnet()
                .and_then(|s| s.subnet_id())
                .unwrap_or_default()
                .to_string();
            ids.push(id);
        }
        let table = c
            .create_route_table()
            .vpc_id(&vpc)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateRouteTable", &vpc, e))?
            .route_table()
            .and_then(|t| t.route_table_id())
            .unwrap_or_default()
            .to_string();
        Ok((vpc, ids, table))
    }

    /// Whether `interface`'s source/destination check is on.
    pub async fn source_dest_check(&self, interface: &str) -> Result<bool, AwsError> {
        let out = self
            .client()
            .describe_network_interfaces()
            .network_interface_ids(interface)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeNetworkInterfaces", interface, e))?;
        Ok(out
            .network_interfaces()
            .first()
            .and_then(|n| n.source_dest_check())
            .unwrap_or(true))
    }

    /// Stands the lab's appliances up as instances, for discovery by
    /// tags: a VPC `cidr` with a subnet `subnet` in `zone`, and per
    /// `(address, tags)` a running instance at that private address,
    /// tagged. Returns the instance ids.
    pub async fn run_lab_instances(
        &self,
        cidr: &str,
        subnet: &str,
        zone: &str,
        instances: &[(String, Vec<(String, String)>)],
    ) -> Result<Vec<String>, AwsError> {
        let c = self.client();
        let (_, subnet) = self.vpc_with_subnet(cidr, subnet, zone).await?;
        // Any image the emulator knows.
        let image = c
            .describe_images()
            .owners("amazon")
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeImages", "amazon", e))?
            .images()
            .first()
            .and_then(|i| i.image_id())
            .unwrap_or_default()
            .to_string();
        let mut ids = Vec::new();
        for (address, tags) in instances {
            let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(Tag::builder().key(k).value(v).build());
            }
            let out = c
                .run_instances()
                .image_id(&image)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .min_count(1)
                .max_count(1)
                .subnet_id(&subnet)
                .private_ip_address(address)
                .tag_specifications(spec.build())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("RunInstances", address, e))?;
            ids.extend(
                out.instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string)),
            );
        }
        Ok(ids)
    }

    /// A VPC of `cidr` with one subnet `subnet` in `zone`: their ids.
    async fn vpc_with_subnet(
        &self,
        cidr: &str,
        subnet: &str,
        zone: &str,
    ) -> Result<(String, String), AwsError> {
        let c = self.client();
        let vpc = c
            .create_vpc()
            .cidr_block(cidr)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateVpc", cidr, e))?
            .vpc()
            .and_then(|v| v.vpc_id())
            .unwrap_or_default()
            .to_string();
        let subnet = c
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(subnet)
            .availability_zone(zone)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateSubnet", subnet, e))?
            .subnet()
            .and_then(|s| s.subnet_id())
            .unwrap_or_default()
            .to_string();
        Ok((vpc, subnet))
    }
}
