//! The Linux TUN device that carries inner packets.
//!
//! Opened without the packet-information header (IFF_NO_PI) and with a
//! virtio_net_hdr before every packet (IFF_VNET_HDR), so the kernel can
//! hand us TCP super-packets (TSO) and take coalesced ones (GRO): each read
//! returns one header and one packet, each write takes one. Addresses, MTU,
//! link state and routes are set with iproute2, as wg-quick does, so what
//! the gateway changes is exactly what an operator would type and see.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use crate::prefix::Prefix;

const TUN_PATH: &str = "/dev/net/tun";
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("{TUN_PATH} is missing: load the tun module (modprobe tun) or give the container the device")]
    NoDevice,
    #[error("opening {TUN_PATH} needs CAP_NET_ADMIN (run as root)")]
    NotPermitted,
    #[error("{TUN_PATH} is not open to this user (mode {mode:o}, owner uid {owner}): a service user needs CAP_NET_ADMIN and the device open to all (mode 666, as udev makes it on Debian); or run as root")]
    NoAccess { mode: u32, owner: u32 },
    #[error("opening {TUN_PATH}: {0}")]
    Open(io::Error),
    #[error("creating TUN interface {name}: {err}")]
    Create { name: String, err: io::Error },
    #[error("`ip {args}` failed: {msg}")]
    Ip { args: String, msg: String },
    #[error("a route for {prefix} that meshgate did not install is in the main table ({route}); left as it is, and {prefix} is not routed into {tun}")]
    ForeignRoute {
        prefix: Prefix,
        route: String,
        tun: String,
    },
}

/// The routing protocol number that marks the routes the gateway installs
/// (`proto 147` in `ip route`): it replaces and removes only those, never
/// a route an operator or another daemon put there.
pub const ROUTE_PROTO: &str = "147";

/// A route for exactly `prefix` in the host's main table that this
/// gateway did not install into `dev` (`meshgate check` asks too: the
/// gateway would leave it and not route `prefix`).
pub fn foreign_route(prefix: &Prefix, dev: &str) -> Result<Option<String>, TunError> {
    let p = prefix.to_string();
    let family = if prefix.is_ipv4() { "-4" } else { "-6" };
    let existing = ip_output(&[family, "route", "show", "exact", &p, "table", "main"])?;
    Ok(existing
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !installed_by_us(l, dev))
        .map(str::to_string))
}

/// Whether a line of `ip route show` is a route this gateway installed
/// into `dev`.
fn installed_by_us(line: &str, dev: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1]);
    after("dev") == Some(dev) && after("proto") == Some(ROUTE_PROTO)
}

/// An open TUN interface. The fd is shared by the data-plane threads; a
/// read and a write on it never conflict.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name`.
    pub fn create(name: &str) -> Result<Tun, TunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TunError::NoDevice,
                // Root with CAP_NET_ADMIN is not refused by the mode; a
                // service user is, whatever its capabilities.
                io::ErrorKind::PermissionDenied => match std::fs::metadata(TUN_PATH) {
                    Ok(m) if effective_uid() != 0 => {
                        use std::os::unix::fs::MetadataExt;
                        TunError::NoAccess {
                            mode: m.mode() & 0o7777,
                            owner: m.uid(),
                        }
                    }
                    _ => TunError::NotPermitted,
                },
                _ => TunError::Open(e),
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(TunError::Create {
                name: name.into(),
                err: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) => TunError::NotPermitted,
                _ => TunError::Create {
                    name: name.into(),
                    err,
                },
            });
        }
        Ok(Tun {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the kernel for TCP segmentation offload: reads may then return
    /// super-packets of up to 64 KiB with partial checksums, which the
    /// data plane segments itself.
    pub fn enable_offload(&self) -> io::Result<()> {
        let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Sets the MTU and addresses and brings the link up.
    pub fn configure(&self, mtu: u16, addresses: &[Prefix]) -> Result<(), TunError> {
        ip(&["link", "set", "dev", &self.name, "mtu", &mtu.to_string()])?;
        // No IPv6 link-local address and no multicast: the tunnel carries
        // only routed unicast, and the kernel's router solicitations and MLD
        // reports would otherwise show up as `no_route` drops.
        ip(&[
            "link",
            "set",
            "dev",
            &self.name,
            "addrgenmode",
            "none",
            "multicast",
            "off",
        ])?;
        for a in addresses {
            ip(&["addr", "replace", &a.to_string(), "dev", &self.name])?;
        }
        ip(&["link", "set", "dev", &self.name, "up"])
    }

    /// Routes `prefix` into this device (idempotent), unless a route for
    /// exactly `prefix` that the gateway did not install is there.
    pub fn add_route(&self, prefix: &Prefix) -> Result<(), TunError> {
        if let Some(route) = foreign_route(prefix, &self.name)? {
            return Err(TunError::ForeignRoute {
                prefix: *prefix,
                route,
                tun: self.name.clone(),
            });
        }
        let p = prefix.to_string();
        ip(&[
            "route",
            "replace",
            &p,
            "dev",
            &self.name,
            "proto",
            ROUTE_PROTO,
        ])
    }

    /// Removes the route for `prefix` into this device, if the gateway
    /// installed it.
    pub fn del_route(&self, prefix: &Prefix) -> Result<(), TunError> {
        let p = prefix.to_string();
        ip(&["route", "del", &p, "dev", &self.name, "proto", ROUTE_PROTO])
    }

    /// Reads one virtio_net_hdr and packet; `Ok(0)` never happens for a live TUN.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one virtio_net_hdr and packet.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is valid for packet.len() bytes.
        let n = unsafe { libc::write(self.fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Switches the fd between blocking and non-blocking reads.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.fd(), on)
    }
}

pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `ip ARGS`, turning a failure into an error that quotes the command.
pub fn ip(args: &[&str]) -> Result<(), TunError> {
    ip_output(args).map(drop)
}

/// Runs `ip ARGS` and returns what it printed.
fn ip_output(args: &[&str]) -> Result<String, TunError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| TunError::Ip {
            args: args.join(" "),
            msg: format!("cannot run ip (is iproute2 installed?): {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TunError::Ip {
            args: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// This process's effective user id.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
