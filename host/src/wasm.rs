//! The WebAssembly policy engine: components of the `netlet:policy` worlds
//! (`wasm-policies/wit/policy.wit`) run under wasmtime.
//!
//! - One [`wasmtime::Engine`] with the pooling allocator (copy-on-write memory images), epoch
//!   interruption and the component model; no WASI, and the linker holds nothing but the world's
//!   `log` import.
//! - Each module is compiled once and pre-linked ([`dns::DnsPolicyPre`] /
//!   [`hostname::HostnameGrantPre`]); every call instantiates it afresh from the pool in a new
//!   store, so no state survives between calls, and runs it synchronously under an epoch deadline
//!   (1 ms by default) and a memory limit ([`StoreLimits`]).
//! - A trap, the deadline, the memory limit or an answer out of bounds is a [`Failure`], counted
//!   per module and kind; the caller applies its failure verdict.
//! - Modules are named by file and may be pinned by sha256: a file whose digest differs from its
//!   pin is not loaded (the module keeps what it had, or stays unavailable). [`Modules::reload`]
//!   swaps a changed file in; calls already running keep the instance they started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder, Trap,
};

/// Bindings of the `dns-policy` world.
pub mod dns {
    wasmtime::component::bindgen!({
        path: "../wasm-policies/wit",
        world: "dns-policy",
        additional_derives: [PartialEq, Eq],
    });
}

/// Bindings of the `hostname-grant` world (types and `log` shared with [`dns`]).
pub mod hostname {
    wasmtime::component::bindgen!({
        path: "../wasm-policies/wit",
        world: "hostname-grant",
        with: {
            "netlet:policy/types": super::dns::netlet::policy::types,
            "netlet:policy/log": super::dns::netlet::policy::log,
        },
    });
}

use dns::netlet::policy::log::Level;
pub use dns::netlet::policy::types::{
    DenyCode, DnsDecision, DnsQuery, DnsVerdict, HostnameDecision, HostnameRequest, Label,
    PodIdentity,
};

/// Longest reason a module may give (the world says 512 bytes).
pub const MAX_REASON: usize = 512;
/// Log lines a module may write per call; more are dropped and counted.
const MAX_LOG_LINES: usize = 8;
/// Longest log line kept; longer ones are cut.
const MAX_LOG_LINE: usize = 512;

/// Engine limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline of one call (instantiation included).
    pub deadline: Duration,
    /// Linear memory one call may use, in bytes.
    pub memory: usize,
    /// Calls that may run at once (pool slots).
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(1),
            memory: 16 << 20,
            instances: 256,
        }
    }
}

/// Which world a module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `netlet:policy/dns-policy`.
    DnsPolicy,
    /// `netlet:policy/hostname-grant`.
    HostnameGrant,
}

impl World {
    /// The world's name as WIT writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            World::DnsPolicy => "dns-policy",
            World::HostnameGrant => "hostname-grant",
        }
    }
}

/// Why a call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No module of that name is configured.
    #[error("module {0:?} is not configured")]
    Unknown(String),
    /// The module is configured but not loaded (file missing, digest mismatch, compile error).
    #[error("module {name:?} is not loaded: {why}")]
    NotLoaded {
        /// Module.
        name: String,
        /// Why.
        why: String,
    },
    /// The module implements the other world.
    #[error("module {name:?} implements {world}, not {wanted}")]
    WrongWorld {
        /// Module.
        name: String,
        /// Its world.
        world: &'static str,
        /// The world asked for.
        wanted: &'static str,
    },
    /// The epoch deadline passed.
    #[error("deadline of {0:?} exceeded")]
    Deadline(Duration),
    /// The memory limit was reached.
    #[error("memory limit of {0} bytes reached")]
    MemoryLimit(usize),
    /// The module trapped (or could not be instantiated).
    #[error("trap: {0}")]
    Trap(String),
    /// The answer is out of bounds (reason too long, rewrite not a DNS name).
    #[error("bad output: {0}")]
    BadOutput(String),
}

