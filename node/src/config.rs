//! Configuration: where the node keeps its files, the daemon's options, and parsers
//! for human-readable sizes and durations.
//!
//! Two phases (STYLE.md 8). Raw: [`NodeOptions`] is both the `peergrid node` flags
//! and the `peergrid.toml` file (one struct, so every flag can be set in the file);
//! parsing only validates. Resolved: `NodeOptions::resolve` (in [`crate::settings`])
//! derives every default into a `NodeConfig`, each subsystem's part by that
//! subsystem's own rules. This module imports no subsystem. `example.config.toml`
//! documents every option.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

pub use crate::files::{random_bytes, write_private_file};

/// The directory a node owns: identity, config, token, store, caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `--data-dir` / `PEERGRID_DATA_DIR` when given, else the platform's data
    /// directory (`~/.local/share/peergrid` on Linux), else `./.peergrid`.
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        let root = flag
            .or_else(|| dirs::data_dir().map(|d| d.join("peergrid")))
            .unwrap_or_else(|| PathBuf::from(".peergrid"));
        Self { root }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where compiled modules are cached.
    pub fn module_cache(&self) -> PathBuf {
        self.root.join("cache").join("modules")
    }

    /// The content-addressed blob directory.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The node's libp2p identity key (owner-only).
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// The control API's token (owner-only).
    pub fn api_token(&self) -> PathBuf {
        self.root.join("api-token")
    }

    /// Where a running node writes its control API address.
    pub fn api_info(&self) -> PathBuf {
        self.root.join("api.json")
    }

    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("peergrid.sqlite")
    }

    /// The config file.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("peergrid.toml")
    }

    /// The measured fuel speed, kept across restarts (`sandbox::calibration`).
    pub fn fuel_speed(&self) -> PathBuf {
        self.root.join("fuel-speed.json")
    }

    /// A manual pause and preferences changed at run time (`peergrid pause`,
    /// `peergrid prefs`), kept across restarts.
    pub fn volunteer_state(&self) -> PathBuf {
        self.root.join("volunteer.json")
    }

    /// Held (locked) by the running node, so two cannot share a data dir.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("node.lock")
    }
}

