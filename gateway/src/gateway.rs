//! `meshgate run`: one gateway process, from config to running data plane.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::{Config, PolicySource};
use crate::dataplane::Dataplane;
use crate::metrics::Metrics;
use crate::policy::runtime::PolicyRuntime;
use crate::policy::{self, Limits, PolicyEngine};
use crate::tun::Tun;

/// Reloads the policy when its file changes (polled each second: robust
/// to editors that replace files by renaming). Never returns.
async fn watch_policy_file(
    path: Option<std::path::PathBuf>,
    runtime: Arc<std::sync::Mutex<PolicyRuntime>>,
) {
    let Some(path) = path else {
        return std::future::pending().await;
    };
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now != last && now.is_some() {
            last = now;
            tracing::info!("{} changed; reloading the policy", path.display());
            if let Ok(mut r) = runtime.lock() {
                let _ = r.reload();
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Socket buffers sized for bursts of a few thousand full-size packets.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Runs the gateway described by `config_path` until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let metrics = Arc::new(Metrics::new(&config.id));
    let tun = Arc::new(Tun::create(&config.tun.name)?);
    tun.configure(config.tun.mtu, &config.tun.addresses)?;
    // The policy decides the routes before any packet moves; a policy that
    // fails or answers nonsense stops the start (fail closed).
    let view = policy::view::from_config(&config, now_ms());
    let (mut runtime, tables) = PolicyRuntime::start(
        PolicyEngine::new(Limits::default())?.with_cache_dir(config.state_dir.join("policy-cache")),
        config.policy.module.clone(),
        view,
        metrics.clone(),
        tun.clone(),
    )?;
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
    let dataplane = Dataplane::start(&config, tun, socket, &metrics, tables)?;
    tracing::info!(
        id = %config.id,
        listen = %config.listen,
        tun = %config.tun.name,
        peers = config.peers.len(),
        "gateway up"
    );
    // The SAs hold their own copies of the keys now; the config's are wiped.
    let admin = config.admin;
    let watched = match &config.policy.module {
        PolicySource::File(p) => Some(p.clone()),
        PolicySource::Builtin(_) => None,
    };
    drop(config);
    let runtime = Arc::new(std::sync::Mutex::new(runtime));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let result = rt.block_on(async {
        let listener = crate::admin::serve(admin, metrics.clone(), runtime.clone());
        let watcher = watch_policy_file(watched, runtime.clone());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let watchdog = async {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            while !dataplane.has_failed() {
                tick.tick().await;
            }
        };
        tokio::select! {
            r = listener => r.with_context(|| format!("admin listener {admin}")),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
            _ = watchdog => Err(anyhow::anyhow!("the data plane stopped (see the errors above)")),
            _ = watcher => Ok(()),
        }
    });
    tracing::info!("shutting down");
    dataplane.stop();
    result
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