impl Failure {
    /// The counter this failure goes to.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Unknown(_) | Failure::NotLoaded { .. } | Failure::WrongWorld { .. } => {
                "unavailable"
            }
            Failure::Deadline(_) => "deadline",
            Failure::MemoryLimit(_) => "memory",
            Failure::Trap(_) => "trap",
            Failure::BadOutput(_) => "bad_output",
        }
    }
}

/// How a module is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// Name policies use.
    pub name: String,
    /// The component file.
    pub path: PathBuf,
    /// Expected sha256 (hex) of the file; `None` accepts any.
    pub sha256: Option<String>,
    /// Fail open (allow) when the module fails; default closed.
    pub fail_open: bool,
}

/// Per-module counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls made (validate-settings excluded).
    pub calls: AtomicU64,
    /// Allow answers (DNS allow, hostname allowed).
    pub allow: AtomicU64,
    /// Deny answers.
    pub deny: AtomicU64,
    /// Rewrite answers.
    pub rewrite: AtomicU64,
    /// Failures by kind.
    pub deadline: AtomicU64,
    /// Memory-limit failures.
    pub memory: AtomicU64,
    /// Traps.
    pub trap: AtomicU64,
    /// Bad outputs.
    pub bad_output: AtomicU64,
    /// Calls to a module that was not loaded.
    pub unavailable: AtomicU64,
    /// Log lines dropped (over the per-call budget).
    pub logs_dropped: AtomicU64,
    /// Reloads that swapped a new file in.
    pub reloads: AtomicU64,
}

