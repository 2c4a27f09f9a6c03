//! The subcommands' arguments beyond the top level (the CA, certificates,
//! keys, policies, the fleet), and how an epoch order is made from them.

use std::path::PathBuf;

use clap::Subcommand;

use crate::shown;

#[derive(Subcommand)]
pub(crate) enum CaCmd {
    /// Create a new mesh CA: DIR/ca.pem (give it to every appliance) and
    /// DIR/ca.key (keep it offline; mode 0600). Never overwrites.
    Init {
        /// Where to write ca.pem and ca.key (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertCmd {
    /// Issue an appliance certificate with its member id, region and role
    /// bound into it: OUT/<id>.pem and OUT/<id>.key (mode 0600).
    Issue {
        /// The directory `meshgate ca init` wrote.
        #[arg(long)]
        ca: PathBuf,
        /// The member id it certifies (its config's gateway.id).
        #[arg(long)]
        id: String,
        /// The region it certifies (gateway.region).
        #[arg(long)]
        region: String,
        /// The role it certifies (gateway.role).
        #[arg(long, value_parser = ["edge", "leaf", "hub"])]
        role: String,
        /// A prefix the appliance may advertise to the mesh (CIDR, no host
        /// bits; repeat for each). Members refuse a record with a prefix
        /// outside these.
        #[arg(long = "prefix", value_name = "CIDR")]
        prefixes: Vec<meshgate::prefix::Prefix>,
        /// Where to write <id>.pem and <id>.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Show what a certificate grants: member id, region, role, prefixes,
    /// validity, issuer, and the id `cert revoke` takes.
    Show {
        /// The certificate (PEM), e.g. what `cert issue` wrote.
        file: PathBuf,
        /// Print it as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an appliance certificate mesh-wide: an order signed with the
    /// mesh CA key lists it, and every member cuts its holder off
    /// (connections closed, SAs torn down, out of every view). CERT is the
    /// certificate file or its id (as `cert issue` prints it).
    Revoke {
        cert: String,
        /// Take CERT off the list instead (once it has expired; members
        /// that saw it revoked keep it revoked).
        #[arg(long)]
        drop: bool,
        #[command(flatten)]
        order: OrderArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Write a new random master key file (mode 0600; never overwrites), from
    /// which the `local` key provider derives every epoch key. Every
    /// appliance of the mesh needs the same file. With --kms-key: instead a
    /// KMS data key for --epoch, of which only the ciphertext is written
    /// (the `kms` provider's `wrapped_key`; no secret: only a role allowed
    /// to decrypt with that KMS key can use it).
    Init {
        /// The file to write (never overwritten).
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        kms: KmsArgs,
        /// The epoch the KMS data key is for ([keys] epoch).
        #[arg(long, default_value_t = 1, requires = "kms_key")]
        epoch: u32,
    },
    /// Move the whole mesh to the next key epoch: an order signed with the
    /// mesh CA key, which the gateway puts into force (rekeying every peer
    /// under the new epoch) and the others follow by gossip. The epoch
    /// before the one rotated from is revoked.
    Rotate {
        #[command(flatten)]
        order: OrderArgs,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Revoke a key epoch mesh-wide: an order signed with the mesh CA key;
    /// every SA derived from EPOCH is torn down at once and renegotiated
    /// under the current epoch (the next one, if EPOCH is current).
    Revoke {
        epoch: u32,
        #[command(flatten)]
        order: OrderArgs,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Print the epoch state in force at the gateway (the input of `keys
    /// rotate --state` on a machine that holds the CA key).
    Show {
        /// The gateway's control socket (gateway.control).
        #[arg(long, default_value = meshgate::config::DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the state as JSON (then not an input of --state).
        #[arg(long)]
        json: bool,
    },
    /// Submit an order written by `keys rotate --out` or `keys revoke --out`.
    Apply {
        order: PathBuf,
        /// The gateway's control socket (gateway.control).
        #[arg(long, default_value = meshgate::config::DEFAULT_CONTROL)]
        control: PathBuf,
    },
}

/// The fleet file and how to print.
#[derive(clap::Args)]
pub(crate) struct FleetArgs {
    /// The fleet file (TOML; deploy/fleet.toml.example).
    #[arg(long, value_name = "FILE")]
    pub(crate) fleet: PathBuf,
    /// Print the actions and the calls made as one JSON document.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How an epoch order is made and where it goes.
#[derive(clap::Args)]
pub(crate) struct OrderArgs {
    /// The mesh CA's key (`ca.key` from `meshgate ca init`): it signs the
    /// order here, and never leaves this machine.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_key: PathBuf,
    /// The gateway's control socket (gateway.control): where the state in
    /// force is read and the order submitted.
    #[arg(long, default_value = meshgate::config::DEFAULT_CONTROL)]
    pub(crate) control: PathBuf,
    /// Start from this state (what `keys show` printed on an appliance)
    /// instead of asking the control socket: for signing away from the mesh.
    #[arg(long, value_name = "FILE")]
    pub(crate) state: Option<PathBuf>,
    /// Write the signed order here (for `keys apply` on an appliance)
    /// instead of submitting it.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Print the result (the state now in force, or the order written) as
    /// one JSON document.
    #[arg(long)]
    pub(crate) json: bool,
}

/// With KMS epoch keys: where a new epoch's data key is made.
#[derive(clap::Args)]
pub(crate) struct KmsArgs {
    /// The mesh's epoch keys are KMS data keys: make the new epoch's under
    /// this KMS key (id, ARN or alias; [keys] kms_key), with your own AWS
    /// credentials. The order names its digest, and only its ciphertext
    /// goes to the mesh.
    #[arg(long, value_name = "KEY")]
    pub(crate) kms_key: Option<String>,
    /// The mesh's name in the data key's encryption context ([keys] mesh).
    #[arg(long, requires = "kms_key")]
    pub(crate) mesh: Option<String>,
    /// The KMS key's region ([keys] region).
    #[arg(long, requires = "kms_key")]
    pub(crate) region: Option<String>,
    /// Another KMS endpoint than AWS's ([keys] endpoint_url).
    #[arg(long, value_name = "URL", requires = "kms_key")]
    pub(crate) endpoint_url: Option<String>,
}

impl KmsArgs {
    /// A new data key for `epoch`: its ciphertext (the plaintext is
    /// dropped at once, zeroized).
    pub(crate) fn data_key(&self, epoch: u32) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(key) = &self.kms_key else {
            return Ok(None);
        };
        let (Some(mesh), Some(region)) = (&self.mesh, &self.region) else {
            anyhow::bail!("--kms-key needs --mesh and --region too (as [keys] mesh and region)");
        };
        meshgate::cloud::new_data_key(key, mesh, region, self.endpoint_url.as_deref(), epoch)
            .map(Some)
            .map_err(anyhow::Error::msg)
    }
}

/// `keys rotate`, `keys revoke` and `cert revoke`: the next order from
/// the state in force, signed with the CA key, then submitted or written
/// out.
pub(crate) fn submit_order(
    a: &OrderArgs,
    kms: Option<&KmsArgs>,
    next: impl FnOnce(
        &meshgate::keys::rotation::EpochState,
    )
        -> Result<meshgate::keys::order::MeshOrder, meshgate::keys::order::OrderError>,
) -> anyhow::Result<()> {
    use meshgate::keys::order::MeshOrder;
    let text = match &a.state {
        Some(f) => {
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
        }
        None => {
            let (status, body) = meshgate::control::request(&a.control, "GET", "/keys", "")?;
            if status != 200 {
                anyhow::bail!("reading the epoch state: {}", body.trim());
            }
            body
        }
    };
    let state: MeshOrder = text.parse()?;
    let mut next = next(&state.state())?;
    // With KMS keys, a new current epoch gets its data key here: the order
    // names its digest, and its ciphertext goes with the order.
    let mut wrapped = None;
    if !next.wrapped.iter().any(|(e, _)| *e == next.current) {
        if let Some(ciphertext) = kms.map(|k| k.data_key(next.current)).transpose()?.flatten() {
            next.wrapped
                .retain(|(e, _)| e.saturating_add(1) >= next.current);
            next.wrapped
                .push((next.current, meshgate::keys::wrapped::digest(&ciphertext)));
            wrapped = Some(format!(
                "\nwrapped {} {}",
                next.current,
                meshgate::keys::wrapped::to_hex(&ciphertext)
            ));
        } else if !state.wrapped.is_empty() {
            anyhow::bail!("this mesh's epoch keys are KMS data keys (the state names them): give --kms-key, --mesh and --region so epoch {} gets one", next.current);
        }
    }
    let signed = next
        .seal(|m| meshgate::identity::ca_sign(&a.ca_key, m).map_err(|e| e.to_string()))
        .map_err(anyhow::Error::msg)?;
    let wrapped = wrapped.unwrap_or_default();
    match &a.out {
        Some(f) => {
            std::fs::write(f, format!("{}{wrapped}\n", signed.to_hex()))
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            if a.json {
                let doc = serde_json::json!({
                    "written": f.display().to_string(),
                    "serial": next.serial,
                    "current": next.current,
                    "floor": next.floor,
                    "revoked": next.revoked,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!(
                    "order {} ({next}) written to {}; submit it with meshgate keys apply",
                    next.serial,
                    f.display()
                );
            }
            Ok(())
        }
        None => meshgate::control::request_in(
            &a.control,
            (
                "POST",
                "/keys/order",
                &format!("{}{wrapped}", signed.to_hex()),
            ),
            meshgate::control::Format::json(a.json),
        )
        .and_then(shown),
    }
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Check that FILE (or a built-in name such as full-mesh) is a policy
    /// component of our contract, and that it runs within the limits on a
    /// sample view; prints its hash, size, compile time and one evaluation.
    Check {
        /// A .wasm component, or the name of a built-in policy.
        file: String,
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Replay a scenario of membership and health events (TOML) against a
    /// policy, print its decisions after each step, and fail when an
    /// expectation in the scenario does not hold.
    Test {
        /// A .wasm component, or the name of a built-in policy.
        file: String,
        /// The scenario (TOML: members, events, expectations; see
        /// examples/scenarios).
        #[arg(long)]
        scenario: PathBuf,
        /// Print every step's decisions and the failures as one JSON
        /// document (a failed expectation still fails the command).
        #[arg(long)]
        json: bool,
    },
    /// Reload the policy of the running gateway (from its configured
    /// module) through its control socket; prints what changed, or why the
    /// new policy was refused (the old one then stays in force).
    Reload {
        /// The gateway's control socket (gateway.control).
        #[arg(long, default_value = meshgate::config::DEFAULT_CONTROL)]
        control: PathBuf,
        /// Load a built-in instead, by name (full-mesh, hub-spoke,
        /// mesh-with-leaves); it stays the source for later reloads. No
        /// file but the configured one is ever loaded.
        #[arg(long)]
        module: Option<String>,
        /// Load it even if its decisions withdraw every route this
        /// gateway has (otherwise refused, and the policy in force stays).
        #[arg(long)]
        force: bool,
    },
}

/// `--transfer-secs`: a measurement needs some time, and ends.
pub(crate) fn transfer_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=600.0).contains(&s) => Ok(s),
        Ok(s) => Err(format!(
            "{s} is outside 0.1 to 600 seconds (a transfer of no time measures nothing)"
        )),
        Err(_) => Err(format!("'{text}' is not a number of seconds")),
    }
}

/// The built-in policies' names, for the lab's options.
pub(crate) fn builtin_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(meshgate::policy::BUILTIN.iter().map(|(n, _)| *n))
}
