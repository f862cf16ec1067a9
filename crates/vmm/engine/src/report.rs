//! The figures of one migration, as printed by `--json` and the human
//! report.

use crate::metrics::{DowntimeBreakdown, RoundStat};
use serde::Serialize;
use vfio_migrate_backend::DeviceDescriptor;

/// One device's part of a migration.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Where the source device is (`unix:/…`).
    pub source: String,
    /// Protocol that carried it.
    pub protocol: String,
    /// The descriptor's model ([`DeviceDescriptor::model`]).
    pub model: String,
    /// The descriptor's model version ([`DeviceDescriptor::version`]).
    pub version: String,
    /// `vvvv:dddd`.
    pub pci_id: String,
    /// The device's `VFIO_MIGRATION_*` flags.
    pub migration_flags: u64,
    /// Pre-copy data bytes sent.
    pub precopy_bytes: u64,
    /// Stop-copy data bytes sent.
    pub stopcopy_bytes: u64,
    /// Of those pre-copy and stop-copy bytes, how many went from the
    /// device server to the link by `splice`, never read by this process.
    pub spliced_bytes: u64,
    /// Whether it went through the P2P states at the stop.
    pub p2p: bool,
    /// Digest at the source while stopped, when a verifier knows it.
    pub digest_source: Option<String>,
    /// Digest at the destination after loading, before it ran.
    pub digest_dest: Option<String>,
    /// Digests compared and equal (None: nothing to compare).
    pub verified: Option<bool>,
}

impl DeviceReport {
    /// A report for a device with `desc`, nothing transferred yet.
    pub fn new(source: String, protocol: &str, desc: &DeviceDescriptor) -> Self {
        Self {
            source,
            protocol: protocol.to_string(),
            model: desc.model.clone(),
            version: desc.version.clone(),
            pci_id: format!("{:04x}:{:04x}", desc.vendor_id, desc.device_id),
            migration_flags: desc.migration_flags,
            precopy_bytes: 0,
            stopcopy_bytes: 0,
            spliced_bytes: 0,
            p2p: false,
            digest_source: None,
            digest_dest: None,
            verified: None,
        }
    }
}

/// Formats a digest as the report shows it.
pub fn digest_hex(d: u64) -> String {
    format!("{d:#018x}")
}

