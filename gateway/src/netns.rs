//! Network namespaces for the lab and the integration tests.
//!
//! A [`Netns`] deletes itself when dropped, so a lab or a test that fails
//! half-way leaves nothing behind. Code runs inside a namespace on a
//! dedicated thread ([`Netns::run`]): `setns` changes only the calling
//! thread, and sockets keep the namespace they were created in.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether dropping this handle deletes the namespace.
    owned: bool,
}

impl Netns {
    /// Creates `name` (deleting a stale namespace of that name first) with
    /// its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that is not deleted on drop.
    pub fn attach(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl inside the namespace, from a child process under
    /// `ip netns exec` so the write lands where `sysctl` would show it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self
            .command("sh")
            .args(["-c", "echo \"$1\" > \"$2\"", "sysctl", value, &path])
            .output()
            .with_context(|| format!("setting {key} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "setting {key}={value} in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let handle = std::thread::spawn(move || -> io::Result<T> {
            // SAFETY: setns on a namespace fd we hold open; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r.with_context(|| format!("entering namespace {}", self.name)),
            Err(_) => bail!("a task in namespace {} panicked", self.name),
        }
    }

    /// Starts `f` on a thread inside the namespace without waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<io::Result<T>>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(std::thread::spawn(move || -> io::Result<T> {
            // SAFETY: as in `run`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Connects `a` and `b` with a veth pair named `a_if` in `a` and `b_if` in `b`.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])
}

/// Checks what the lab and the namespace tests need, naming what is missing.
pub fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root: it creates network namespaces, veth pairs and TUN devices (try: sudo meshgate lab)");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: load the tun module (modprobe tun) or give the container the device");
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("the `ip` command (iproute2) is missing; install iproute2");
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
