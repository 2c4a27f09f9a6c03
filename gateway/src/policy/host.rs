//! Running a policy component: wasmtime with the component model, a
//! memory bound (ResourceLimiter) and a time bound (epoch deadline) per
//! call, logging attributed to the module. An instance is reused across
//! evaluations and rebuilt from its `InstancePre` after a trap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_sdk as sdk;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::convert;

pub mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../sdk/wit",
    });
}

use bindings::meshgate::policy::types as wit;
use bindings::{Policy, PolicyImports, PolicyPre};

/// How often the epoch advances; call deadlines are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bounds on one policy call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: usize,
    pub call_timeout: Duration,
    /// Elements of any one table, and how many tables, memories and
    /// instances a policy may make: a module growing tables or
    /// instantiating without end is stopped like one eating memory.
    pub table_elements: usize,
    pub tables: usize,
    pub memories: usize,
    pub instances: usize,
    /// The largest module compiled, and how long compiling it may take.
    pub module_bytes: usize,
    pub compile_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_millis(100),
            table_elements: 100_000,
            tables: 16,
            memories: 4,
            instances: 32,
            module_bytes: super::source::MAX_MODULE_BYTES as usize,
            compile_timeout: Duration::from_secs(20),
        }
    }
}

/// Why a policy module was refused or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {name}: not a valid WebAssembly component: {reason}")]
    NotAComponent { name: String, reason: String },
    #[error("policy {name}: does not implement {}: {reason}", sdk::CONTRACT)]
    Contract { name: String, reason: String },
    /// Returned records that do not decode (a policy not built with the
    /// SDK, or a broken one).
    #[error("policy {name} ({hash}): malformed decisions: {reason}")]
    Malformed {
        name: String,
        hash: String,
        reason: String,
    },
    #[error("policy {name} ({hash}): {kind} in {call}: {reason}")]
    Trapped {
        name: String,
        hash: String,
        call: &'static str,
        kind: TrapKind,
        reason: String,
    },
}

/// How a call ended abnormally; the `kind` label of the traps counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// Ran past its time bound.
    Timeout,
    /// Asked for more memory than its bound.
    OutOfMemory,
    /// Any other trap (unreachable, panic, bad memory access, ...).
    Trap,
}

impl TrapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Timeout => "timeout",
            TrapKind::OutOfMemory => "out_of_memory",
            TrapKind::Trap => "trap",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy call may touch: its log and its limits.
pub struct HostState {
    module: String,
    limits: StoreLimits,
}

impl PolicyImports for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        let m = self.module.as_str();
        match level {
            wit::Level::Debug => tracing::debug!(policy = m, "{message}"),
            wit::Level::Info => tracing::info!(policy = m, "{message}"),
            wit::Level::Warn => tracing::warn!(policy = m, "{message}"),
            wit::Level::Error => tracing::error!(policy = m, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        crate::time::unix_ms()
    }
}

impl wit::Host for HostState {}

/// A store for one instance of policy `module`, within `limits`: memory,
/// tables (and their growth), memories and instances, and the call time.
fn new_store(engine: &Engine, module: &str, limits: &Limits) -> Store<HostState> {
    let state = HostState {
        module: module.to_string(),
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements)
            .tables(limits.tables)
            .memories(limits.memories)
            .instances(limits.instances)
            .trap_on_grow_failure(true)
            .build(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(ticks(limits.call_timeout));
    store
}

/// The wasmtime engine policies run in, with its epoch ticker.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    stop: Arc<AtomicBool>,
    /// Compiled components by content hash: loading the same module again
    /// (a reload that changes only parameters, or back to an earlier
    /// version) does not compile it again.
    compiled: std::sync::Mutex<std::collections::HashMap<String, Component>>,
    /// Where compiled components are kept across restarts, if anywhere.
    cache: Option<super::cache::DiskCache>,
}

