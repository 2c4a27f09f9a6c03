//! Where a member finds others to join through: a trait, so that sources
//! can be added: the config's seed list ([`StaticSeeds`]), and the mesh's
//! EC2 instances found by their tags (`cloud::discovery`). A member asks
//! at start (the member core's `Output::Discover`), and again whenever
//! it knows no other member alive (alone at start, or cut off by a
//! partition), so a source that changes (instances replaced) is followed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A member to join through: its id (which its certificate must name) and
/// its signalling address.
pub type Seed = (String, SocketAddr);

/// What a discovery source answers.
pub type Discovered<'a> = Pin<Box<dyn Future<Output = Result<Vec<Seed>, String>> + Send + 'a>>;

pub trait Discovery: Send + Sync {
    /// The members to join through now.
    fn discover(&self) -> Discovered<'_>;
    /// For logs: `seeds`, `ec2-tags`.
    fn name(&self) -> &'static str;
}

/// The seeds of the config.
pub struct StaticSeeds(pub Vec<Seed>);

impl Discovery for StaticSeeds {
    fn discover(&self) -> Discovered<'_> {
        let seeds = self.0.clone();
        Box::pin(async move { Ok(seeds) })
    }

    fn name(&self) -> &'static str {
        "seeds"
    }
}
