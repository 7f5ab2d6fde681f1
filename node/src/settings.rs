//! The resolved settings: [`NodeConfig`], derived from the raw [`NodeOptions`]
//! (flags over `peergrid.toml`) by [`NodeOptions::resolve`]. Each part is the
//! subsystem's own config type (`NetConfig`, `VolunteerConfig`, `PlacementPolicy`,
//! `TrustPolicy`), so this module sits above the subsystems and `config` below them.
//! `Node::spawn` takes the result.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{
    ConfigError, DEFAULT_API, DEFAULT_METRICS, DataDir, NodeOptions, parse_addr, parse_duration,
    parse_fuel, parse_multiaddrs, parse_size,
};
use crate::net::NetConfig;
use crate::net::relay::NatConfig;
use crate::scheduler::{PlacementPolicy, TrustPolicy};
use crate::worker::WorkerLimits;
use crate::worker::politeness::{
    Preferences, VolunteerConfig, parse_active_hours, parse_memory_total, parse_rate,
};

/// Everything a node needs, resolved.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The data dir.
    pub data_dir: DataDir,
    /// Network settings.
    pub net: NetConfig,
    /// Cores (slots) lent when the machine is spare.
    pub cpus: u32,
    /// The volunteer controls: preferences, CPU sampling, withdrawal.
    pub volunteer: VolunteerConfig,
    /// Most memory per chunk, in bytes.
    pub memory_per_chunk: u64,
    /// Disk limit of the blob cache.
    pub blob_cache: BlobCacheLimit,
    /// Free disk that fetching blobs never goes below, in bytes.
    pub min_free_disk: u64,
    /// Disk limit of the compile cache, in bytes.
    pub compile_cache: u64,
    /// What the worker lends at most (per chunk, per submitter, in the outbox).
    /// Its `max_fuel` is replaced at start when [`max_fuel`](Self::max_fuel) is
    /// `None` (auto).
    pub worker_limits: WorkerLimits,
    /// Most fuel per chunk; `None`: from the calibrated speed
    /// ([`default_max_fuel`](crate::worker::limits::default_max_fuel)).
    pub max_fuel: Option<u64>,
    /// Control API address; `None` when off.
    pub api: Option<SocketAddr>,
    /// Metrics address; `None` when off.
    pub metrics: Option<SocketAddr>,
    /// How often the advert is re-sent.
    pub advert_interval: Duration,
    /// Which peers may hold replicas of the same chunk.
    pub placement: PlacementPolicy,
    /// Adaptive replication's numbers (the defaults; tests change them).
    pub trust: TrustPolicy,
    /// The peergrid binary to measure the fuel speed in, as a child process, when
    /// the data dir keeps no figure for this binary and CPU (so this process never
    /// compiles anything while idle); `None`: measure in this process. `peergrid
    /// node` sets it to itself; tests and in-process grids leave it `None`.
    pub calibrate_with: Option<std::path::PathBuf>,
}

/// The blob cache's disk limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCacheLimit {
    /// No limit.
    Off,
    /// A share of the free disk, measured when the node starts
    /// ([`auto_cache_limit`](crate::store::blobs::auto_cache_limit)).
    Auto,
    /// This many bytes.
    Bytes(u64),
}

/// Resolution: flags and file merged, every default derived.
pub trait Resolve {
    /// Derives every default.
    fn resolve(self, data_dir: DataDir) -> Result<NodeConfig, ConfigError>;
}

