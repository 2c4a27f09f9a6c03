//! `meshgate plan`, `up`, `down` and `bootstrap`: read the cloud, plan,
//! and carry the plan out, in order, stopping at the first call that
//! fails for good (what was done stays done; the next `up` plans the
//! rest).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::aws::FleetCloud;
use super::file::Fleet;
use super::model::{desired, Kind, Resource};
use super::plan::{plan, teardown, Action, Change};
use super::user_data::WRAPPED_KEY_FILE;

/// What a run did: the actions, and the calls it made.
#[derive(Debug)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub reads: usize,
    pub writes: usize,
    pub elapsed: Duration,
}

/// What an appliance's secret holds: its certificate and key, the mesh
/// CA's certificate, and the epoch-1 KMS data key (ciphertext).
#[derive(Serialize, Deserialize)]
pub struct Bundle {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub wrapped_key: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the AWS calls")
}

async fn read(fleet: &Fleet) -> Result<(FleetCloud, Vec<Resource>, Vec<Resource>)> {
    let mut cloud = FleetCloud::connect(fleet).await;
    let facts = cloud.facts(fleet).await?;
    let actual = cloud.actual(fleet).await?;
    Ok((cloud, desired(fleet, &facts), actual))
}

/// What `up` would do.
pub fn plan_fleet(path: &Path) -> Result<Outcome> {
    let fleet = Fleet::load(path)?;
    let started = Instant::now();
    runtime()?.block_on(async {
        let (cloud, want, actual) = read(&fleet).await?;
        Ok(Outcome {
            actions: plan(&want, &actual),
            reads: cloud.reads,
            writes: 0,
            elapsed: started.elapsed(),
        })
    })
}

/// The fleet as CloudFormation templates in `dir`, one per account and
/// region (reads the cloud for the facts the plan needs): the files.
pub fn cloudformation(path: &Path, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let fleet = Fleet::load(path)?;
    let want = runtime()?.block_on(async {
        let mut cloud = FleetCloud::connect(&fleet).await;
        let facts = cloud.facts(&fleet).await?;
        Ok::<_, anyhow::Error>(desired(&fleet, &facts))
    })?;
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut written = Vec::new();
    for stack in super::cfn::templates(&fleet, &want) {
        let file = dir.join(stack.file_name());
        let text = serde_json::to_string_pretty(&stack.template)?;
        std::fs::write(&file, text + "\n").with_context(|| file.display().to_string())?;
        written.push(file);
    }
    Ok(written)
}

/// Creates what is missing and changes what differs.
pub fn up(path: &Path) -> Result<Outcome> {
    let fleet = Fleet::load(path)?;
    let started = Instant::now();
    runtime()?.block_on(async {
        let (mut cloud, want, actual) = read(&fleet).await?;
        let actions = plan(&want, &actual);
        let mut wrapped: Option<String> = None;
        if actions
            .iter()
            .any(|a| a.change == Change::Create && a.resource.kind == Kind::Secret)
        {
            wrapped = Some(epoch_key(&fleet, &cloud, &actual).await?);
        }
        let mut issue =
            |r: &Resource| secret_for(&fleet, r, wrapped.as_deref().unwrap_or_default());
        carry_out(&fleet, &mut cloud, &actions, &actual, &mut issue).await?;
        Ok(Outcome {
            actions,
            reads: cloud.reads,
            writes: cloud.writes,
            elapsed: started.elapsed(),
        })
    })
}

/// Removes everything the fleet holds (what carries its tag or lives
/// under its IAM path), and nothing else.
pub fn down(path: &Path) -> Result<Outcome> {
    let fleet = Fleet::load(path)?;
    let started = Instant::now();
    runtime()?.block_on(async {
        let mut cloud = FleetCloud::connect(&fleet).await;
        let actual = cloud.actual(&fleet).await?;
        let actions = teardown(&actual);
        let mut none = |_: &Resource| -> Result<Zeroizing<String>, String> {
            Err("down creates nothing".into())
        };
        carry_out(&fleet, &mut cloud, &actions, &actual, &mut none).await?;
        Ok(Outcome {
            actions,
            reads: cloud.reads,
            writes: cloud.writes,
            elapsed: started.elapsed(),
        })
    })
}

async fn carry_out(
    fleet: &Fleet,
    cloud: &mut FleetCloud,
    actions: &[Action],
    actual: &[Resource],
    secret: &mut dyn FnMut(&Resource) -> Result<Zeroizing<String>, String>,
) -> Result<()> {
    for (i, a) in actions.iter().enumerate() {
        cloud.apply(fleet, a, actual, secret).await.map_err(|e| {
            anyhow!(
                "{e}\n{}{i} of {} changes made; run up again to carry out the rest",
                hint(&e),
                actions.len()
            )
        })?;
    }
    Ok(())
}