impl PolicyEngine {
    pub fn new(limits: Limits) -> anyhow::Result<PolicyEngine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("mg-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(PolicyEngine {
            engine,
            linker,
            limits,
            stop,
            compiled: Default::default(),
            cache: None,
        })
    }

    /// Instantiates any component (text) in a policy's store, and calls its
    /// export `call` if named: how the tests reach the limits that no
    /// policy built with the SDK can (tables, instances, memories).
    #[cfg(test)]
    pub(crate) fn run_component(&self, wat: &str, call: Option<&str>) -> Result<(), String> {
        let bytes = wat::parse_str(wat).map_err(|e| e.to_string())?;
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        let mut store = new_store(&self.engine, "test", &self.limits);
        let linker: Linker<HostState> = Linker::new(&self.engine);
        let instance = linker
            .instantiate(&mut store, &component)
            .map_err(|e| format!("{e:#}"))?;
        if let Some(name) = call {
            let f = instance
                .get_typed_func::<(), ()>(&mut store, name)
                .map_err(|e| format!("{e:#}"))?;
            f.call(&mut store, ()).map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }

    /// Keeps compiled components in `dir` (created, mode 0700), so a
    /// restart loads them instead of compiling again.
    pub fn with_cache_dir(mut self, dir: std::path::PathBuf) -> PolicyEngine {
        match super::cache::DiskCache::open(dir.clone(), &self.engine) {
            Ok(c) => self.cache = Some(c),
            Err(e) => tracing::warn!("no policy cache at {}: {e}", dir.display()),
        }
        self
    }

    /// Compiles `bytes`, within the compile timeout: on a thread of its
    /// own, given up on (and left to finish unseen) past the deadline.
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component, PolicyError> {
        let (engine, owned) = (self.engine.clone(), bytes.to_vec());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("mg-compile".into())
            .spawn(move || {
                let _ = tx.send(Component::new(&engine, owned));
            })
            .map_err(|e| PolicyError::NotAComponent {
                name: name.into(),
                reason: format!("cannot start compiling: {e}"),
            })?;
        match rx.recv_timeout(self.limits.compile_timeout) {
            Ok(r) => r.map_err(|e| PolicyError::NotAComponent {
                name: name.into(),
                reason: brief(&e),
            }),
            Err(_) => Err(PolicyError::NotAComponent {
                name: name.into(),
                reason: format!(
                    "compiling took longer than {:?}",
                    self.limits.compile_timeout
                ),
            }),
        }
    }

    /// Compiles and links `bytes` as the policy `name`, checking that it is
    /// a component of our contract. Nothing runs yet.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<PolicyModule, PolicyError> {
        let started = Instant::now();
        if bytes.len() > self.limits.module_bytes {
            return Err(PolicyError::NotAComponent {
                name: name.into(),
                reason: format!(
                    "{} bytes, over the {} a policy module may have",
                    bytes.len(),
                    self.limits.module_bytes
                ),
            });
        }
        // A policy fresh from `cargo build --target wasm32-unknown-unknown`
        // is a core module carrying its WIT: make it a component here.
        let wrapped;
        let bytes = if bytes.starts_with(b"\0asm\x01\0\0\0") {
            wrapped = wit_component::ComponentEncoder::default()
                .module(bytes)
                .and_then(|e| e.validate(true).encode())
                .map_err(|e| PolicyError::NotAComponent {
                    name: name.into(),
                    reason: format!(
                        "a core module that cannot be made a policy component: {}",
                        e.root_cause()
                    ),
                })?;
            &wrapped[..]
        } else {
            bytes
        };
        let hash = hash_of(bytes);
        let cached = self
            .compiled
            .lock()
            .ok()
            .and_then(|c| c.get(&hash).cloned());
        let (component, origin) = match cached {
            Some(c) => (c, Origin::Memory),
            None => {
                let cached = self
                    .cache
                    .as_ref()
                    .and_then(|d| d.load(&self.engine, &hash));
                let (c, origin) = match cached {
                    Some(c) => (c, Origin::Disk),
                    None => {
                        let c = self.compile(name, bytes)?;
                        if let Some(d) = &self.cache {
                            d.store(&hash, &c);
                        }
                        (c, Origin::Compiled)
                    }
                };
                if let Ok(mut cache) = self.compiled.lock() {
                    cache.insert(hash.clone(), c.clone());
                }
                (c, origin)
            }
        };
        let compile_time = started.elapsed();
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PolicyError::Contract {
                name: name.into(),
                reason: format!("{e:#}"),
            })?;
        let pre = PolicyPre::new(pre).map_err(|e| PolicyError::Contract {
            name: name.into(),
            reason: format!("{e:#}"),
        })?;
        Ok(PolicyModule {
            name: name.into(),
            hash,
            size: bytes.len(),
            compile_time,
            origin,
            pre,
            instance: None,
            scratch: convert::empty_view(),
            limits: self.limits,
            engine: self.engine.clone(),
        })
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An error and its root cause on one line (wasmtime's causes can carry
/// multi-line dumps).
fn brief(e: &wasmtime::Error) -> String {
    let first_line = |s: String| s.lines().next().unwrap_or_default().to_string();
    let (top, root) = (
        first_line(e.to_string()),
        first_line(e.root_cause().to_string()),
    );
    if top == root || top.starts_with("error while executing") {
        root
    } else {
        format!("{top}: {root}")
    }
}

/// A short content hash naming a module version in logs and metrics.
pub fn hash_of(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a policy decided for one view.
pub use super::decisions::Decisions;

/// Where a loaded module's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// This engine's in-memory cache.
    Memory,
    /// The compile cache on disk (`<state_dir>/policy-cache`).
    Disk,
}

/// A loaded policy, ready to evaluate.
pub struct PolicyModule {
    pub name: String,
    pub hash: String,
    pub size: usize,
    pub compile_time: Duration,
    /// Where its machine code came from.
    pub origin: Origin,
    pre: PolicyPre<HostState>,
    instance: Option<(Store<HostState>, Policy)>,
    /// The view as last encoded, its buffers reused by the next evaluation.
    scratch: wit::View,
    limits: Limits,
    engine: Engine,
}

impl PolicyModule {
    fn instance(&mut self) -> Result<&mut (Store<HostState>, Policy), PolicyError> {
        if self.instance.is_none() {
            let mut store = new_store(&self.engine, &self.name, &self.limits);
            let policy = self
                .pre
                .instantiate(&mut store)
                .map_err(|e| self.trapped("instantiate", &e))?;
            self.instance = Some((store, policy));
        }
        Ok(self.instance.as_mut().expect("just set"))
    }

    fn trapped(&self, call: &'static str, e: &wasmtime::Error) -> PolicyError {
        let kind = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TrapKind::Timeout,
            _ if format!("{e:#}").contains("growing memory") => TrapKind::OutOfMemory,
            _ => TrapKind::Trap,
        };
        PolicyError::Trapped {
            name: self.name.clone(),
            hash: self.hash.clone(),
            call,
            kind,
            reason: brief(e),
        }
    }

    /// Runs `peers`, `routes` and `failover` on `view`. After a trap the
    /// instance is dropped and the next call starts a fresh one.
    pub fn evaluate(&mut self, view: &sdk::View) -> Result<Decisions, PolicyError> {
        convert::view_out(view, &mut self.scratch);
        let timeout = ticks(self.limits.call_timeout);
        self.instance()?;
        let (store, policy) = self.instance.as_mut().expect("instantiated above");
        match call_all(store, policy, &self.scratch, timeout) {
            Ok(d) => Decisions::from_wit(d).map_err(|e| PolicyError::Malformed {
                name: self.name.clone(),
                hash: self.hash.clone(),
                reason: e.to_string(),
            }),
            Err((call, e)) => {
                let err = self.trapped(call, &e);
                self.instance = None;
                Err(err)
            }
        }
    }

    /// Asks the policy when it wants to be evaluated again (its `on-timer`
    /// export), in milliseconds; `None` for no timer.
    pub fn on_timer(&mut self, view: &sdk::View) -> Result<Option<u32>, PolicyError> {
        convert::view_out(view, &mut self.scratch);
        let timeout = ticks(self.limits.call_timeout);
        self.instance()?;
        let (store, policy) = self.instance.as_mut().expect("instantiated above");
        call_on_timer(store, policy, &self.scratch, timeout).map_err(|(call, e)| {
            let err = self.trapped(call, &e);
            self.instance = None;
            err
        })
    }
}

fn call_on_timer(
    store: &mut Store<HostState>,
    policy: &Policy,
    view: &wit::View,
    timeout: u64,
) -> Result<Option<u32>, (&'static str, wasmtime::Error)> {
    store.set_epoch_deadline(timeout);
    policy
        .call_on_timer(&mut *store, view)
        .map_err(|e| ("on-timer", e))
}

fn call_all(
    store: &mut Store<HostState>,
    policy: &Policy,
    view: &wit::View,
    timeout: u64,
) -> Result<wit::Decisions, (&'static str, wasmtime::Error)> {
    store.set_epoch_deadline(timeout);
    policy
        .call_decide(&mut *store, view)
        .map_err(|e| ("decide", e))
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}
