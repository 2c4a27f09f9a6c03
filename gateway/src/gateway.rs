//! `meshgate run`: one gateway process, from config to running data plane.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::{Config, PolicySource};
use crate::dataplane::Dataplane;
use crate::esp::SaDefaults;
use crate::membership::liveness::LivenessSettings;
use crate::membership::Settings as MembershipSettings;
use crate::mesh;
use crate::metrics::Metrics;
use crate::policy::driver::PolicyHandle;
use crate::policy::runtime::PolicyRuntime;
use crate::policy::{self, Limits, PolicyEngine};
use crate::signal::node::{self, NodeConfig};
use crate::start::MeshStart;
use crate::tun::Tun;
use crate::tunnels::Tunnels;

/// The policy's kernel routes go into the TUN device.
impl crate::policy::runtime::KernelRoutes for Tun {
    fn name(&self) -> &str {
        Tun::name(self)
    }

    fn add_route(
        &self,
        prefix: &crate::prefix::Prefix,
    ) -> Result<(), crate::policy::runtime::RouteError> {
        match Tun::add_route(self, prefix) {
            // Another's route stays, and so do the rest of the tables: one
            // prefix unrouted, said, rather than every change refused.
            Err(e @ crate::tun::TunError::ForeignRoute { .. }) => {
                tracing::warn!("{e}");
                Ok(())
            }
            r => Ok(r?),
        }
    }

    fn del_route(
        &self,
        prefix: &crate::prefix::Prefix,
    ) -> Result<(), crate::policy::runtime::RouteError> {
        Ok(Tun::del_route(self, prefix)?)
    }
}