/// The default control API address.
pub const DEFAULT_API: &str = "127.0.0.1:7947";
/// The default metrics address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// Options of `peergrid node`, from flags or from `peergrid.toml` in the data dir
/// (same names, kebab-case). A flag overrides the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeOptions {
    /// Address to listen on for peers, as a multiaddr; repeat for several.
    /// [default: /ip4/0.0.0.0/tcp/7946 and /ip4/0.0.0.0/udp/7946/quic-v1]
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// A peer to join the grid through (e.g. /ip4/1.2.3.4/tcp/7946/p2p/12D3…);
    /// repeat for several.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Do not discover peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// CPU cores to lend (one chunk slot per core); 0 lends nothing (a node that
    /// only submits). [default: all cores]
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Use at most this share of the machine's cores, in percent (1-100); with
    /// --cpus, the smaller wins. [default: 100]
    #[arg(long, value_name = "PERCENT")]
    pub max_cpu_percent: Option<u8>,
    /// Compute only this share of the time, in percent (1-100): chunks run in a duty
    /// cycle, so the machine stays cool and quiet. [default: 100]
    #[arg(long, value_name = "PERCENT")]
    pub cpu_time_percent: Option<u8>,
    /// Suspend while programs other than peergrid use more than this share of the
    /// machine's CPU, in percent; 0 never suspends for that. [default: 0]
    #[arg(long, value_name = "PERCENT")]
    pub suspend_above_percent: Option<u8>,
    /// Work only during these hours, local time, e.g. 22:00-07:00 (a window may run
    /// over midnight), or "always". [default: always]
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub active_hours: Option<String>,
    /// Lend every slot even when other programs keep cores busy (by default the
    /// worker lends only the cores other programs leave spare).
    #[arg(long)]
    pub lend_when_busy: bool,
    /// How often other programs' CPU use is measured, e.g. 1s. [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub cpu_sample_interval: Option<String>,
    /// A chunk paused longer than this (the machine busy, outside the active hours,
    /// paused by hand) is handed back so its submitter runs it elsewhere. [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub withdraw_after: Option<String>,
    /// Most memory one chunk may use, e.g. 512MiB. [default: 512MiB]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Most memory all running chunks may use together, e.g. 2GiB, or "off"; it
    /// bounds the chunks run at once to this / --memory. [default: off]
    #[arg(long, value_name = "SIZE")]
    pub memory_total: Option<String>,
    /// Most disk space the blob cache (modules, inputs, outputs) may use, e.g.
    /// 10GiB, "auto" (10 % of the free disk at start, at most 4GiB) or "off"; least
    /// recently used blobs are evicted, never those of this node's own jobs or
    /// results not yet delivered. [default: auto]
    #[arg(long, value_name = "SIZE")]
    pub blob_cache: Option<String>,
    /// Free disk space never used by fetching blobs, e.g. 1GiB: a blob that would
    /// leave less is not fetched (and the log says so). [default: 1GiB]
    #[arg(long, value_name = "SIZE")]
    pub min_free_disk: Option<String>,
    /// Most disk space compiled modules may use (DATA_DIR/modules), e.g. 512MiB;
    /// least recently used go first. [default: 512MiB]
    #[arg(long, value_name = "SIZE")]
    pub compile_cache: Option<String>,
    /// Most fuel one chunk of another peer's job may ask for (e.g. 500G), or "auto":
    /// five minutes' worth at this machine's measured speed, at least the 100G a
    /// default job asks for. An offer over it is refused with this maximum.
    /// [default: auto]
    #[arg(long, value_name = "FUEL")]
    pub max_fuel: Option<String>,
    /// Longest wall-clock timeout one chunk may ask for, e.g. 10m. [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub max_timeout: Option<String>,
    /// Largest output one chunk may ask to return, e.g. 16MiB. [default: 16MiB]
    #[arg(long, value_name = "SIZE")]
    pub max_output: Option<String>,
    /// Most undelivered results kept for one submitter; beyond it that submitter's
    /// offers are refused until it takes them. [default: 2000]
    #[arg(long, value_name = "N")]
    pub outbox_results_per_submitter: Option<u64>,
    /// Most bytes of undelivered results (large outputs included) kept for one
    /// submitter, e.g. 256MiB. [default: 64MiB]
    #[arg(long, value_name = "SIZE")]
    pub outbox_bytes_per_submitter: Option<String>,
    /// Undelivered results older than this are dropped, e.g. 1d. [default: 1d]
    #[arg(long, value_name = "DURATION")]
    pub outbox_expiry: Option<String>,
    /// While another submitter waits for a slot, one submitter may hold at most this
    /// share of the chunks this node takes, in percent (1-100). [default: 50]
    #[arg(long, value_name = "PERCENT")]
    pub submitter_share: Option<u32>,
    /// Control API address (127.0.0.1 only), or "off". [default: 127.0.0.1:7947]
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Prometheus /metrics address, or "off". [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// How often the capacity advert is re-sent to subscribers when nothing changed,
    /// e.g. 60s. [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub advert_interval: Option<String>,
    /// How long a peer's advert counts after it stops advertising. [default: 3 ×
    /// the advert interval]
    #[arg(long, value_name = "DURATION")]
    pub advert_ttl: Option<String>,
    /// Two replicas of one chunk never go to peers in the same IPv4 network of this
    /// prefix length (0: no rule). [default: 24]
    #[arg(long, value_name = "BITS")]
    pub placement_ipv4_prefix: Option<u8>,
    /// The same for IPv6. [default: 48]
    #[arg(long, value_name = "BITS")]
    pub placement_ipv6_prefix: Option<u8>,
    /// Two replicas of one chunk also never go to peers found the same way (mDNS,
    /// bootstrap, DHT, inbound).
    #[arg(long)]
    pub placement_distinct_discovery: bool,
    /// Most connections to other peers, in and out. [default: 256]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Most connections other peers open to this node; the rest of
    /// --max-connections is kept for this node's own dials, so strangers cannot
    /// take every slot. [default: 3/4 of --max-connections]
    #[arg(long, value_name = "N")]
    pub max_inbound: Option<u32>,
    /// Most inbound connections from one IP address (127.0.0.1 and ::1 are not
    /// counted). [default: 4]
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// Most inbound connections from one network (IPv4 /24, IPv6 /48).
    /// [default: 16]
    #[arg(long, value_name = "N")]
    pub max_connections_per_subnet: Option<u32>,
    /// Refuse new connections while this node's resident memory (chunks included)
    /// is above this, e.g. 4GiB. [default: the chunks' memory (--memory-total, else
    /// --cpus × --memory) + 1GiB, at most 90 % of the machine's memory]
    #[arg(long, value_name = "SIZE")]
    pub connection_memory_limit: Option<String>,
    /// An address peers on the internet reach this node at, e.g.
    /// /ip4/203.0.113.7/tcp/7946 or /dns4/grid.example.org/tcp/7946 (a VPS's public
    /// address, or a port forwarded by hand); repeat for several. Such a node is
    /// public from the start: it relays for peers behind NAT and tests their
    /// addresses (AutoNAT). Without it, AutoNAT and UPnP find out.
    #[arg(long, value_name = "MULTIADDR")]
    pub external_addr: Vec<String>,
    /// Do not ask the home router for a port mapping (UPnP).
    #[arg(long)]
    pub no_upnp: bool,
    /// Never relay for peers behind NAT, even when this node is public.
    #[arg(long)]
    pub no_relay: bool,
    /// Most circuits this node relays at once while public. [default: 64]
    #[arg(long, value_name = "N")]
    pub relay_max_circuits: Option<usize>,
    /// Most bytes one relayed circuit carries before it is closed, e.g. 24MiB (a
    /// chunk's offer and result fit; bulk blobs wait for a direct connection).
    /// [default: 24MiB]
    #[arg(long, value_name = "SIZE")]
    pub relay_max_circuit_bytes: Option<String>,
    /// Longest a relayed circuit lasts, e.g. 15m. [default: 15m]
    #[arg(long, value_name = "DURATION")]
    pub relay_max_circuit_duration: Option<String>,
    /// Most bytes per second sent to peers (blob pieces served, results sent),
    /// e.g. 2MiB, or "off"; `peergrid prefs` changes it at run time. [default: off]
    #[arg(long, value_name = "RATE")]
    pub max_upload: Option<String>,
    /// Most bytes per second fetched from peers (blob pieces), e.g. 8MiB, or "off".
    /// [default: off]
    #[arg(long, value_name = "RATE")]
    pub max_download: Option<String>,
    /// How long a blob download waits for a direct connection (hole punching)
    /// before it goes through a relay, e.g. 5s. [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub direct_wait: Option<String>,
    /// Treat the documentation address ranges (192.0.2.0/24, 198.51.100.0/24,
    /// 203.0.113.0/24, 2001:db8::/32) as public internet addresses. For NAT labs
    /// built from them; never on a real network.
    #[arg(long, hide = true)]
    pub lab_global_addresses: bool,
}

