//! The AWS backend: the reconciler's calls as EC2 calls through the
//! official SDK (the `meshgate-aws` crate), and EC2's errors as
//! [`CloudError`]s that say whether retrying helps.

use super::backend::{BoxFuture, CloudBackend};
use super::{Call, CloudError, Reply, RouteTable, Target};
use crate::prefix::Prefix;

/// EC2 of one region.
pub struct AwsCloud {
    ec2: meshgate_aws::Ec2,
}

impl AwsCloud {
    /// A client for `region` (through `endpoint_url` if given) with the
    /// default credential chain: on an appliance, its instance role.
    pub async fn connect(region: &str, endpoint_url: Option<String>) -> AwsCloud {
        AwsCloud::with_settings(&meshgate_aws::Settings {
            region: region.to_string(),
            endpoint_url,
            call_timeout: super::driver::CALL_TIMEOUT,
            static_credentials: None,
            assume_role: None,
        })
        .await
    }

    /// A client as `settings` say (a test's emulator and keys).
    pub async fn with_settings(settings: &meshgate_aws::Settings) -> AwsCloud {
        AwsCloud {
            ec2: meshgate_aws::Ec2::connect(settings).await,
        }
    }
}

impl CloudBackend for AwsCloud {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CloudError>> {
        Box::pin(async move {
            let create = matches!(call, Call::Create { .. });
            match call {
                Call::Describe { tables } => self
                    .ec2
                    .describe_route_tables(&tables)
                    .await
                    .map(|ts| Reply::Described(ts.into_iter().map(route_table).collect()))
                    .map_err(cloud_error),
                Call::Replace { route, interface } | Call::Create { route, interface } => self
                    .ec2
                    .point_route(
                        create,
                        &route.table,
                        &route.destination.to_string(),
                        &interface,
                    )
                    .await
                    .map(|()| Reply::Done)
                    .map_err(cloud_error),
            }
        })
    }

    fn prepare(&self, interface: &str) -> BoxFuture<'_, Result<(), CloudError>> {
        let interface = interface.to_string();
        Box::pin(async move {
            self.ec2
                .disable_source_dest_check(&interface)
                .await
                .map_err(cloud_error)
        })
    }

    fn find_route_tables(
        &self,
        mesh: &str,
        group: &str,
    ) -> BoxFuture<'_, Result<Vec<String>, CloudError>> {
        let (mesh, group) = (mesh.to_string(), group.to_string());
        Box::pin(async move {
            self.ec2
                .find_route_tables(&[("meshgate:mesh", &mesh), ("meshgate:group", &group)])
                .await
                .map_err(cloud_error)
        })
    }
}

fn route_table(t: meshgate_aws::RouteTable) -> RouteTable {
    RouteTable {
        id: t.id,
        routes: t
            .routes
            .into_iter()
            .filter_map(|r| {
                // A destination that is not a prefix (a prefix list) is
                // none of ours.
                let prefix: Prefix = r.destination.parse().ok()?;
                let target = match r.interface {
                    Some(eni) => Target::Interface(eni),
                    None => Target::Other(r.other),
                };
                Some((prefix, target))
            })
            .collect(),
    }
}

/// EC2's error, with the API, the route and EC2's word, as the
/// reconciler's kind of error.
pub(crate) fn cloud_error(e: meshgate_aws::AwsError) -> CloudError {
    use meshgate_aws::ErrorKind;
    let text = e.to_string();
    match e.kind {
        ErrorKind::Throttled => CloudError::Throttled(text),
        ErrorKind::Server(status) => CloudError::Server {
            status,
            message: text,
        },
        ErrorKind::Timeout => CloudError::Timeout(text),
        ErrorKind::Stale => CloudError::Stale(text),
        ErrorKind::Refused => CloudError::Refused(text),
    }
}
