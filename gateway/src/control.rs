//! The control socket: where an operator's changes (policy reloads, key
//! epochs) reach a running gateway. A Unix socket, as strongSwan's vici
//! is: the file is mode 0600 (0660 with the group the config names), and
//! each connection's peer credentials are checked again on accept (root,
//! the gateway's own user, or a member of that group), so a local user who
//! is none of these gets no answer at all. The TCP admin listener keeps
//! only what reads.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};

/// The id of the group `name`, if the host has one.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only
    // into `group`, `buf` (of the length given) and `found`.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

/// Who may use the socket.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    owner: u32,
    group: Option<u32>,
}

impl Access {
    /// Root, the user `owner`, and members of `group`.
    pub fn new(owner: u32, group: Option<u32>) -> Access {
        Access { owner, group }
    }

    /// Whether a peer with these credentials may: its primary group, or
    /// one of its supplementary groups (read from /proc; a peer gone
    /// meanwhile is refused).
    pub fn permits(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.owner {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
    }
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// A listener on the control socket that hands on only the connections
/// whose peer [`Access`] permits.
pub struct ControlListener {
    inner: UnixListener,
    access: Access,
    path: PathBuf,
    refused: u64,
    last_said: Option<Instant>,
}

/// How often a refusal is logged at most (each is counted).
const SAY_EVERY: Duration = Duration::from_secs(10);

impl ControlListener {
    /// Binds `path` (replacing a stale socket there, never another kind of
    /// file) with mode 0600, or 0660 and group `group`.
    pub fn bind(path: &Path, group: Option<u32>) -> io::Result<ControlListener> {
        let context = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(|e| context("removing the stale socket", e))?
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not replacing it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(context("inspecting", e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| context("making the directory of", e))?;
        }
        let inner = UnixListener::bind(path).map_err(|e| context("binding", e))?;
        // Until this chmod, a connection is still refused on accept.
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| context("setting the mode of", e))?;
        if let Some(g) = group {
            std::os::unix::fs::chown(path, None, Some(g))
                .map_err(|e| context("setting the group of", e))?;
        }
        // SAFETY: geteuid has no preconditions.
        let owner = unsafe { libc::geteuid() };
        Ok(ControlListener {
            inner,
            access: Access::new(owner, group),
            path: path.to_path_buf(),
            refused: 0,
            last_said: None,
        })
    }

    fn refuse(&mut self, who: &str) {
        self.refused += 1;
        if self.last_said.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
            self.last_said = Some(Instant::now());
            tracing::warn!(
                "control socket {}: refused a connection from {who} (not root, this gateway's user or a member of gateway.control_group); {} refused in all",
                self.path.display(),
                self.refused
            );
        }
    }
}

impl axum::serve::Listener for ControlListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait, as axum does.
                    tracing::warn!("control socket {}: accept: {e}", self.path.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(c) if self.access.permits(c.uid(), c.gid(), c.pid()) => return (stream, addr),
                Ok(c) => self.refuse(&format!("uid {} (pid {:?})", c.uid(), c.pid())),
                Err(_) => self.refuse("a peer without credentials"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One HTTP/1.0 exchange over `stream`: the status and the body. `to`
/// names the far side in errors.
/// The header every answer of the admin listener and the control socket
/// carries (the gateway's version), so a client can tell when something
/// other than meshgate answers there.
pub const SIGNATURE: &str = "x-meshgate";

/// One request to meshgate's admin listener or control socket: the
/// status and the body; an answer without [`SIGNATURE`] is refused as
/// something else's.
pub fn exchange(
    stream: impl Read + Write,
    to: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    exchange_in(stream, to, (method, path, body), Format::Text)
}

/// What a request asks the answer to be: text for a person, or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn json(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Text
        }
    }

    fn accept(self) -> &'static str {
        match self {
            Format::Text => "text/plain",
            Format::Json => "application/json",
        }
    }
}

/// As [`exchange`], asking for the answer in `format`.
pub fn exchange_in(
    stream: impl Read + Write,
    to: &str,
    (method, path, body): (&str, &str, &str),
    format: Format,
) -> anyhow::Result<(u16, String)> {
    let (status, ours, body) = send(stream, to, (method, path, body), format)?;
    if !ours {
        anyhow::bail!(
            "something other than meshgate answers at {to} (HTTP {status}): give the address of gateway.admin (--admin), or the path of gateway.control (--control)"
        );
    }
    Ok((status, body))
}

/// One HTTP/1.0 request to any server (the lab asks Prometheus too): the
/// status, whether meshgate answered, and the body.
pub fn exchange_any(
    stream: impl Read + Write,
    to: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, bool, String)> {
    send(stream, to, (method, path, body), Format::Text)
}

fn send(
    mut stream: impl Read + Write,
    to: &str,
    (method, path, body): (&str, &str, &str),
    format: Format,
) -> anyhow::Result<(u16, bool, String)> {
    let unanswered = || {
        anyhow::anyhow!("{to} closed the connection without an answer (on the control socket: this user may not use it)")
    };
    let cut = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    };
    let sent = write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: meshgate\r\nAccept: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        format.accept(),
        body.len()
    );
    let mut resp = String::new();
    match sent.and_then(|()| stream.read_to_string(&mut resp)) {
        Err(e) if cut(&e) => return Err(unanswered()),
        Err(e) => return Err(e.into()),
        Ok(_) if resp.is_empty() => return Err(unanswered()),
        Ok(_) => {}
    }
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response from {to}: is it meshgate?"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP status from {to}: is it meshgate?"))?;
    let ours = head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(SIGNATURE))
    });
    Ok((status, ours, body.to_string()))
}

/// A request to the control socket at `socket`: the status and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    request_in(socket, (method, path, body), Format::Text)
}

/// As [`request`], asking for the answer in `format`.
pub fn request_in(
    socket: &Path,
    (method, path, body): (&str, &str, &str),
    format: Format,
) -> anyhow::Result<(u16, String)> {
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "{}: permission denied; the control socket is for root and the members of the group gateway.control_group names",
            socket.display()
        ),
        _ => anyhow::anyhow!(
            "cannot reach the gateway's control socket {}: {e} (is the gateway running, with gateway.control set to this path?)",
            socket.display()
        ),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange_in(
        stream,
        &format!("the control socket {}", socket.display()),
        (method, path, body),
        format,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_use_the_socket() {
        let a = Access::new(1000, None);
        assert!(a.permits(0, 0, None));
        assert!(a.permits(1000, 1000, None));
        assert!(!a.permits(1001, 1000, None));
        let a = Access::new(0, Some(4242));
        assert!(a.permits(1001, 4242, None));
        assert!(!a.permits(1001, 1001, None));
        // A peer whose pid cannot be read has no supplementary groups.
        assert!(!a.permits(1001, 1001, Some(i32::MAX)));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