/// A loopback address in a /24 of its own for each call (127.a.b.1), so that the
/// nodes of an in-process grid count as different networks for placement.
pub fn next_loopback_ip() -> std::net::Ipv4Addr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (250 * 250);
    std::net::Ipv4Addr::new(127, (n / 250 + 1) as u8, (n % 250 + 1) as u8, 1)
}

impl NodeOptions {
    /// Options for a node on loopback only, as in-process grids (demo, benchmarks,
    /// tests) use: a free TCP port on a loopback address of its own /24 (see
    /// [`next_loopback_ip`]), no mDNS, no control API or metrics, fast adverts.
    pub fn loopback(bootstrap: Vec<String>, cpus: u32) -> Self {
        NodeOptions {
            listen: vec![format!("/ip4/{}/tcp/0", next_loopback_ip())],
            bootstrap,
            no_mdns: true,
            // Loopback only: no port mapping requests to the LAN's router.
            no_upnp: true,
            cpus: Some(cpus),
            api: Some("off".into()),
            metrics: Some("off".into()),
            advert_interval: Some("500ms".into()),
            advert_ttl: Some("3s".into()),
            // Many nodes share one process and its CPU: they lend what they are told.
            lend_when_busy: true,
            ..NodeOptions::default()
        }
    }
}

/// A bad option, in words a user can act on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub(crate) fn parse_addr(
    what: &str,
    value: &str,
    loopback_only: bool,
) -> Result<Option<SocketAddr>, ConfigError> {
    if value == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = value.parse().map_err(|e| {
        ConfigError(format!(
            "--{what} '{value}' is not an address such as 127.0.0.1:7947: {e}"
        ))
    })?;
    if loopback_only && !addr.ip().is_loopback() {
        return Err(ConfigError(format!(
            "--{what} must be a loopback address (127.0.0.1 or ::1): the control API is for this machine only"
        )));
    }
    Ok(Some(addr))
}

pub(crate) fn parse_multiaddrs(
    what: &str,
    values: &[String],
) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|e| ConfigError(format!("--{what} '{v}' is not a multiaddr: {e}")))
        })
        .collect()
}

