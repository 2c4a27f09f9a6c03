//! The lab's gateways as processes: started, waited for, scraped, killed
//! and stopped, and the lab taken down on drop or on a signal.

use super::*;

impl Lab {
    /// Starts `binary run` in every appliance and waits until each serves
    /// its health check and has keyed a session with each configured peer.
    pub fn start_gateways(&mut self, binary: &Path) -> Result<()> {
        for g in 0..self.gateway_count() {
            self.start_gateway(binary, g)?;
        }
        for g in 0..self.gateway_count() {
            self.wait_ready(g, Duration::from_secs(10))?;
        }
        for g in 0..self.gateway_count() {
            self.wait_sessions(g, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Waits until gateway `i` has keyed a session with every configured
    /// peer (mesh members have none).
    pub fn wait_sessions(&self, i: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let text = self.metrics(i).unwrap_or_default();
            if crate::metrics::sum_samples(&text, "meshgate_sessions", "state=\"waiting\"") == 0.0 {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "gateway {} keyed no session with some configured peer within {timeout:?}:\n{}",
                    i + 1,
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway of region `i` (without waiting for it).
    pub fn start_gateway(&mut self, binary: &Path, i: usize) -> Result<()> {
        // Appended: a gateway restarted in the lab keeps its earlier log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let child = self
            .gateway_ns(i)
            .command(&binary.to_string_lossy())
            .args(["run", "--config"])
            .arg(self.config_path(i))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.cloud_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        if self.gateways.len() <= i {
            self.gateways.resize_with(i + 1, || None);
        }
        self.gateways[i] = Some(child);
        Ok(())
    }

    /// The environment of a gateway that calls the lab's AWS: the keys
    /// the SDK's default chain reads (as an appliance reads its role's).
    fn cloud_env(&self) -> Vec<(&'static str, &'static str)> {
        #[cfg(feature = "aws")]
        if self.moto.is_some() {
            let (key, secret) = super::moto::LAB_CREDENTIALS;
            return vec![
                ("AWS_ACCESS_KEY_ID", key),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ];
        }
        Vec::new()
    }

    /// Waits until gateway `i` answers its health check.
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(Some(child)) = self.gateways.get_mut(i) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "gateway {} exited ({status}) at start:\n{}",
                        i + 1,
                        self.log_tail(i)
                    );
                }
            }
            if probe::http_get(self.gateway_ns(i), self.admin_addr(i), "/healthz").is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "gateway {} not ready after {timeout:?}:\n{}",
                    i + 1,
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of gateway `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The Prometheus text of gateway `i`.
    pub fn metrics(&self, i: usize) -> Result<String> {
        probe::http_get(self.gateway_ns(i), self.admin_addr(i), "/metrics")
    }

    /// Waits until every gateway (mesh members) sees all the others alive
    /// and its SAs have settled (the same for half a second: the policy
    /// decides how many there are); returns how long it took.
    pub fn wait_mesh(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let others = self.gateway_count() as f64 - 1.0;
        let (mut last, mut since) = (Vec::new(), Instant::now());
        loop {
            let mut now_sas = Vec::new();
            let mut all_alive = true;
            for i in 0..self.gateway_count() {
                let text = self.metrics(i).unwrap_or_default();
                let sum = |name, filter| crate::metrics::sum_samples(&text, name, filter);
                all_alive &= sum("meshgate_members", "state=\"alive\"") == others;
                now_sas.push(sum("meshgate_sa_info", "direction=\"out\"") as u64);
            }
            let keyed = all_alive && now_sas.iter().all(|&n| n > 0);
            if !keyed || now_sas != last {
                (last, since) = (now_sas, Instant::now());
            } else if since.elapsed() >= Duration::from_millis(500) {
                return Ok(start.elapsed().saturating_sub(Duration::from_millis(500)));
            }
            if start.elapsed() > timeout {
                bail!(
                    "the mesh did not form within {timeout:?}:\n{}",
                    (0..self.gateway_count())
                        .map(|i| format!("--- gateway {}:\n{}", i + 1, self.log_tail(i)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills gateway `i` with SIGKILL: no goodbye, no clean-up, as a
    /// crashed or powered-off appliance.
    pub fn kill_gateway(&mut self, i: usize) {
        if let Some(Some(mut child)) = self.gateways.get_mut(i).map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops gateway `i`: SIGTERM, then SIGKILL after two seconds.
    pub fn stop_gateway(&mut self, i: usize) {
        if let Some(Some(mut child)) = self.gateways.get_mut(i).map(Option::take) {
            stop_child(&mut child);
        }
    }
}

fn stop_child(child: &mut Child) {
    // SAFETY: kill on a pid we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.gateways.len() {
            self.stop_gateway(i);
        }
        // Regions and the underlay delete their namespaces as they drop.
        let failed = self.keep_on_failure && !self.finished && !INTERRUPTED.load(Ordering::SeqCst);
        if failed {
            eprintln!(
                "meshgate lab: it failed; its configs and logs are kept in {}",
                self.dir.display()
            );
        } else if std::env::var_os("MESHGATE_LAB_KEEP_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Set by SIGINT/SIGTERM while a lab runs; checked between steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`interrupted`] so the lab can clean up.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Fails if the lab was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