impl Counters {
    fn failure(&self, f: &Failure) {
        let c = match f.kind() {
            "deadline" => &self.deadline,
            "memory" => &self.memory,
            "trap" => &self.trap,
            "bad_output" => &self.bad_output,
            _ => &self.unavailable,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Failures of every kind.
    pub fn failures(&self) -> u64 {
        [
            &self.deadline,
            &self.memory,
            &self.trap,
            &self.bad_output,
            &self.unavailable,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// A module's state as `netletctl` shows it.
#[derive(Debug, Clone)]
pub struct ModuleStatus {
    /// Configuration.
    pub spec: ModuleSpec,
    /// World of the loaded file.
    pub world: Option<World>,
    /// Digest of the loaded file (hex).
    pub sha256: Option<String>,
    /// When it was loaded.
    pub loaded_at: Option<SystemTime>,
    /// The last load error; empty when the file on disk is the one loaded.
    pub error: String,
}

enum Pre {
    Dns(dns::DnsPolicyPre<CallState>),
    Hostname(hostname::HostnameGrantPre<CallState>),
}

/// A compiled, pre-linked module.
struct Loaded {
    pre: Pre,
    world: World,
    sha256: String,
    loaded_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(FileStamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

struct Entry {
    spec: ModuleSpec,
    loaded: RwLock<Option<Arc<Loaded>>>,
    error: Mutex<String>,
    /// Stamp of the last file seen (loaded or refused), so a refused file is not re-read each poll.
    seen: Mutex<Option<FileStamp>>,
    counters: Counters,
}

/// What one call's store holds.
struct CallState {
    limits: StoreLimits,
    memory_limit_hit: bool,
    logs: Vec<(Level, String)>,
    logs_dropped: u64,
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if !ok {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_limit_hit = true;
        Err(wasmtime::Error::msg("memory limit reached"))
    }
}

impl dns::netlet::policy::log::Host for CallState {
    fn log(&mut self, level: Level, mut message: String) {
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs_dropped += 1;
            return;
        }
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.logs.push((level, message));
    }
}

impl dns::netlet::policy::types::Host for CallState {}

/// The engine and the configured modules.
pub struct Modules {
    engine: Engine,
    linker: Linker<CallState>,
    limits: Limits,
    deadline_ticks: u64,
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
    ticker: Arc<Ticker>,
}

/// Advances the engine's epoch while calls are being made; parks after a second without one.
struct Ticker {
    tick: Duration,
    last_call: AtomicU64,
    parked: AtomicBool,
    thread: Mutex<Option<std::thread::Thread>>,
    stop: AtomicBool,
    start: Instant,
}

impl Ticker {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_call.store(self.now_ms(), Ordering::Relaxed);
        if self.parked.load(Ordering::Acquire)
            && let Some(t) = self.thread.lock().unwrap().as_ref()
        {
            t.unpark();
        }
    }
}

impl Drop for Modules {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::Release);
        if let Some(t) = self.ticker.thread.lock().unwrap().as_ref() {
            t.unpark();
        }
    }
}

impl Modules {
    /// An engine with these limits and no modules.
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances * 2)
            .total_memories(limits.instances * 2)
            .total_tables(limits.instances * 2)
            .max_memory_size(limits.memory.max(1 << 20) * 2)
            .max_core_instances_per_component(8)
            .max_memories_per_component(4)
            .max_tables_per_component(4)
            // A call dirties a few pages of its slot (stack, heap); resetting them with memset
            // beats giving them back to the kernel and faulting them in again on the next call.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            // Where the kernel can say which pages a call dirtied (PAGEMAP_SCAN, Linux 6.7),
            // only those are reset.
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        dns::netlet::policy::log::add_to_linker::<CallState, HasSelf<CallState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linker: {e}"))?;
        // Four ticks per deadline: a call is stopped between 1 and 1.25 deadlines after it began.
        let tick = (limits.deadline / 4).max(Duration::from_micros(50));
        let deadline_ticks = limits.deadline.as_nanos().div_ceil(tick.as_nanos()) as u64 + 1;
        let ticker = Arc::new(Ticker {
            tick,
            last_call: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            thread: Mutex::new(None),
            stop: AtomicBool::new(false),
            start: Instant::now(),
        });
        let t = ticker.clone();
        let e = engine.clone();
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !t.stop.load(Ordering::Acquire) {
                    if t.now_ms()
                        .saturating_sub(t.last_call.load(Ordering::Relaxed))
                        > 1000
                    {
                        t.parked.store(true, Ordering::Release);
                        std::thread::park_timeout(Duration::from_secs(1));
                        t.parked.store(false, Ordering::Release);
                    } else {
                        std::thread::sleep(t.tick);
                    }
                    e.increment_epoch();
                }
            })?;
        *ticker.thread.lock().unwrap() = Some(handle.thread().clone());
        Ok(Modules {
            engine,
            linker,
            limits,
            deadline_ticks,
            entries: RwLock::new(BTreeMap::new()),
            ticker,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets the configured modules: new ones are loaded, changed ones reloaded, missing ones
    /// dropped. Returns the load errors (module name, why); a module that fails to load is still
    /// configured (calls to it fail as unavailable) and is retried by [`Modules::reload`].
    pub fn configure(&self, specs: Vec<ModuleSpec>) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut next = BTreeMap::new();
        let current = self.entries.read().unwrap().clone();
        for spec in specs {
            let entry = match current.get(&spec.name) {
                Some(e) if e.spec == spec => e.clone(),
                _ => Arc::new(Entry {
                    spec: spec.clone(),
                    loaded: RwLock::new(None),
                    error: Mutex::new("not loaded yet".into()),
                    seen: Mutex::new(None),
                    counters: Counters::default(),
                }),
            };
            next.insert(spec.name.clone(), entry);
        }
        *self.entries.write().unwrap() = next;
        for (name, why) in self.reload() {
            errors.push((name, why));
        }
        errors
    }

    /// Loads every module whose file changed since it was last read (all of them the first
    /// time). Returns the errors of this pass. Calls keep being answered throughout: the new
    /// module replaces the old one only once it is compiled and linked.
    pub fn reload(&self) -> Vec<(String, String)> {
        let entries: Vec<Arc<Entry>> = self.entries.read().unwrap().values().cloned().collect();
        let mut errors = Vec::new();
        for entry in entries {
            let st = match stamp(&entry.spec.path) {
                Ok(s) => s,
                Err(e) => {
                    let why = format!("{}: {e}", entry.spec.path.display());
                    *entry.error.lock().unwrap() = why.clone();
                    *entry.seen.lock().unwrap() = None;
                    errors.push((entry.spec.name.clone(), why));
                    continue;
                }
            };
            if entry.seen.lock().unwrap().as_ref() == Some(&st) {
                continue;
            }
            *entry.seen.lock().unwrap() = Some(st.clone());
            match self.load(&entry.spec) {
                Ok(loaded) => {
                    let had = entry
                        .loaded
                        .write()
                        .unwrap()
                        .replace(Arc::new(loaded))
                        .is_some();
                    if had {
                        entry.counters.reloads.fetch_add(1, Ordering::Relaxed);
                    }
                    entry.error.lock().unwrap().clear();
                    tracing::info!(module = %entry.spec.name, reloaded = had, "wasm module loaded");
                }
                Err(why) => {
                    tracing::warn!(module = %entry.spec.name, %why, "wasm module not loaded");
                    *entry.error.lock().unwrap() = why.clone();
                    errors.push((entry.spec.name.clone(), why));
                }
            }
        }
        errors
    }

    fn load(&self, spec: &ModuleSpec) -> Result<Loaded, String> {
        let bytes =
            std::fs::read(&spec.path).map_err(|e| format!("{}: {e}", spec.path.display()))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        if let Some(pin) = &spec.sha256
            && !pin.eq_ignore_ascii_case(&sha256)
        {
            return Err(format!(
                "{}: sha256 {sha256} is not the pinned {pin}",
                spec.path.display()
            ));
        }
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| format!("{}: refused: {e:#}", spec.path.display()))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!(
                "{}: imports beyond the world's `log`: {e:#}",
                spec.path.display()
            )
        })?;
        let (pre, world) = match dns::DnsPolicyPre::new(pre.clone()) {
            Ok(p) => (Pre::Dns(p), World::DnsPolicy),
            Err(dns_err) => match hostname::HostnameGrantPre::new(pre) {
                Ok(p) => (Pre::Hostname(p), World::HostnameGrant),
                Err(_) => {
                    return Err(format!(
                        "{}: implements neither dns-policy nor hostname-grant: {dns_err:#}",
                        spec.path.display()
                    ));
                }
            },
        };
        let loaded = Loaded {
            pre,
            world,
            sha256,
            loaded_at: SystemTime::now(),
        };
        // Instantiate once now: a module that cannot be instantiated within the limits (memory
        // it asks for up front, say) is refused at load, not on the first query.
        let mut store = self.store();
        let inst = match &loaded.pre {
            Pre::Dns(p) => p.instantiate(&mut store).map(drop),
            Pre::Hostname(p) => p.instantiate(&mut store).map(drop),
        };
        inst.map_err(|e| {
            format!(
                "{}: cannot be instantiated: {}",
                spec.path.display(),
                self.classify(e, &store)
            )
        })?;
        Ok(loaded)
    }

    fn store(&self) -> Store<CallState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory)
            .instances(8)
            .tables(8)
            .memories(4)
            .trap_on_grow_failure(false)
            .build();
        let mut store = Store::new(
            &self.engine,
            CallState {
                limits,
                memory_limit_hit: false,
                logs: Vec::new(),
                logs_dropped: 0,
            },
        );
        store.limiter(|s| s);
        store.set_epoch_deadline(self.deadline_ticks);
        store
    }

    fn classify(&self, e: wasmtime::Error, store: &Store<CallState>) -> Failure {
        if store.data().memory_limit_hit {
            return Failure::MemoryLimit(self.limits.memory);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Deadline(self.limits.deadline),
            Some(t) => Failure::Trap(t.to_string()),
            None => Failure::Trap(format!("{e:#}")),
        }
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, Failure> {
        self.entries
            .read()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| Failure::Unknown(name.into()))
    }

    fn loaded(&self, entry: &Entry, wanted: World) -> Result<Arc<Loaded>, Failure> {
        let Some(l) = entry.loaded.read().unwrap().clone() else {
            return Err(Failure::NotLoaded {
                name: entry.spec.name.clone(),
                why: entry.error.lock().unwrap().clone(),
            });
        };
        if l.world != wanted {
            return Err(Failure::WrongWorld {
                name: entry.spec.name.clone(),
                world: l.world.as_str(),
                wanted: wanted.as_str(),
            });
        }
        Ok(l)
    }

    /// Whether the module fails open; `None` for an unknown module.
    pub fn fails_open(&self, name: &str) -> Option<bool> {
        self.entry(name).ok().map(|e| e.spec.fail_open)
    }

    /// The digest of the module's loaded file.
    pub fn sha256(&self, name: &str) -> Option<String> {
        let e = self.entry(name).ok()?;
        let l = e.loaded.read().unwrap().clone()?;
        Some(l.sha256.clone())
    }

    /// Asks the module whether `settings` are acceptable: `Ok(Err(why))` when the module says
    /// no, `Err` when it could not answer.
    pub fn validate_settings(
        &self,
        name: &str,
        world: World,
        settings: &str,
    ) -> Result<Result<(), String>, Failure> {
        let entry = self.entry(name)?;
        let loaded = self.loaded(&entry, world)?;
        self.ticker.touch();
        let mut store = self.store();
        let r = match &loaded.pre {
            Pre::Dns(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_validate_settings(&mut store, settings)),
            Pre::Hostname(p) => p
                .instantiate(&mut store)
                .and_then(|i| i.call_validate_settings(&mut store, settings)),
        };
        self.emit_logs(&entry, &mut store);
        let r = r.map_err(|e| self.classify(e, &store))?;
        if let Err(why) = &r
            && why.len() > MAX_REASON
        {
            return Err(Failure::BadOutput(format!(
                "settings error of {} bytes",
                why.len()
            )));
        }
        Ok(r)
    }

    /// Decides one DNS query with the module.
    pub fn check_dns(
        &self,
        name: &str,
        settings: &str,
        query: &DnsQuery,
    ) -> Result<DnsDecision, Failure> {
        let entry = self.entry(name)?;
        entry.counters.calls.fetch_add(1, Ordering::Relaxed);
        let r = self.loaded(&entry, World::DnsPolicy).and_then(|loaded| {
            let Pre::Dns(pre) = &loaded.pre else {
                unreachable!("world checked")
            };
            self.ticker.touch();
            let mut store = self.store();
            let r = pre
                .instantiate(&mut store)
                .and_then(|i| i.call_check_dns(&mut store, settings, query));
            self.emit_logs(&entry, &mut store);
            let d = r.map_err(|e| self.classify(e, &store))?;
            check_dns_output(&d)?;
            Ok(d)
        });
        match &r {
            Ok(d) => match d.verdict {
                DnsVerdict::Allow => &entry.counters.allow,
                DnsVerdict::Deny(_) => &entry.counters.deny,
                DnsVerdict::Rewrite(_) => &entry.counters.rewrite,
            }
            .fetch_add(1, Ordering::Relaxed),
            Err(f) => {
                entry.counters.failure(f);
                0
            }
        };
        r
    }

    /// Decides one hostname request with the module.
    pub fn check_hostname(
        &self,
        name: &str,
        settings: &str,
        request: &HostnameRequest,
    ) -> Result<HostnameDecision, Failure> {
        let entry = self.entry(name)?;
        entry.counters.calls.fetch_add(1, Ordering::Relaxed);
        let r = self
            .loaded(&entry, World::HostnameGrant)
            .and_then(|loaded| {
                let Pre::Hostname(pre) = &loaded.pre else {
                    unreachable!("world checked")
                };
                self.ticker.touch();
                let mut store = self.store();
                let r = pre
                    .instantiate(&mut store)
                    .and_then(|i| i.call_check_hostname(&mut store, settings, request));
                self.emit_logs(&entry, &mut store);
                let d = r.map_err(|e| self.classify(e, &store))?;
                if d.reason.len() > MAX_REASON {
                    return Err(Failure::BadOutput(format!(
                        "reason of {} bytes",
                        d.reason.len()
                    )));
                }
                Ok(d)
            });
        match &r {
            Ok(d) if d.allowed => entry.counters.allow.fetch_add(1, Ordering::Relaxed),
            Ok(_) => entry.counters.deny.fetch_add(1, Ordering::Relaxed),
            Err(f) => {
                entry.counters.failure(f);
                0
            }
        };
        r
    }

    fn emit_logs(&self, entry: &Entry, store: &mut Store<CallState>) {
        let data = store.data_mut();
        for (level, line) in data.logs.drain(..) {
            let module = entry.spec.name.as_str();
            match level {
                Level::Debug => tracing::debug!(module, "{line}"),
                Level::Info => tracing::info!(module, "{line}"),
                Level::Warn => tracing::warn!(module, "{line}"),
            }
        }
        if data.logs_dropped > 0 {
            entry
                .counters
                .logs_dropped
                .fetch_add(data.logs_dropped, Ordering::Relaxed);
        }
    }

    /// Status of every configured module, by name.
    pub fn status(&self) -> Vec<(ModuleStatus, Arc<dyn AsCounters>)> {
        self.entries
            .read()
            .unwrap()
            .values()
            .map(|e| {
                let l = e.loaded.read().unwrap().clone();
                let status = ModuleStatus {
                    spec: e.spec.clone(),
                    world: l.as_ref().map(|l| l.world),
                    sha256: l.as_ref().map(|l| l.sha256.clone()),
                    loaded_at: l.as_ref().map(|l| l.loaded_at),
                    error: e.error.lock().unwrap().clone(),
                };
                (status, e.clone() as Arc<dyn AsCounters>)
            })
            .collect()
    }
}