/// Everything measured during one migration.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    /// `ok` or `failed`.
    pub status: String,
    /// Everything that could be compared was compared and was equal, and
    /// at least one thing was compared.
    pub verified: bool,
    /// Guest/devices stopped until the destination confirmed RUNNING (a
    /// snapshot: until the source ran again).
    pub downtime_ms: f64,
    /// Wall time of the whole migration.
    pub total_ms: f64,
    /// From the start to the first pre-copy round: descriptors, the
    /// destination's answer, DMA logging on.
    pub setup_ms: f64,
    /// Pre-copy rounds, up to the stop.
    pub precopy_ms: f64,
    /// Of the downtime: pausing and moving devices to STOP_COPY.
    pub stop_ms: f64,
    /// Of the downtime: final device data, dirty pages, end marker.
    pub final_transfer_ms: f64,
    /// Of the downtime: the destination validating, verifying, starting.
    pub resume_ms: f64,
    /// Of the resume time: the destination reading device digests to
    /// verify them (0 without a verifier).
    pub dest_digest_ms: f64,
    /// After the downtime: hashing the source RAM to compare.
    pub verify_ms: f64,
    /// Pre-copy ran: it was asked for and there was something to move
    /// while running (guest RAM, or a device with PRE_COPY); devices
    /// without PRE_COPY move all their data in stop-copy.
    pub precopy: bool,
    /// Pre-copy rounds completed.
    pub precopy_iterations: u32,
    /// The switchover came from the estimate (false: iterations ran out or
    /// pre-copy was off).
    pub converged: bool,
    /// The downtime the switchover aimed to stay under.
    pub downtime_limit_ms: f64,
    /// The expected downtime the switchover was decided on (transfer plus
    /// fixed costs), ms.
    pub expected_downtime_ms: f64,
    /// Of the expected downtime: what was left over the bandwidth, ms.
    pub expected_transfer_ms: f64,
    /// Of the expected downtime: the measured fixed costs, ms.
    pub expected_fixed_ms: f64,
    /// The measured downtime exceeded the limit (with pre-copy, where the
    /// limit is a promise).
    pub downtime_limit_exceeded: bool,
    /// The switchover came without the estimate fitting the limit
    /// (`--on-no-converge force`).
    pub forced: bool,
    /// Where the downtime went; the parts add up to `downtime_ms`.
    pub downtime_breakdown: DowntimeBreakdown,
    /// Every pre-copy round: sent, remaining, estimate, throttle.
    pub rounds: Vec<RoundStat>,
    /// Highest device throttle reached, percent (0: never throttled).
    pub max_throttle_percent: u32,
    /// Times a device re-initialised its pre-copy data (REINIT).
    pub reinits: u32,
    /// The destination acknowledged the devices' initial pre-copy data
    /// before the source stopped (switchover-ack was negotiated).
    pub switchover_ack: bool,
    /// Stream bytes (headers included).
    pub transferred_bytes: u64,
    /// Guest RAM page bytes sent (pages re-sent count again).
    pub ram_bytes: u64,
    /// Guest RAM size.
    pub ram_size: u64,
    /// Guest pages sent as zero runs (no data).
    pub ram_zero_pages: u64,
    /// RAM bytes sent while stopped.
    pub ram_bytes_stopped: u64,
    /// Device data bytes sent.
    pub device_bytes: u64,
    /// Device data bytes sent while stopped.
    pub device_bytes_stopped: u64,
    /// Stream throughput over the whole migration, bytes per second.
    pub throughput_bytes_per_sec: f64,
    /// Bandwidth measured during pre-copy, bytes per second (0: not
    /// measured).
    pub bandwidth_bytes_per_sec: f64,
    /// RAM hash at the source at the stop, when compared.
    pub ram_hash_source: Option<String>,
    /// RAM hash at the destination before it ran.
    pub ram_hash_dest: Option<String>,
    /// Names the source side (devices, or the snapshot file).
    pub source: String,
    /// Names the destination (the link's peer: address or file).
    pub dest: String,
    /// One report per device, in stream index order.
    pub devices: Vec<DeviceReport>,
    /// Peak resident memory of the migrating process (VmHWM), when the
    /// caller measured it.
    pub peak_rss_bytes: Option<u64>,
    /// What failed, when `status` is `failed`.
    pub error: Option<String>,
    /// Data channels the migration used (1: the main stream alone).
    pub channels: u32,
    /// CPU seconds of the migrating process, when the caller measured it.
    pub cpu_seconds: Option<f64>,
}

impl MigrationReport {
    /// An empty report from `source` to `dest`.
    pub fn new(source: String, dest: String) -> Self {
        Self {
            status: "ok".into(),
            verified: false,
            downtime_ms: 0.0,
            total_ms: 0.0,
            setup_ms: 0.0,
            precopy_ms: 0.0,
            stop_ms: 0.0,
            final_transfer_ms: 0.0,
            resume_ms: 0.0,
            dest_digest_ms: 0.0,
            verify_ms: 0.0,
            precopy: false,
            precopy_iterations: 0,
            converged: false,
            downtime_limit_ms: 0.0,
            expected_downtime_ms: 0.0,
            expected_transfer_ms: 0.0,
            expected_fixed_ms: 0.0,
            downtime_limit_exceeded: false,
            forced: false,
            downtime_breakdown: DowntimeBreakdown::default(),
            rounds: Vec::new(),
            max_throttle_percent: 0,
            reinits: 0,
            switchover_ack: false,
            transferred_bytes: 0,
            ram_bytes: 0,
            ram_size: 0,
            ram_zero_pages: 0,
            ram_bytes_stopped: 0,
            device_bytes: 0,
            device_bytes_stopped: 0,
            throughput_bytes_per_sec: 0.0,
            bandwidth_bytes_per_sec: 0.0,
            ram_hash_source: None,
            ram_hash_dest: None,
            source,
            dest,
            devices: Vec::new(),
            peak_rss_bytes: None,
            error: None,
            channels: 1,
            cpu_seconds: None,
        }
    }
}