/// What to do about a call AWS refused for good, as a line (or nothing).
fn hint(e: &meshgate_aws::AwsError) -> &'static str {
    use meshgate_aws::ErrorKind;
    // AWS's error code: AccessDenied, UnauthorizedOperation,
    // VpcLimitExceeded, InvalidSubnetID.NotFound, NoSuchEntity, ...
    let m = e.code.as_deref().unwrap_or_default();
    match e.kind {
        ErrorKind::Throttled => "AWS throttled every try: wait a minute, or ask AWS for a higher API rate.\n",
        ErrorKind::Server(_) | ErrorKind::Timeout => "AWS failed every try: see the AWS Health Dashboard for the region.\n",
        _ if m.contains("AccessDenied") || m.contains("Unauthorized") || m.contains("Forbidden") => {
            "the credentials up runs with (or the region's account_role) need this action: see README, Provisioning a fleet.\n"
        }
        _ if m.contains("LimitExceeded") || m.contains("Quota") => {
            "an account quota is reached: remove unused ones or ask AWS for more (Service Quotas).\n"
        }
        _ if m.contains("NotFound") || m.contains("NoSuchEntity") => "check the fleet file's ids for that region and account.\n",
        _ => "",
    }
}

/// The epoch-1 data key of the fleet: the one its appliances already
/// hold (from any of its secrets), else a new one from KMS.
async fn epoch_key(fleet: &Fleet, cloud: &FleetCloud, actual: &[Resource]) -> Result<String> {
    if let Some(existing) = actual.iter().find(|r| r.kind == Kind::Secret) {
        let value = cloud.secret_value(&existing.scope, &existing.name).await?;
        let bundle: Bundle = serde_json::from_str(&value)
            .with_context(|| format!("secret {} is not a meshgate appliance's", existing.name))?;
        return Ok(bundle.wrapped_key);
    }
    let region = fleet.kms_key.split(':').nth(3).unwrap_or_default();
    let kms = meshgate_aws::Kms::connect(&meshgate_aws::Settings::new(
        region,
        fleet.endpoint_url.clone(),
    ))
    .await;
    let ciphertext = crate::cloud::kms::make_data_key(&kms, &fleet.kms_key, &fleet.mesh, 1)
        .await
        .map_err(|e| anyhow!(e))?;
    Ok(crate::keys::wrapped::to_hex(&ciphertext))
}

/// A new appliance secret: a certificate issued by the fleet's CA for the
/// zone's member (its region's prefixes granted), its key, the CA's
/// certificate and the epoch key's ciphertext.
fn secret_for(fleet: &Fleet, r: &Resource, wrapped: &str) -> Result<Zeroizing<String>, String> {
    let zone_name = r.name.rsplit('/').next().unwrap_or_default();
    let (region, zone) = fleet
        .regions
        .iter()
        .find_map(|reg| {
            reg.zones
                .iter()
                .find(|z| z.zone == zone_name)
                .map(|z| (reg, z))
        })
        .ok_or_else(|| format!("secret {} names no zone of the fleet", r.name))?;
    let claims = crate::identity::Claims {
        id: zone.zone.clone(),
        region: region.name.clone(),
        role: "edge".into(),
        prefixes: region.prefixes.clone(),
    };
    // In memory: the key goes into the secret and nowhere else.
    let issued = crate::identity::issue_pem(&fleet.ca, &claims, 365).map_err(|e| {
        format!(
            "issuing {}'s certificate with the CA in {}: {e}",
            zone.zone,
            fleet.ca.display()
        )
    })?;
    let ca = fleet.ca.join("ca.pem");
    let bundle = Bundle {
        ca: std::fs::read_to_string(&ca).map_err(|e| format!("{}: {e}", ca.display()))?,
        cert: issued.cert,
        key: issued.key.to_string(),
        wrapped_key: wrapped.to_string(),
    };
    let json = serde_json::to_string(&bundle).map_err(|e| e.to_string());
    let Bundle { key, .. } = bundle;
    drop(Zeroizing::new(key));
    json.map(Zeroizing::new)
}

/// On an appliance: writes its secret's files where the config the user
/// data wrote names them (key mode 0640, for the unit's group).
pub fn bootstrap(
    secret: &str,
    region: &str,
    dir: &Path,
    endpoint_url: Option<String>,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let value = runtime()?.block_on(async {
        let c =
            meshgate_aws::FleetClients::connect(&meshgate_aws::Settings::new(region, endpoint_url))
                .await;
        c.secret_value(secret).await
    })?;
    let bundle: Bundle = serde_json::from_str(&value)
        .with_context(|| format!("secret {secret} is not a meshgate appliance's"))?;
    let key = Zeroizing::new(bundle.key);
    for (name, text, mode) in [
        ("ca.pem", bundle.ca.as_str(), 0o644),
        ("appliance.pem", bundle.cert.as_str(), 0o644),
        ("appliance.key", key.as_str(), 0o640),
        (WRAPPED_KEY_FILE, bundle.wrapped_key.as_str(), 0o644),
    ] {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}