impl Resolve for NodeOptions {
    /// Derives every default.
    fn resolve(self, data_dir: DataDir) -> Result<NodeConfig, ConfigError> {
        let mut net = NetConfig::default();
        if !self.listen.is_empty() {
            net.listen = parse_multiaddrs("listen", &self.listen)?;
        }
        net.bootstrap = parse_multiaddrs("bootstrap", &self.bootstrap)?;
        net.mdns = !self.no_mdns;
        connection_limits(&self, &mut net)?;
        net.nat = nat_of(&self)?;
        let advert_interval = match &self.advert_interval {
            Some(s) => parse_duration(s).map_err(ConfigError)?,
            // Adverts go to subscribers only, on change and as a refresh: the refresh
            // can be slow (docs/PROTOCOL.md, Discovery).
            None => Duration::from_secs(60),
        };
        if advert_interval < Duration::from_millis(100) {
            return Err(ConfigError(
                "--advert-interval must be at least 100ms".into(),
            ));
        }
        net.advert_ttl = match &self.advert_ttl {
            Some(s) => parse_duration(s).map_err(ConfigError)?,
            None => advert_interval * 3,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let cpus = self.cpus.unwrap_or(cores);
        let memory_per_chunk = match &self.memory {
            Some(s) => parse_size(s).map_err(ConfigError)?,
            None => 512 * 1024 * 1024,
        };
        let volunteer = volunteer_of(&self, cpus)?;
        let (worker_limits, max_fuel) = worker_limits_of(&self)?;
        net.max_memory = match &self.connection_memory_limit {
            Some(s) => {
                parse_size(s).map_err(|e| ConfigError(format!("--connection-memory-limit: {e}")))?
            }
            None => {
                let chunks = volunteer
                    .preferences
                    .memory_total
                    .unwrap_or(u64::from(cpus).saturating_mul(memory_per_chunk));
                let machine = sysinfo::System::new_with_specifics(
                    sysinfo::RefreshKind::nothing()
                        .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
                )
                .map_or(0, |s| s.total_memory());
                let cap = chunks.saturating_add(1 << 30);
                if machine > 0 {
                    cap.min(machine / 10 * 9)
                } else {
                    cap
                }
            }
        };
        Ok(NodeConfig {
            data_dir,
            net,
            cpus,
            volunteer,
            memory_per_chunk,
            blob_cache: match self.blob_cache.as_deref().map(str::trim) {
                None | Some("auto") => BlobCacheLimit::Auto,
                Some("off") => BlobCacheLimit::Off,
                Some(s) => BlobCacheLimit::Bytes(
                    parse_size(s).map_err(|e| ConfigError(format!("--blob-cache: {e}")))?,
                ),
            },
            min_free_disk: match &self.min_free_disk {
                Some(s) => {
                    parse_size(s).map_err(|e| ConfigError(format!("--min-free-disk: {e}")))?
                }
                None => crate::store::blobs::DEFAULT_MIN_FREE,
            },
            compile_cache: match &self.compile_cache {
                Some(s) => {
                    parse_size(s).map_err(|e| ConfigError(format!("--compile-cache: {e}")))?
                }
                None => crate::sandbox::cache::DEFAULT_COMPILE_CACHE_BYTES,
            },
            worker_limits,
            max_fuel,
            api: parse_addr("api", self.api.as_deref().unwrap_or(DEFAULT_API), true)?,
            metrics: parse_addr(
                "metrics",
                self.metrics.as_deref().unwrap_or(DEFAULT_METRICS),
                false,
            )?,
            advert_interval,
            placement: {
                let default = PlacementPolicy::default();
                let ipv4_prefix = self.placement_ipv4_prefix.unwrap_or(default.ipv4_prefix);
                let ipv6_prefix = self.placement_ipv6_prefix.unwrap_or(default.ipv6_prefix);
                if ipv4_prefix > 32 || ipv6_prefix > 128 {
                    return Err(ConfigError(format!(
                        "--placement-ipv4-prefix must be 0..=32 and --placement-ipv6-prefix 0..=128, got {ipv4_prefix} and {ipv6_prefix}"
                    )));
                }
                PlacementPolicy {
                    ipv4_prefix,
                    ipv6_prefix,
                    distinct_discovery: self.placement_distinct_discovery,
                }
            },
            trust: TrustPolicy::default(),
            calibrate_with: None,
        })
    }
}

fn worker_limits_of(options: &NodeOptions) -> Result<(WorkerLimits, Option<u64>), ConfigError> {
    let d = WorkerLimits::default();
    let size = |v: &Option<String>, default: u64, what: &str| match v {
        Some(s) => parse_size(s).map_err(|e| ConfigError(format!("--{what}: {e}"))),
        None => Ok(default),
    };
    let duration = |v: &Option<String>, default: Duration, what: &str| match v {
        Some(s) => parse_duration(s).map_err(|e| ConfigError(format!("--{what}: {e}"))),
        None => Ok(default),
    };
    let max_fuel = match options.max_fuel.as_deref().map(str::trim) {
        None | Some("auto") => None,
        Some(s) => Some(parse_fuel(s).map_err(|e| ConfigError(format!("--max-fuel: {e}")))?),
    };
    let share = options.submitter_share.unwrap_or(d.submitter_share_percent);
    if !(1..=100).contains(&share) {
        return Err(ConfigError(format!(
            "--submitter-share must be 1-100 (percent), got {share}"
        )));
    }
    let limits = WorkerLimits {
        max_fuel: max_fuel.unwrap_or(d.max_fuel),
        max_timeout: duration(&options.max_timeout, d.max_timeout, "max-timeout")?,
        max_output_bytes: size(&options.max_output, d.max_output_bytes, "max-output")?,
        outbox_results_per_submitter: options
            .outbox_results_per_submitter
            .unwrap_or(d.outbox_results_per_submitter)
            .max(1),
        outbox_bytes_per_submitter: size(
            &options.outbox_bytes_per_submitter,
            d.outbox_bytes_per_submitter,
            "outbox-bytes-per-submitter",
        )?,
        outbox_expiry: duration(&options.outbox_expiry, d.outbox_expiry, "outbox-expiry")?,
        submitter_share_percent: share,
        ..d
    };
    Ok((limits, max_fuel))
}

/// The connection limits: totals, the inbound share, per address and network.
fn connection_limits(options: &NodeOptions, net: &mut NetConfig) -> Result<(), ConfigError> {
    if let Some(n) = options.max_connections {
        net.max_connections = n;
    }
    net.max_inbound = options.max_inbound.unwrap_or(net.max_connections / 4 * 3);
    if let Some(n) = options.max_connections_per_ip {
        net.guard.per_ip = n;
    }
    if let Some(n) = options.max_connections_per_subnet {
        net.guard.per_subnet = n;
    }
    let (total, inbound) = (net.max_connections, net.max_inbound);
    if total < 8 || inbound == 0 || inbound > total {
        return Err(ConfigError(format!(
            "--max-connections must be at least 8 and --max-inbound between 1 and it, got {total} and {inbound}"
        )));
    }
    if net.guard.per_ip == 0 || net.guard.per_subnet < net.guard.per_ip {
        return Err(ConfigError(format!(
            "--max-connections-per-ip must be at least 1 and --max-connections-per-subnet at least that, got {} and {}",
            net.guard.per_ip, net.guard.per_subnet
        )));
    }
    Ok(())
}

/// The NAT settings: external addresses, UPnP, the relay's limits.
fn nat_of(options: &NodeOptions) -> Result<NatConfig, ConfigError> {
    let mut nat = NatConfig {
        external_addrs: parse_multiaddrs("external-addr", &options.external_addr)?,
        upnp: !options.no_upnp,
        relay_server: !options.no_relay,
        lab_global: options.lab_global_addresses,
        ..NatConfig::default()
    };
    if let Some(n) = options.relay_max_circuits {
        nat.relay.max_circuits = n;
    }
    if let Some(s) = &options.relay_max_circuit_bytes {
        nat.relay.max_circuit_bytes =
            parse_size(s).map_err(|e| ConfigError(format!("--relay-max-circuit-bytes: {e}")))?;
    }
    if let Some(s) = &options.relay_max_circuit_duration {
        nat.relay.max_circuit_duration = parse_duration(s)
            .map_err(|e| ConfigError(format!("--relay-max-circuit-duration: {e}")))?;
    }
    if let Some(s) = &options.direct_wait {
        nat.direct_wait =
            parse_duration(s).map_err(|e| ConfigError(format!("--direct-wait: {e}")))?;
    }
    Ok(nat)
}

fn volunteer_of(options: &NodeOptions, cpus: u32) -> Result<VolunteerConfig, ConfigError> {
    let duration = |v: &Option<String>, default: Duration, what: &str| match v {
        Some(s) => parse_duration(s).map_err(|e| ConfigError(format!("--{what}: {e}"))),
        None => Ok(default),
    };
    let preferences = Preferences {
        cpus,
        max_cpu_percent: options.max_cpu_percent.unwrap_or(100),
        cpu_time_percent: options.cpu_time_percent.unwrap_or(100),
        suspend_above_percent: options.suspend_above_percent.unwrap_or(0),
        active_hours: match &options.active_hours {
            Some(s) => parse_active_hours(s).map_err(ConfigError)?,
            None => None,
        },
        memory_total: match &options.memory_total {
            Some(s) => parse_memory_total(s).map_err(ConfigError)?,
            None => None,
        },
        lend_when_busy: options.lend_when_busy,
        max_upload: match &options.max_upload {
            Some(s) => parse_rate(s).map_err(|e| ConfigError(format!("--max-upload: {e}")))?,
            None => None,
        },
        max_download: match &options.max_download {
            Some(s) => parse_rate(s).map_err(|e| ConfigError(format!("--max-download: {e}")))?,
            None => None,
        },
    };
    preferences.check().map_err(ConfigError)?;
    let sample_interval = duration(
        &options.cpu_sample_interval,
        Duration::from_secs(1),
        "cpu-sample-interval",
    )?;
    if sample_interval < Duration::from_millis(100) {
        return Err(ConfigError(
            "--cpu-sample-interval must be at least 100ms".into(),
        ));
    }
    Ok(VolunteerConfig {
        preferences,
        sample_interval,
        withdraw_after: duration(
            &options.withdraw_after,
            Duration::from_secs(300),
            "withdraw-after",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;
    use std::path::Path;

    #[test]
    fn parses_human_values() {
        assert_eq!(parse_size("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_fuel("50G"), Ok(50_000_000_000));
        assert_eq!(parse_fuel("123"), Ok(123));
        assert!(parse_fuel("G").is_err());
        assert!(parse_fuel("99999999999999T").is_err());
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_in() {
        let file: NodeOptions = toml::from_str(
            "cpus = 3\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\nno-mdns = true\nmemory = \"1GiB\"",
        )
        .unwrap();
        let flags = NodeOptions {
            cpus: Some(2),
            ..NodeOptions::default()
        };
        let config = flags
            .over(file)
            .resolve(DataDir::resolve(Some("/tmp/x".into())))
            .unwrap();
        assert_eq!(config.cpus, 2);
        assert_eq!(config.net.bootstrap.len(), 1);
        assert!(!config.net.mdns);
        assert_eq!(config.memory_per_chunk, 1 << 30);
        assert_eq!(config.api, Some(DEFAULT_API.parse().unwrap()));
        assert_eq!(config.net.advert_ttl, Duration::from_secs(180));
    }

    #[test]
    fn nat_options_resolve_and_bad_ones_say_what_is_wrong() {
        let file: NodeOptions = toml::from_str(
            "external-addr = [\"/dns4/grid.example.org/tcp/7946\"]\nno-upnp = true\n\
             relay-max-circuit-bytes = \"1MiB\"\nmax-upload = \"512KiB\"",
        )
        .unwrap();
        let flags = NodeOptions {
            relay_max_circuits: Some(3),
            max_download: Some("2MiB/s".into()),
            ..NodeOptions::default()
        };
        let config = flags
            .over(file)
            .resolve(DataDir::resolve(Some("/tmp/x".into())))
            .unwrap();
        let nat = &config.net.nat;
        assert_eq!(nat.external_addrs.len(), 1);
        assert!(!nat.upnp && nat.relay_server);
        assert_eq!(nat.relay.max_circuits, 3);
        assert_eq!(nat.relay.max_circuit_bytes, 1 << 20);
        let prefs = &config.volunteer.preferences;
        assert_eq!(prefs.max_upload, Some(512 * 1024));
        assert_eq!(prefs.max_download, Some(2 << 20));
        let bad = |o: NodeOptions| o.resolve(DataDir::resolve(None)).unwrap_err().to_string();
        assert!(
            bad(NodeOptions {
                max_upload: Some("0".into()),
                ..Default::default()
            })
            .contains("--max-upload")
        );
        assert!(
            bad(NodeOptions {
                external_addr: vec!["203.0.113.7:7946".into()],
                ..Default::default()
            })
            .contains("--external-addr")
        );
    }

    #[test]
    fn a_node_may_lend_nothing() {
        let config = NodeOptions {
            cpus: Some(0),
            ..NodeOptions::default()
        }
        .resolve(DataDir::resolve(Some("/tmp/x".into())))
        .unwrap();
        assert_eq!(config.cpus, 0);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let bad = |o: NodeOptions| o.resolve(DataDir::resolve(None)).unwrap_err().to_string();
        assert!(
            bad(NodeOptions {
                api: Some("0.0.0.0:1".into()),
                ..Default::default()
            })
            .contains("loopback")
        );
        assert!(
            bad(NodeOptions {
                cpus: Some(5000),
                ..Default::default()
            })
            .contains("--cpus")
        );
        assert!(
            bad(NodeOptions {
                listen: vec!["nope".into()],
                ..Default::default()
            })
            .contains("multiaddr")
        );
        assert!(
            toml::from_str::<NodeOptions>("cpu = 3").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn data_dir_flag_wins() {
        let d = DataDir::resolve(Some("/tmp/x".into()));
        assert_eq!(d.root(), Path::new("/tmp/x"));
        assert!(d.module_cache().starts_with("/tmp/x"));
    }
}

#[cfg(test)]
mod example_config {
    use super::Resolve;
    use crate::config::DataDir;
    #[test]
    fn the_committed_example_config_parses() {
        let text = include_str!("../../example.config.toml");
        let options: super::NodeOptions = toml::from_str(text).expect("example.config.toml parses");
        options
            .resolve(DataDir::resolve(Some("/tmp/x".into())))
            .expect("and resolves");
    }
}
