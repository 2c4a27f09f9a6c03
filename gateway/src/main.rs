//! The `meshgate` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use meshgate::esp::CipherSuite;
use meshgate::fleet::cli::Verb;

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "Multi-region VPN appliance: IPsec ESP gateway over TUN"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway described by a config file.
    Run {
        /// The gateway's config file (TOML; see README, Configuration reference).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and everything `run` would refuse (the mesh
    /// CA, certificate and key, the epoch key, the policy) without
    /// starting anything.
    Check {
        /// The gateway's config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with routing policies (WebAssembly components).
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// The mesh CA, which signs every appliance's certificate.
    Ca {
        #[command(subcommand)]
        command: CaCmd,
    },
    /// Appliance certificates.
    Cert {
        #[command(subcommand)]
        command: CertCmd,
    },
    /// The mesh's key material for negotiated SAs.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Print fresh random key material (key and salt, hex) for a manual
    /// SA; with --pair A B, write both directions' keys of a pair of
    /// configured peers and print each side's [[peers]] section.
    Keygen {
        /// The SA's cipher suite (sets the key material's length).
        #[arg(long, default_value = "aes128gcm16", value_parser = clap::builder::PossibleValuesParser::new(CipherSuite::ALL.map(CipherSuite::name)))]
        cipher: String,
        /// The two gateways' ids (their gateway.id).
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        pair: Option<Vec<String>>,
        /// Where the pair's key files go (A-to-B.hex, B-to-A.hex; never
        /// overwritten).
        #[arg(long, default_value = ".", requires = "pair")]
        dir: PathBuf,
        /// A's ESP-in-UDP address, as B sends to it (else a placeholder
        /// to edit).
        #[arg(long, value_name = "ADDR:PORT", requires = "pair")]
        a_endpoint: Option<std::net::SocketAddr>,
        /// A prefix behind A (repeat for each).
        #[arg(long = "a-prefix", value_name = "CIDR", requires = "pair")]
        a_prefixes: Vec<meshgate::prefix::Prefix>,
        /// B's ESP-in-UDP address, as A sends to it.
        #[arg(long, value_name = "ADDR:PORT", requires = "pair")]
        b_endpoint: Option<std::net::SocketAddr>,
        /// A prefix behind B (repeat for each).
        #[arg(long = "b-prefix", value_name = "CIDR", requires = "pair")]
        b_prefixes: Vec<meshgate::prefix::Prefix>,
    },
    /// This gateway (policy running and configured, key epoch, underlays,
    /// offloads), each peer (state, SAs with SPI, age and next rekey,
    /// traffic each way, underlay), the drops, and per redundancy group
    /// who is active and whether the cloud routes converged.
    Status {
        /// The gateway's admin listener (run inside its namespace).
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: std::net::SocketAddr,
        /// Print it as one JSON document (README, Status and JSON output).
        #[arg(long)]
        json: bool,
    },
    /// Measure the tunnel path to MEMBER (echoes through the SAs each way,
    /// with the SPIs and the underlay used) and show the signalling path
    /// (membership's liveness probes) beside it.
    Ping {
        /// The member's (or configured peer's) id.
        member: String,
        /// Echoes to send (1-100).
        #[arg(long, short = 'c', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
        /// Milliseconds between echoes (10-10000).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=10_000))]
        interval_ms: u64,
        /// The gateway's control socket (gateway.control).
        #[arg(long, default_value = meshgate::config::DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The members this gateway sees: state, since when, round-trip time
    /// and loss of the path, and what each advertises.
    Members {
        /// The gateway's admin listener (run inside its namespace).
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: std::net::SocketAddr,
        /// Print them as one JSON array (README, Status and JSON output).
        #[arg(long)]
        json: bool,
    },
    /// What `up` would create, change and remove to make the cloud hold
    /// what the fleet file describes (reads only).
    Plan {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Write the fleet as CloudFormation templates instead (one per
        /// account and region, into --out).
        #[arg(long, value_parser = ["cloudformation"])]
        output: Option<String>,
        /// The templates' directory.
        #[arg(long, value_name = "DIR", default_value = ".", requires = "output")]
        out: PathBuf,
    },
    /// Provision the fleet: create what is missing and change what
    /// differs (a second `up` makes no change; an interrupted one is
    /// completed by the next).
    Up {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Remove everything the fleet's `up` made (what carries its tag or
    /// lives under its IAM path), and nothing else.
    Down {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// On an appliance at first boot (the launch template's user data
    /// runs it): fetch its secret (certificate, key, CA, epoch key) into
    /// DIR with the instance's role.
    Bootstrap {
        /// The secret's name (meshgate/<mesh>/<zone>).
        #[arg(long)]
        secret: String,
        /// The secret's region (the appliance's).
        #[arg(long)]
        region: String,
        /// Where the config the user data wrote expects the files.
        #[arg(long, default_value = "/etc/meshgate")]
        dir: PathBuf,
        /// Another endpoint than AWS's (a test's moto server).
        #[arg(long, value_name = "URL")]
        endpoint_url: Option<String>,
    },
    /// Print the completion script of SHELL for meshgate's commands and
    /// options (the package installs bash's, zsh's and fish's).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (meshgate.1 and one per command) into DIR.
    Manpages {
        /// Where to write them (made if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a multi-region lab in network namespaces, prove every host
    /// reaches every other through the gateways, and remove it (needs root).
    Lab {
        /// Number of regions (appliance + VPC host each).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=50))]
        regions: u16,
        /// ICMP echo requests per pair (1 or more: the reachability check).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        pings: u32,
        /// Seconds of TCP transfer per pair (0.1 to 600).
        #[arg(long, default_value_t = 2.0, value_parser = transfer_secs)]
        transfer_secs: f64,
        /// Keep the lab running after the checks, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// The built-in policy the gateways run: full-mesh, hub-spoke
        /// (region 1 is the hub; with 4+ regions regions 1 and 2 are an
        /// active/passive hub pair) or mesh-with-leaves.
        #[arg(long, default_value = "full-mesh", value_parser = builtin_names())]
        policy: String,
        /// Place the members (roles, groups) for this topology rather than
        /// the policy's, to start on one policy and reload another on the
        /// running lab (for example `--policy full-mesh --placement
        /// hub-spoke`, then `meshgate policy reload --module hub-spoke` on
        /// each appliance).
        #[arg(long, value_parser = builtin_names())]
        placement: Option<String>,
        /// Give each gateway a configured peer list with fixed keys, as
        /// before the mesh: no membership, no negotiation.
        #[arg(long)]
        static_keys: bool,
        /// Appliances per region: 2 runs an active/passive pair (zones a
        /// and b, one redundancy group) behind the VPC's router, whose
        /// route table the active one claims; 1, one appliance per region
        /// (default: 2, or 1 with --static-keys).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
        zones: Option<u8>,
        /// After the checks, kill region 2's active appliance this many
        /// times (default 10) under a flow of one echo request every 10 ms
        /// from host-1, and report each outage and the time from the kill
        /// to the routes claimed by its partner.
        #[arg(long, num_args = 0..=1, default_missing_value = "10", value_parser = clap::value_parser!(u32).range(1..=1000))]
        failover: Option<u32>,
        /// Print the whole summary (pairs, gateways, failovers) as one
        /// JSON document on stdout; progress goes to stderr.
        #[arg(long)]
        json: bool,
        /// Where the active appliances claim their VPC route tables: lab
        /// (the router namespaces, no cloud) or moto (a local moto server
        /// as the lab's AWS, claimed through the AWS SDK; needs
        /// moto_server on the PATH).
        #[arg(long, default_value = "lab", value_parser = ["lab", "moto"])]
        cloud: String,
        /// Leaf VPCs per region (0-9), each an appliance of role leaf and
        /// a host, attached to the region's edges: with `--policy
        /// mesh-with-leaves`, leaf traffic crosses leaf, edge, edge, leaf.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
        leaves: u8,
        /// Put every appliance on a second underlay labelled dx
        /// (198.19.0.0/24) beside internet, and have the policy prefer it
        /// (`underlay = "dx"`, a healed dx used again after 3 s).
        #[arg(long)]
        dx: bool,
        /// After the checks, cut region 2's dx link this many times
        /// (default 5) under a flow of one echo request every 10 ms from
        /// host-1, and report the loss while the tunnel moves to internet
        /// and back (implies --dx).
        #[arg(long, num_args = 0..=1, default_missing_value = "5", value_parser = clap::value_parser!(u32).range(1..=1000))]
        cut_dx: Option<u32>,
        /// With --cloud moto: register each appliance as a tagged EC2
        /// instance (regions of even number in a second account) and have
        /// the gateways find each other by tags, with no seed list.
        #[arg(long)]
        discovery: bool,
        /// With --cloud moto: the mesh's epoch keys are KMS data keys made
        /// under a KMS key in the lab's AWS, which each gateway decrypts.
        #[arg(long)]
        kms: bool,
    },
}

/// Man pages, from the CLI's definition: meshgate.1 and one per command
/// (meshgate-status.1, meshgate-policy-reload.1, ...), as git has them.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    // After build(), a subcommand's display name is its full one.
    fn write(cmd: clap::Command, dir: &std::path::Path, n: &mut usize) -> anyhow::Result<()> {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        let file = dir.join(format!("{name}.1"));
        std::fs::write(&file, page).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        *n += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write(sub.clone(), dir, n)?;
        }
        Ok(())
    }
    let mut n = 0;
    let mut cli = Cli::command();
    cli.build();
    write(cli, dir, &mut n)?;
    println!("{n} man pages written to {}", dir.display());
    Ok(())
}

#[derive(Subcommand)]
enum CaCmd {
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
enum CertCmd {
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
enum KeysCmd {
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
struct FleetArgs {
    /// The fleet file (TOML; deploy/fleet.toml.example).
    #[arg(long, value_name = "FILE")]
    fleet: PathBuf,
    /// Print the actions and the calls made as one JSON document.
    #[arg(long)]
    json: bool,
}

/// How an epoch order is made and where it goes.
#[derive(clap::Args)]
struct OrderArgs {
    /// The mesh CA's key (`ca.key` from `meshgate ca init`): it signs the
    /// order here, and never leaves this machine.
    #[arg(long, value_name = "FILE")]
    ca_key: PathBuf,
    /// The gateway's control socket (gateway.control): where the state in
    /// force is read and the order submitted.
    #[arg(long, default_value = meshgate::config::DEFAULT_CONTROL)]
    control: PathBuf,
    /// Start from this state (what `keys show` printed on an appliance)
    /// instead of asking the control socket: for signing away from the mesh.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Write the signed order here (for `keys apply` on an appliance)
    /// instead of submitting it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the result (the state now in force, or the order written) as
    /// one JSON document.
    #[arg(long)]
    json: bool,
}

/// With KMS epoch keys: where a new epoch's data key is made.
#[derive(clap::Args)]
struct KmsArgs {
    /// The mesh's epoch keys are KMS data keys: make the new epoch's under
    /// this KMS key (id, ARN or alias; [keys] kms_key), with your own AWS
    /// credentials. The order names its digest, and only its ciphertext
    /// goes to the mesh.
    #[arg(long, value_name = "KEY")]
    kms_key: Option<String>,
    /// The mesh's name in the data key's encryption context ([keys] mesh).
    #[arg(long, requires = "kms_key")]
    mesh: Option<String>,
    /// The KMS key's region ([keys] region).
    #[arg(long, requires = "kms_key")]
    region: Option<String>,
    /// Another KMS endpoint than AWS's ([keys] endpoint_url).
    #[arg(long, value_name = "URL", requires = "kms_key")]
    endpoint_url: Option<String>,
}

impl KmsArgs {
    /// A new data key for `epoch`: its ciphertext (the plaintext is
    /// dropped at once, zeroized).
    fn data_key(&self, epoch: u32) -> anyhow::Result<Option<Vec<u8>>> {
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
fn submit_order(
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
enum PolicyCmd {
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
fn transfer_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=600.0).contains(&s) => Ok(s),
        Ok(s) => Err(format!(
            "{s} is outside 0.1 to 600 seconds (a transfer of no time measures nothing)"
        )),
        Err(_) => Err(format!("'{text}' is not a number of seconds")),
    }
}

/// The built-in policies' names, for the lab's options.
fn builtin_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(meshgate::policy::BUILTIN.iter().map(|(n, _)| *n))
}

/// `meshgate policy reload`: asks the control socket, prints its answer.
fn reload(control: &std::path::Path, module: Option<String>, force: bool) -> anyhow::Result<()> {
    let module = match module {
        // A built-in by name, or a file, sent as an absolute path (the
        // gateway runs elsewhere).
        Some(m) => {
            let cwd = std::env::current_dir()?;
            match meshgate::policy::PolicySource::parse(&m, &cwd)? {
                meshgate::policy::PolicySource::File(p) => {
                    std::path::absolute(p)?.display().to_string()
                }
                builtin => builtin.to_string(),
            }
        }
        None => String::new(),
    };
    let path = if force {
        "/policy/reload?force"
    } else {
        "/policy/reload"
    };
    let answer = meshgate::control::request(control, "POST", path, &module)?;
    shown(answer)
}

/// Prints what the gateway answered on stdout; unless 200, its reason is
/// the error (on stderr, with the exit code), not split across the two.
fn shown((status, body): (u16, String)) -> anyhow::Result<()> {
    if status != 200 {
        // A refusal asked for as JSON is {"error": "..."}: said in words.
        let said = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(String::from))
            .unwrap_or(body);
        anyhow::bail!("{} (HTTP {status})", said.trim_end());
    }
    print!("{body}");
    Ok(())
}

/// POSTs to the control socket; prints the answer, fails unless 200.
/// Writes `text` and a newline to a new file (never overwrites).
fn write_new(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    writeln!(f, "{text}").map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn control_post(control: &std::path::Path, path: &str, body: &str) -> anyhow::Result<()> {
    meshgate::control::request(control, "POST", path, body).and_then(shown)
}

/// A certificate's id, from its hex form or its file.
fn cert_to_revoke(cert: &str) -> anyhow::Result<meshgate::keys::order::CertId> {
    if let Some(id) = meshgate::keys::order::parse_cert_id(cert) {
        return Ok(id);
    }
    let der = meshgate::identity::load_cert(std::path::Path::new(cert)).map_err(|e| {
        anyhow::anyhow!(
            "{e} (CERT is a certificate file, or the 32-hex-digit id `cert issue` printed)"
        )
    })?;
    Ok(meshgate::identity::cert_id(&der))
}

fn fleet_run(verb: Verb, a: &FleetArgs) -> anyhow::Result<()> {
    meshgate::fleet::cli::run(verb, &a.fleet, a.json)
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when a reader such as
    // `head` closes the pipe.
    // SAFETY: setting a signal disposition at start, before any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal; none in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run { config } => meshgate::gateway::run(&config),
        Cmd::Check { config } => meshgate::start::check(&config),
        Cmd::Policy {
            command: PolicyCmd::Check { file, json },
        } => meshgate::policy::check::run(&file, json),
        Cmd::Policy {
            command:
                PolicyCmd::Test {
                    file,
                    scenario,
                    json,
                },
        } => meshgate::policy::scenario::run(&file, &scenario, json),
        Cmd::Policy {
            command:
                PolicyCmd::Reload {
                    control,
                    module,
                    force,
                },
        } => reload(&control, module, force),
        Cmd::Ca {
            command: CaCmd::Init { dir, days },
        } => meshgate::identity::init_ca(&dir, days)
            .map(|p| println!("mesh CA written: {} (and its key beside it)", p.display()))
            .map_err(Into::into),
        Cmd::Cert {
            command:
                CertCmd::Issue {
                    ca,
                    id,
                    region,
                    role,
                    prefixes,
                    out,
                    days,
                },
        } => meshgate::identity::issue(
            &ca,
            &meshgate::identity::Claims {
                id,
                region,
                role,
                prefixes,
            },
            &out,
            days,
        )
        .and_then(|(c, k)| {
            let id = meshgate::identity::load_cert(&c)?;
            println!(
                "certificate {} (id {}) and key {}",
                c.display(),
                meshgate::keys::order::cert_hex(&meshgate::identity::cert_id(&id)),
                k.display()
            );
            Ok(())
        })
        .map_err(Into::into),
        Cmd::Cert {
            command: CertCmd::Show { file, json },
        } => meshgate::certinfo::show(&file, json),
        Cmd::Cert {
            command: CertCmd::Revoke { cert, drop, order },
        } => cert_to_revoke(&cert).and_then(|id| {
            submit_order(&order, None, |s| {
                if drop {
                    s.drop_cert(id)
                } else {
                    s.revoke_cert(id)
                }
            })
        }),
        Cmd::Keys {
            command: KeysCmd::Init { file, kms, epoch },
        } => match kms.data_key(epoch) {
            Ok(Some(ciphertext)) => write_new(&file, &meshgate::keys::wrapped::to_hex(&ciphertext))
                .map(|()| {
                    println!(
                        "the KMS data key of epoch {epoch} written (ciphertext only): {}",
                        file.display()
                    )
                }),
            Ok(None) => meshgate::keys::LocalKeys::generate(&file)
                .map(|()| println!("master key written: {}", file.display()))
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display())),
            Err(e) => Err(e),
        },
        Cmd::Keys {
            command: KeysCmd::Rotate { order, kms },
        } => submit_order(&order, Some(&kms), |s| s.rotate()),
        Cmd::Keys {
            command: KeysCmd::Revoke { epoch, order, kms },
        } => submit_order(&order, Some(&kms), |s| s.revoke(epoch)),
        Cmd::Keys {
            command: KeysCmd::Show { control, json },
        } => meshgate::control::request_in(
            &control,
            ("GET", "/keys", ""),
            meshgate::control::Format::json(json),
        )
        .and_then(shown),
        Cmd::Keys {
            command: KeysCmd::Apply { order, control },
        } => std::fs::read_to_string(&order)
            .map_err(|e| anyhow::anyhow!("{}: {e}", order.display()))
            .and_then(|hex| control_post(&control, "/keys/order", hex.trim())),
        Cmd::Status { admin, json } => {
            meshgate::admin::read(admin, "/status", meshgate::control::Format::json(json))
                .and_then(shown)
        }
        Cmd::Ping {
            member,
            count,
            interval_ms,
            control,
            json,
        } => {
            if !meshgate::ids::valid_id(&member) {
                Err(anyhow::anyhow!("'{member}' is not a member id"))
            } else {
                meshgate::control::request_in(
                    &control,
                    (
                        "GET",
                        &format!("/ping?member={member}&count={count}&interval_ms={interval_ms}"),
                        "",
                    ),
                    meshgate::control::Format::json(json),
                )
                .and_then(shown)
            }
        }
        Cmd::Members { admin, json } => {
            meshgate::admin::read(admin, "/members", meshgate::control::Format::json(json))
                .and_then(shown)
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "meshgate",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Manpages { dir } => write_man_pages(&dir),
        Cmd::Plan {
            fleet,
            output: Some(_),
            out,
        } => meshgate::fleet::cli::cloudformation(&fleet.fleet, &out),
        Cmd::Plan { fleet, .. } => fleet_run(Verb::Plan, &fleet),
        Cmd::Up { fleet } => fleet_run(Verb::Up, &fleet),
        Cmd::Down { fleet } => fleet_run(Verb::Down, &fleet),
        Cmd::Bootstrap {
            secret,
            region,
            dir,
            endpoint_url,
        } => meshgate::fleet::cli::bootstrap(&secret, &region, &dir, endpoint_url),
        Cmd::Keygen {
            cipher,
            pair,
            dir,
            a_endpoint,
            a_prefixes,
            b_endpoint,
            b_prefixes,
        } => {
            let suite = CipherSuite::from_name(&cipher).unwrap_or(CipherSuite::Aes128Gcm);
            match pair.as_deref() {
                Some([a, b]) => meshgate::keygen::pair(
                    &meshgate::keygen::Side {
                        id: a.clone(),
                        endpoint: a_endpoint,
                        prefixes: a_prefixes,
                    },
                    &meshgate::keygen::Side {
                        id: b.clone(),
                        endpoint: b_endpoint,
                        prefixes: b_prefixes,
                    },
                    suite,
                    &dir,
                )
                .map(|text| print!("{text}")),
                _ => {
                    println!("{}", *meshgate::keygen::key_hex(suite));
                    Ok(())
                }
            }
        }
        Cmd::Lab {
            regions,
            pings,
            transfer_secs,
            keep,
            policy,
            placement,
            static_keys,
            zones,
            failover,
            json,
            cloud,
            leaves,
            dx,
            cut_dx,
            discovery,
            kms,
        } => std::env::current_exe()
            .map_err(Into::into)
            .and_then(|binary| {
                meshgate::lab::run_lab(&meshgate::lab::LabOptions {
                    regions: usize::from(regions),
                    pings,
                    transfer: Duration::from_secs_f64(transfer_secs),
                    keep,
                    binary,
                    policy,
                    placement,
                    static_keys,
                    zones: usize::from(zones.unwrap_or(if static_keys { 1 } else { 2 })),
                    failover_kills: failover.unwrap_or(0),
                    json,
                    cloud,
                    leaves: usize::from(leaves),
                    dx: dx || cut_dx.is_some(),
                    dx_cuts: cut_dx.unwrap_or(0),
                    discovery,
                    kms,
                })
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
