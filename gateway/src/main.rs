//! The `meshgate` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use meshgate::esp::CipherSuite;
use meshgate::fleet::cli::Verb;

#[path = "main/commands.rs"]
mod commands;
use commands::{
    builtin_names, submit_order, transfer_secs, CaCmd, CertCmd, FleetArgs, KeysCmd, PolicyCmd,
};

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

/// POSTs to the control socket; prints the answer, fails unless 200.
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