/// Reloads changed module files every second until `stop`.
pub async fn watch(modules: Arc<Modules>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = modules.clone();
        let _ = tokio::task::spawn_blocking(move || m.reload()).await;
    }
}

/// Access to a module's counters.
pub trait AsCounters: Send + Sync {
    /// The counters.
    fn counters(&self) -> &Counters;
}

impl AsCounters for Entry {
    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// Checks what a policy object says of its module: `module` configured with `world`, and
/// `settings` (JSON; empty is `{}`) accepted by its `validate-settings`. The error names the
/// field at fault (`module` or `module_settings_json`) and why. A module configured but not
/// loaded now passes: the policy is taken, and its failure verdict applies until it loads.
pub fn check_policy_module(
    modules: &Modules,
    module: &str,
    world: World,
    settings: &str,
) -> Result<(), (&'static str, String)> {
    if module.is_empty() {
        if !settings.is_empty() {
            return Err(("module_settings_json", "settings without a module".into()));
        }
        return Ok(());
    }
    let settings = if settings.is_empty() { "{}" } else { settings };
    match modules.validate_settings(module, world, settings) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(("module_settings_json", why)),
        Err(f @ Failure::Unknown(_)) | Err(f @ Failure::WrongWorld { .. }) => {
            Err(("module", f.to_string()))
        }
        Err(_) => Ok(()),
    }
}

/// Whether a module's DNS answer is within what the world allows.
fn check_dns_output(d: &DnsDecision) -> Result<(), Failure> {
    if d.reason.len() > MAX_REASON {
        return Err(Failure::BadOutput(format!(
            "reason of {} bytes",
            d.reason.len()
        )));
    }
    if let DnsVerdict::Rewrite(name) = &d.verdict
        && let Err(why) = check_dns_name(name)
    {
        return Err(Failure::BadOutput(format!("rewrite target: {why}")));
    }
    Ok(())
}

/// A fully qualified DNS name a resolver can ask for: labels of 1-63 letters, digits, `-` or
/// `_`, at most 253 characters without the trailing dot.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 {
        return Err(format!("{} characters (1-253)", n.len()));
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label of {} characters (1-63)", label.len()));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label {label:?} has characters outside [a-zA-Z0-9-_]"
            ));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}