impl NodeOptions {
    /// Reads `peergrid.toml` from the data dir (absent is fine).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ConfigError(format!("reading {}: {e}", path.display()))),
        }
    }

    /// These options (flags) over `file`'s.
    pub fn over(self, file: NodeOptions) -> NodeOptions {
        fn pick<T>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
            if a.is_empty() { b } else { a }
        }
        NodeOptions {
            listen: pick(self.listen, file.listen),
            bootstrap: pick(self.bootstrap, file.bootstrap),
            no_mdns: self.no_mdns || file.no_mdns,
            cpus: self.cpus.or(file.cpus),
            max_cpu_percent: self.max_cpu_percent.or(file.max_cpu_percent),
            cpu_time_percent: self.cpu_time_percent.or(file.cpu_time_percent),
            suspend_above_percent: self.suspend_above_percent.or(file.suspend_above_percent),
            active_hours: self.active_hours.or(file.active_hours),
            lend_when_busy: self.lend_when_busy || file.lend_when_busy,
            cpu_sample_interval: self.cpu_sample_interval.or(file.cpu_sample_interval),
            withdraw_after: self.withdraw_after.or(file.withdraw_after),
            memory: self.memory.or(file.memory),
            memory_total: self.memory_total.or(file.memory_total),
            blob_cache: self.blob_cache.or(file.blob_cache),
            min_free_disk: self.min_free_disk.or(file.min_free_disk),
            compile_cache: self.compile_cache.or(file.compile_cache),
            max_fuel: self.max_fuel.or(file.max_fuel),
            max_timeout: self.max_timeout.or(file.max_timeout),
            max_output: self.max_output.or(file.max_output),
            outbox_results_per_submitter: self
                .outbox_results_per_submitter
                .or(file.outbox_results_per_submitter),
            outbox_bytes_per_submitter: self
                .outbox_bytes_per_submitter
                .or(file.outbox_bytes_per_submitter),
            outbox_expiry: self.outbox_expiry.or(file.outbox_expiry),
            submitter_share: self.submitter_share.or(file.submitter_share),
            api: self.api.or(file.api),
            metrics: self.metrics.or(file.metrics),
            advert_interval: self.advert_interval.or(file.advert_interval),
            advert_ttl: self.advert_ttl.or(file.advert_ttl),
            placement_ipv4_prefix: self.placement_ipv4_prefix.or(file.placement_ipv4_prefix),
            placement_ipv6_prefix: self.placement_ipv6_prefix.or(file.placement_ipv6_prefix),
            placement_distinct_discovery: self.placement_distinct_discovery
                || file.placement_distinct_discovery,
            max_connections: self.max_connections.or(file.max_connections),
            max_inbound: self.max_inbound.or(file.max_inbound),
            max_connections_per_ip: self.max_connections_per_ip.or(file.max_connections_per_ip),
            max_connections_per_subnet: self
                .max_connections_per_subnet
                .or(file.max_connections_per_subnet),
            connection_memory_limit: self
                .connection_memory_limit
                .or(file.connection_memory_limit),
            external_addr: pick(self.external_addr, file.external_addr),
            no_upnp: self.no_upnp || file.no_upnp,
            no_relay: self.no_relay || file.no_relay,
            relay_max_circuits: self.relay_max_circuits.or(file.relay_max_circuits),
            relay_max_circuit_bytes: self
                .relay_max_circuit_bytes
                .or(file.relay_max_circuit_bytes),
            relay_max_circuit_duration: self
                .relay_max_circuit_duration
                .or(file.relay_max_circuit_duration),
            direct_wait: self.direct_wait.or(file.direct_wait),
            max_upload: self.max_upload.or(file.max_upload),
            max_download: self.max_download.or(file.max_download),
            lab_global_addresses: self.lab_global_addresses || file.lab_global_addresses,
        }
    }
}

/// Parses a size such as `256MiB`, `1 GB` or `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a size such as 256MiB or 1GB: {e}"))
}

/// Parses a duration such as `30s`, `5m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration such as 30s or 5m: {e}"))
}

/// Parses a fuel amount: a plain number, optionally with a k/M/G/T suffix (`50G`).
pub fn parse_fuel(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000),
        Some((i, 'M')) => (&t[..i], 1_000_000),
        Some((i, 'G')) => (&t[..i], 1_000_000_000),
        Some((i, 'T')) => (&t[..i], 1_000_000_000_000u64),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a fuel amount such as 5000000000 or 50G"))
}
