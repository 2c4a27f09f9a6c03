//! meshgate's calls to AWS through the official SDK for Rust: the VPC
//! route tables an active appliance claims, its network interface's
//! source/destination check, the instances discovery finds, the KMS data
//! keys of the mesh's epochs, and the VPCs, route tables and interfaces
//! the lab creates when a local emulator plays AWS.
//!
//! A crate of its own so the gateway's edit-compile loop does not carry
//! the SDK. It knows nothing of meshgate's types: destinations are CIDR
//! strings, and errors say which API failed and whether retrying helps.
//! The SDK's own retries are off: the gateway's reconciler retries, with
//! its backoff, and counts every failure in its metrics.

mod error;
mod fleet;
mod fleet_asg;
mod fleet_ec2;
mod instances;
mod kms;
mod lab;
mod route53;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::AttributeBooleanValue;

pub use error::{AwsError, ErrorKind};
pub use fleet::{FleetClients, Role, Secret};
pub use fleet_asg::{GroupSpec, ScalingGroup};
pub use fleet_ec2::{LaunchTemplate, SecurityGroup, Subnet, TemplateData};
pub use instances::Instance;
pub use kms::Kms;
pub use lab::LabVpc;
pub use route53::Route53;

/// Where and how to reach EC2.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The region the appliance runs in (and signs for).
    pub region: String,
    /// Another endpoint than AWS's (a VPC endpoint, or an emulator).
    pub endpoint_url: Option<String>,
    /// A call without an answer by then fails (and is retried above).
    pub call_timeout: Duration,
    /// Fixed keys instead of the default credential chain (a lab's
    /// emulator; an appliance uses its instance role).
    pub static_credentials: Option<(&'static str, &'static str)>,
    /// Act in another account: STS AssumeRole into this role (its ARN)
    /// with the credentials above, renewed before they expire.
    pub assume_role: Option<String>,
}

impl Settings {
    /// AWS's endpoints (or `endpoint_url`) in `region`, with the default
    /// credential chain, calls timed out after 20 s.
    pub fn new(region: &str, endpoint_url: Option<String>) -> Settings {
        Settings {
            region: region.to_string(),
            endpoint_url,
            call_timeout: Duration::from_secs(20),
            static_credentials: None,
            assume_role: None,
        }
    }
}

/// A route as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination CIDR, IPv4 or IPv6.
    pub destination: String,
    /// The network interface it points at, if it points at one.
    pub interface: Option<String>,
    /// Otherwise what it points at (gateway, instance, peering, or
    /// `blackhole` when the target is gone).
    pub other: String,
}

/// A route table as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub routes: Vec<Route>,
}

/// An EC2 client of one region.
#[derive(Clone, Debug)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
}

/// The SDK's configuration for `s`: the default credential chain
/// (environment, profile, the instance's role) or fixed keys, no SDK
/// retries, the call timeout, and AssumeRole into another account.
pub(crate) async fn sdk_config(s: &Settings) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(s.call_timeout)
                .connect_timeout(s.call_timeout.min(Duration::from_secs(2)))
                .build(),
        );
    if let Some(url) = &s.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((key, secret)) = s.static_credentials {
        loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key, secret, None, None, "static",
        ));
    }
    let config = loader.load().await;
    match &s.assume_role {
        Some(role) => {
            let assumed = aws_config::sts::AssumeRoleProvider::builder(role.clone())
                .session_name("meshgate")
                .configure(&config)
                .build()
                .await;
            config
                .into_builder()
                .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(assumed))
                .build()
        }
        None => config,
    }
}

impl Ec2 {
    /// A client of the region `s` names (see [`sdk_config`]).
    pub async fn connect(s: &Settings) -> Ec2 {
        Ec2::from_config(&sdk_config(s).await)
    }

    pub(crate) fn from_config(config: &aws_config::SdkConfig) -> Ec2 {
        Ec2 {
            client: aws_sdk_ec2::Client::new(config),
        }
    }

    /// The route tables `ids` (one call); tables that do not exist are
    /// an error naming them.
    pub async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, AwsError> {
        const API: &str = "DescribeRouteTables";
        let out = self
            .client
            .describe_route_tables()
            .set_route_table_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, &ids.join(", "), e))?;
        Ok(out.route_tables().iter().map(route_table).collect())
    }

    /// The ids of the route tables that carry every tag of `tags`.
    pub async fn find_route_tables(&self, tags: &[(&str, &str)]) -> Result<Vec<String>, AwsError> {
        const API: &str = "DescribeRouteTables";
        let filters = instances::tag_filters(tags);
        let out = self
            .client
            .describe_route_tables()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, "route tables by tag", e))?;
        Ok(out
            .route_tables()
            .iter()
            .filter_map(|t| t.route_table_id().map(str::to_string))
            .collect())
    }

    /// Points `destination` in `table` at `interface`: `ReplaceRoute`, or
    /// `CreateRoute` when `create` (the route is missing).
    pub async fn point_route(
        &self,
        create: bool,
        table: &str,
        destination: &str,
        interface: &str,
    ) -> Result<(), AwsError> {
        let what = format!("{destination} in {table} to {interface}");
        // One of the two destination fields, by the prefix's family.
        let (v4, v6) = match destination.contains(':') {
            false => (Some(destination.to_string()), None),
            true => (None, Some(destination.to_string())),
        };
        if create {
            self.client
                .create_route()
                .route_table_id(table)
                .network_interface_id(interface)
                .set_destination_cidr_block(v4)
                .set_destination_ipv6_cidr_block(v6)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk("CreateRoute", &what, e))
        } else {
            self.client
                .replace_route()
                .route_table_id(table)
                .network_interface_id(interface)
                .set_destination_cidr_block(v4)
                .set_destination_ipv6_cidr_block(v6)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk("ReplaceRoute", &what, e))
        }
    }

    /// Turns the source/destination check of `interface` off: an
    /// appliance forwards packets that are neither from nor to it.
    pub async fn disable_source_dest_check(&self, interface: &str) -> Result<(), AwsError> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(interface)
            .source_dest_check(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ModifyNetworkInterfaceAttribute", interface, e))?;
        Ok(())
    }

    pub(crate) fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }
}

fn route_table(t: &aws_sdk_ec2::types::RouteTable) -> RouteTable {
    RouteTable {
        id: t.route_table_id().unwrap_or_default().to_string(),
        routes: t
            .routes()
            .iter()
            .filter_map(|r| {
                let destination = r
                    .destination_cidr_block()
                    .or(r.destination_ipv6_cidr_block())?
                    .to_string();
                let interface = r.network_interface_id().map(str::to_string);
                let other = [
                    r.gateway_id(),
                    r.instance_id(),
                    r.nat_gateway_id(),
                    r.transit_gateway_id(),
                    r.vpc_peering_connection_id(),
                ]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or("")
                .to_string();
                let blackhole = r.state().is_some_and(|s| s.as_str() == "blackhole");
                Some(Route {
                    destination,
                    interface: interface.filter(|_| !blackhole),
                    other: if blackhole { "blackhole".into() } else { other },
                })
            })
            .collect(),
    }
}