/// The modification time of `path`, if it can be read.
fn stamp(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watches the files the gateway runs from (polled each second: robust to
/// editors that replace files by renaming). A changed policy file is
/// reloaded; a changed config file has its `[policy] params` applied, which
/// re-evaluates the policy. A config that does not load is refused with
/// the reason and changes nothing. Never returns.
async fn watch_files(
    config_path: std::path::PathBuf,
    configured: crate::admin::ConfiguredPolicy,
    mut params: Vec<(String, String)>,
    policy: PolicyHandle,
) {
    let file_of = |source: &PolicySource| match source {
        PolicySource::File(p) => Some(p.clone()),
        PolicySource::Builtin(_) => None,
    };
    let mut module = configured
        .read()
        .map(|m| m.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let mut policy_path = file_of(&module);
    let mut config_stamp = stamp(&config_path);
    let mut policy_stamp = policy_path.as_deref().and_then(stamp);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(path) = &policy_path {
            let now = stamp(path);
            if now != policy_stamp && now.is_some() {
                policy_stamp = now;
                tracing::info!("{} changed; reloading the policy", path.display());
                if policy.request_reload(None).is_err() {
                    return;
                }
            }
        }
        let now = stamp(&config_path);
        if now == config_stamp || now.is_none() {
            continue;
        }
        config_stamp = now;
        match Config::load(&config_path) {
            Err(e) => tracing::warn!("config changed but is refused, nothing changes: {e:#}"),
            // Another module configured: it becomes the one reloads load.
            Ok(new) if new.policy.module != module => {
                module = new.policy.module.clone();
                tracing::info!(
                    "{} changed; loading the policy it configures now, {module}",
                    config_path.display()
                );
                if let Ok(mut c) = configured.write() {
                    *c = module.clone();
                }
                policy_path = file_of(&module);
                policy_stamp = policy_path.as_deref().and_then(stamp);
                if policy.request_reload(Some(module.clone())).is_err() {
                    return;
                }
            }
            Ok(new) if new.policy.params != params => {
                tracing::info!(
                    "{} changed; new policy parameters, re-evaluating (other changes take effect on restart)",
                    config_path.display()
                );
                params = new.policy.params.clone();
                let update = new.policy.params.clone();
                let _ = policy.send(policy::driver::PolicyEvent::new(
                    policy::schedule::Trigger::Config,
                    move |view| view.params = update,
                ));
            }
            Ok(_) => tracing::info!(
                "{} changed; the policy parameters did not (other changes take effect on restart)",
                config_path.display()
            ),
        }
    }
}

/// Socket buffers sized for bursts of a few thousand full-size packets.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Runs the gateway described by `config_path` until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let metrics = Arc::new(Metrics::new(&config.id));
    let mesh_start = match &config.signal {
        Some(s) => Some(MeshStart::load(&config, s)?),
        None => None,
    };
    let tun = Arc::new(Tun::create(&config.tun.name)?);
    tun.configure(config.tun.mtu, &config.tun.addresses)?;
    // The policy decides the routes before any packet moves; a policy that
    // fails or answers nonsense stops the start (fail closed). A mesh
    // member starts alone in its view; membership fills it in.
    let view = crate::start::first_view(&config, mesh_start.as_ref());
    let (mut runtime, tables) = PolicyRuntime::start(
        PolicyEngine::new(Limits::default())?.with_cache_dir(config.state_dir.join("policy-cache")),
        config.policy.module.clone(),
        view,
        metrics.clone(),
        tun.clone(),
        mesh_start.as_ref().map(|m| m.slots.clone()),
    )
    .map_err(|e| config.origin.error("policy.module", format!("{e:#}")))?;
    tracing::info!(policy = %runtime.name(), hash = %runtime.hash(), routes = tables.prefixes.len(), "policy in force");
    for prefix in &tables.prefixes {
        tun.add_route(prefix)
            .with_context(|| format!("routing {prefix} into {}", config.tun.name))?;
    }
    let tables = Arc::new(arc_swap::ArcSwap::from_pointee(tables));
    runtime.attach(tables.clone());
    let socket = UdpSocket::bind(config.listen)
        .with_context(|| format!("binding the ESP-in-UDP socket {}", config.listen))?;
    set_buffers(&socket);
    let (notices, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    // Configured peers' keys are pre-shared secrets: their SAs come from
    // sessions keyed afresh at every start (`keys::session`), over hellos
    // on the ESP socket.
    let (hello_tx, hello_rx) = tokio::sync::mpsc::channel(crate::sessions::QUEUED_HELLOS);
    let session_socket = socket
        .try_clone()
        .context("a handle on the ESP-in-UDP socket for session hellos")?;
    let session_peers: Vec<crate::sessions::SessionPeer> = config
        .peers
        .iter()
        .enumerate()
        .map(|(slot, p)| crate::sessions::SessionPeer {
            slot,
            id: p.id.clone(),
            endpoint: p.endpoint,
            outbound: p.outbound.clone(),
            inbound: p.inbound.clone(),
        })
        .collect();
    let mut dataplane_settings = config.dataplane();
    dataplane_settings.hellos = Some(hello_tx);
    // Mesh members probe each other's underlays through the ESP socket.
    let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(crate::underlay::task::QUEUED_PROBES);
    let probe_socket = socket
        .try_clone()
        .context("a handle on the ESP-in-UDP socket for underlay probes")?;
    if mesh_start.is_some() {
        dataplane_settings.by_magic = vec![(*crate::underlay::message::MAGIC, probe_tx)];
    }
    let dataplane = Dataplane::start(
        &dataplane_settings,
        tun,
        socket,
        &metrics,
        tables,
        mesh_start.as_ref().map(|_| notices),
    )?;
    // Said once the admin listener, the control socket and the signalling
    // socket are bound too (below): a start that fails never says it.
    let (id, listen, tun_name, peer_count, is_member) = (
        config.id.clone(),
        config.listen,
        config.tun.name.clone(),
        config.peers.len(),
        mesh_start.is_some(),
    );
    let identity = crate::status::Identity {
        id: config.id.clone(),
        region: config.placement.region.clone(),
        zone: Some(config.placement.zone.clone()).filter(|z| !z.is_empty()),
        role: config.placement.role.as_str().into(),
        mode: if mesh_start.is_some() {
            "mesh"
        } else {
            "configured"
        },
        tun: config.tun.name.clone(),
        mtu: config.tun.mtu,
        listen: config.listen,
        endpoints: config
            .labelled_endpoints()
            .into_iter()
            .map(|(label, address)| crate::status::Endpoint { label, address })
            .collect(),
        offloads: dataplane.offloads(),
        configured_peers: config
            .peers
            .iter()
            .map(|p| (p.id.clone(), p.endpoint))
            .collect(),
        started: std::time::SystemTime::now(),
    };
    // Echoes find a peer's slot as the tables do: a configured peer's is
    // its place in the config, a member's the mesh's.
    let pinger = {
        let configured: Vec<String> = config.peers.iter().map(|p| p.id.clone()).collect();
        let slots = mesh_start.as_ref().map(|m| m.slots.clone());
        crate::ping::Pinger::new(
            dataplane.control().outbound,
            dataplane.echo_waiters(),
            Box::new(move |id: &str| match &slots {
                Some(s) => s.lock().ok()?.find(id),
                None => configured.iter().position(|p| p == id),
            }),
        )
    };
    let sa_defaults = config.sa.clone();
    // The sessions hold the pre-shared keys now; the config's are wiped.
    drop(dataplane_settings);
    let admin = config.admin;
    let listeners = crate::admin::Listeners {
        admin,
        control: config.control.path.clone(),
        control_group: config.control.group.clone(),
    };
    let configured = crate::admin::ConfiguredPolicy::new(config.policy.module.clone().into());
    let params = config.policy.params.clone();
    // Route claims on the cloud follow the policy's failover decisions.
    let cloud = config.cloud.clone().map(|c| {
        (
            c,
            config.placement.group.clone().unwrap_or_default(),
            runtime.watch_claim(),
        )
    });
    if mesh_start.is_some() {
        runtime.settle_for(crate::claims::CLAIM_SETTLE);
    }
    drop(config);
    // The peers the policy connects are the ones the member keys.
    let mut peer_ids = runtime.watch_peers();
    // And the underlay each is reached over is the policy's choice.
    let mut underlays = runtime.watch_underlays();
    // The policy engine runs on a thread of its own; membership and health
    // events from the signalling layer, configuration changes from the
    // file watch and reloads from the admin API reach it by channel.
    let (policy, engine) = policy::driver::spawn(
        runtime,
        metrics.clone(),
        policy::schedule::Settings::default(),
    )
    .context("starting the policy engine's thread")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let result = rt.block_on(async {
        let (node_commands, node_command_rx) = tokio::sync::mpsc::unbounded_channel();
        let member_list = mesh::MemberList::default();
        let started = mesh_start.map(|m| {
            start_member(
                m,
                sa_defaults,
                notice_rx,
                &dataplane,
                (
                    policy.clone(),
                    node_command_rx,
                    node_commands.clone(),
                    member_list.clone(),
                ),
                (probe_socket, probe_rx),
                metrics.clone(),
            )
        });
        let (mut member, signal_bound) = match started {
            Some((task, bound)) => (Some(task), Some(bound)),
            None => (None, None),
        };
        let node_commands = member.as_ref().map(|_| node_commands);
        if let Some(node) = node_commands.clone() {
            tokio::spawn(advertise_updates(node.clone(), policy.clone()));
            let to_node = node.clone();
            tokio::spawn(async move {
                loop {
                    let ids = peer_ids.borrow_and_update().clone();
                    if to_node.send(node::NodeCommand::Peers(ids)).is_err()
                        || peer_ids.changed().await.is_err()
                    {
                        return;
                    }
                }
            });
            let chosen = crate::metrics::gauge_vec(
                metrics.registry(),
                "meshgate_peer_underlay",
                "1 for the underlay (endpoint label) the policy sends each peer's ESP over.",
                &["peer", "underlay"],
            );
            tokio::spawn(async move {
                loop {
                    let map = underlays.borrow_and_update().clone();
                    chosen.reset();
                    for (peer, label) in &map {
                        chosen.with_label_values(&[peer, label]).set(1);
                    }
                    if node.send(node::NodeCommand::Underlays(map)).is_err()
                        || underlays.changed().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
        // (Its status is for the admin API's GET /cloud.)
        let cloud_status =
            cloud.map(|(c, group, claim)| crate::claims::start(c, group, claim, metrics.clone()));
        if !session_peers.is_empty() {
            tokio::spawn(crate::sessions::run(
                session_peers,
                hello_rx,
                session_socket,
                dataplane.control(),
                metrics.clone(),
            ));
        }
        let admin_bound = crate::admin::Bound::bind(&listeners)
            .await
            .context("the admin listener or the control socket")?;
        if let Some(bound) = signal_bound {
            match bound.await {
                Ok(addr) => tracing::info!(%addr, "signalling channel listening"),
                // The member stopped before it listened: its error says why.
                Err(_) => {
                    return match member.take() {
                        Some(task) => member_outcome(task.await),
                        None => Err(anyhow::anyhow!("the signalling member stopped")),
                    }
                }
            }
        }
        tracing::info!(
            %id,
            %listen,
            tun = %tun_name,
            peers = peer_count,
            mesh = is_member,
            "gateway up"
        );
        let member = async {
            match member {
                Some(task) => member_outcome(task.await),
                None => std::future::pending().await,
            }
        };
        let listener = crate::admin::serve(
            admin_bound,
            crate::admin::ThisGateway { identity, pinger },
            configured.clone(),
            metrics.clone(),
            policy.clone(),
            node_commands.clone().map(|n| (n, member_list.clone())),
            cloud_status,
        );
        let watcher = watch_files(config_path.to_path_buf(), configured, params, policy);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let watchdog = async {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                if dataplane.has_failed() {
                    return "the data plane stopped (see the errors above)";
                }
                if engine.is_finished() {
                    return "the policy engine stopped (see the errors above)";
                }
            }
        };
        tokio::select! {
            r = listener => r.with_context(|| format!("admin listener {admin} or control socket")),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
            why = watchdog => Err(anyhow::anyhow!(why)),
            _ = watcher => Ok(()),
            r = member => r,
        }
    });
    tracing::info!("shutting down");
    dataplane.stop();
    result
}

/// What the signalling member's task ended with.
fn member_outcome(
    r: Result<Result<(), crate::signal::transport::TransportError>, tokio::task::JoinError>,
) -> Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the signalling member stopped")),
        Err(e) => Err(anyhow::anyhow!("the signalling member failed: {e}")),
    }
}

/// How often this member measures its load for its record.
const LOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A change in load smaller than this (permille) is not worth a new record.
const LOAD_STEP: u32 = 50;

/// Keeps this member's record current: its policy version (checked each
/// second, so a reload shows within one), and its load (the process's CPU
/// time over the last [`LOAD_EVERY`], in permille of the machine's cores)
/// when it moves by [`LOAD_STEP`].
async fn advertise_updates(
    node: tokio::sync::mpsc::UnboundedSender<node::NodeCommand>,
    policy: PolicyHandle,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let (mut last_cpu, mut last_at) = (mesh::cpu_time(), std::time::Instant::now());
    let (mut advertised_load, mut advertised_hash) = (0u32, String::new());
    loop {
        tick.tick().await;
        let (mut load_permille, mut policy_version) = (None, None);
        let hash = policy.in_force().hash.clone();
        if hash != advertised_hash {
            policy_version = Some(mesh::policy_version(&hash));
            advertised_hash = hash;
        }
        let (cpu, at) = (mesh::cpu_time(), std::time::Instant::now());
        let wall = at.duration_since(last_at);
        if wall >= LOAD_EVERY {
            let used = cpu.saturating_sub(last_cpu).as_secs_f64();
            let load = ((used / wall.as_secs_f64() / cores) * 1000.0).clamp(0.0, 1000.0) as u32;
            if load.abs_diff(advertised_load) >= LOAD_STEP {
                load_permille = Some(load);
                advertised_load = load;
            }
            (last_cpu, last_at) = (cpu, at);
        }
        if load_permille.is_some() || policy_version.is_some() {
            let update = node::NodeCommand::Update {
                load_permille,
                policy_version,
            };
            if node.send(update).is_err() {
                return;
            }
        }
    }
}

/// Starts the signalling member and the task that joins it to the data
/// plane and the policy; returns the member's task, and where it listens
/// once bound.
fn start_member(
    m: MeshStart,
    sa: SaDefaults,
    notices: tokio::sync::mpsc::UnboundedReceiver<crate::dataplane::SaNotice>,
    dataplane: &Dataplane,
    (policy, node_rx, node_tx, list): (
        PolicyHandle,
        tokio::sync::mpsc::UnboundedReceiver<node::NodeCommand>,
        tokio::sync::mpsc::UnboundedSender<node::NodeCommand>,
        mesh::MemberList,
    ),
    (probe_socket, probe_rx): (UdpSocket, tokio::sync::mpsc::Receiver<Vec<u8>>),
    metrics: Arc<Metrics>,
) -> (
    tokio::task::JoinHandle<Result<(), crate::signal::transport::TransportError>>,
    tokio::sync::oneshot::Receiver<std::net::SocketAddr>,
) {
    let (node_events, node_event_rx) = tokio::sync::mpsc::unbounded_channel();
    let (bound, bound_rx) = tokio::sync::oneshot::channel();
    metrics.mesh.epoch.set(i64::from(m.signal.keys.epoch));
    let discovery = discovery_of(&m, &metrics);
    // The underlay prober: keys from the tunnels' SAs, members from
    // membership, the paths it measures into the policy's view.
    let probe_keys = crate::underlay::SharedProbeKeys::default();
    let paths = crate::underlay::task::SharedPaths::default();
    let (members_tx, members_rx) = tokio::sync::watch::channel(Vec::new());
    let labels = m.local.endpoints.iter().map(|(l, _)| l.clone()).collect();
    let link = crate::underlay::task::Link {
        socket: probe_socket,
        datagrams: probe_rx,
        members: members_rx,
        keys: probe_keys.clone(),
        paths: paths.clone(),
        on_change: {
            let policy = policy.clone();
            Box::new(move |paths| {
                let (now, now_ms) = (std::time::Instant::now(), crate::time::unix_ms());
                let _ = policy.send(policy::driver::PolicyEvent::new(
                    policy::schedule::Trigger::Membership,
                    move |view| crate::underlay::task::apply(view, &paths, now, now_ms),
                ));
            })
        },
    };
    tokio::spawn(crate::underlay::task::run(link, labels, metrics.clone()));
    let suite = sa.suite;
    let mut tunnels = Tunnels::new(sa, crate::tunnels::GRACE, m.slots);
    tunnels.share_probe_keys(probe_keys);
    let kms = m.kms.map(|k| k.spawn(node_tx, metrics.clone()));
    let cfg = NodeConfig {
        kms,
        creds: m.creds,
        listen: m.signal.listen,
        discovery,
        info: m.local.clone(),
        settings: MembershipSettings {
            max_members: m.signal.max_members,
            forget_down_after: m.signal.forget_down_after,
            ..MembershipSettings::default()
        },
        liveness: Some(LivenessSettings::default()),
        keys: Some((m.keys, m.signal.keys.epoch, suite)),
        tunnels: Some(node::TunnelLink {
            tunnels,
            dataplane: dataplane.control(),
            notices,
        }),
    };
    let underlay = mesh::UnderlayLink {
        paths,
        members: members_tx,
    };
    tokio::spawn(mesh::run(
        m.local,
        node_event_rx,
        policy,
        metrics,
        (list, Some(underlay)),
    ));
    (
        tokio::spawn(node::run(cfg, node_events, node_rx, bound)),
        bound_rx,
    )
}

/// Where the member finds others to join through: the config's seeds, and
/// the mesh's EC2 instances if `[signal.discovery]` says so.
fn discovery_of(
    m: &MeshStart,
    metrics: &Arc<Metrics>,
) -> Arc<dyn crate::signal::discovery::Discovery> {
    #[cfg(feature = "aws")]
    if let Some(d) = &m.signal.discovery {
        return Arc::new(
            crate::cloud::discovery::Ec2Tags::new(
                d.clone(),
                &m.local.id,
                m.signal.seeds.clone(),
                crate::config::DEFAULT_SIGNAL_PORT,
            )
            .with_metrics(metrics.clone()),
        );
    }
    #[cfg(not(feature = "aws"))]
    let _ = metrics;
    Arc::new(crate::signal::discovery::StaticSeeds(
        m.signal.seeds.clone(),
    ))
}

/// Sizes the socket buffers past `net.core.[rw]mem_max` where we may
/// (SO_*BUFFORCE needs CAP_NET_ADMIN, which the TUN already required), and
/// says what the kernel actually granted.
fn set_buffers(socket: &UdpSocket) {
    for (force, plain, name) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        let set = |opt| {
            // SAFETY: setsockopt with a c_int value on our own socket.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCKET_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
            }
        };
        if !set(force) && !set(plain) {
            tracing::warn!(
                "cannot size the socket {name} buffer: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut got: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int we own.
        if unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                plain,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        } == 0
            && got < SOCKET_BUFFER
        {
            tracing::warn!(
                "socket {name} buffer is {got} bytes, less than the {SOCKET_BUFFER} asked for"
            );
        }
    }
}
