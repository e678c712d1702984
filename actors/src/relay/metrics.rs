//! Prometheus metrics of a relay node, in a registry of its own (never the global one, so
//! several nodes in one process — tests, simulation — do not mix their numbers).
//!
//! Actors get a clone of [`RelayMetrics`] in their args and update it; the HTTP server
//! renders [`RelayMetrics::render`]. Metric values are counts, sizes and durations only:
//! never ids, keys or payload.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// All relay metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct RelayMetrics {
    registry: Registry,
    /// Connections accepted since start.
    pub connections_total: IntCounter,
    /// Connections refused (limits, rate).
    pub connections_refused_total: IntCounter,
    /// Sessions open now.
    pub sessions: IntGauge,
    /// Pushes by result (`stored`, `duplicate`, `rejected`, `failed`).
    pub pushes_total: IntCounterVec,
    /// Pull requests served.
    pub pulls_total: IntCounter,
    /// Items stored now.
    pub items_stored: IntGauge,
    /// Ciphertext bytes stored now.
    pub bytes_stored: IntGauge,
    /// Mailboxes holding items now.
    pub mailboxes: IntGauge,
    /// Bytes of the store's log on disk now.
    pub store_disk_bytes: IntGauge,
    /// 1 while the store refuses pushes for lack of space (budget, disk floor, full disk).
    pub store_full: IntGauge,
    /// Damaged records the store found (at open, and on reads) and does not serve.
    pub store_damaged_records_total: IntCounter,
    /// Reads answered by a page read ahead (after the page before it had more).
    pub store_read_ahead_hits_total: IntCounter,
    /// Bytes charged against the relay's byte budget now (ciphertext plus per-item charge).
    pub store_charged_bytes: IntGauge,
    /// The relay's byte budget (`store.max_bytes`).
    pub store_charged_bytes_max: IntGauge,
    /// Index entries charged against the relay's item budget now.
    pub store_index_entries: IntGauge,
    /// The relay's item budget (`store.max_items`).
    pub store_index_entries_max: IntGauge,
    /// Free bytes of the store's filesystem at the last check (-1 when not checked).
    pub store_free_disk_bytes: IntGauge,
    /// The free-disk floor below which pushes are refused (`store.min_free_disk_bytes`).
    pub store_min_free_disk_bytes: IntGauge,
    /// Seconds from a push frame to its ack.
    pub push_latency_seconds: Histogram,
    /// Pushes per group commit.
    pub batch_size: Histogram,
    /// Seconds one group commit's write + fdatasync took.
    pub flush_latency_seconds: Histogram,
    /// Live deliveries replaced by a `Notify` because a subscriber's queue was full.
    pub fanout_drops_total: IntCounter,
    /// Requests or connections refused by a rate limit, by scope (`ip`, `device`, `global`).
    pub rate_limited_total: IntCounterVec,
    /// Items evicted by the sweeper.
    pub sweeper_evictions_total: IntCounter,
    /// Actor restarts by actor kind.
    pub actor_restarts_total: IntCounterVec,
    /// Error frames sent, by code.
    pub errors_total: IntCounterVec,
    /// Connections aborted because the peer left more than its budget unread.
    pub slow_peers_disconnected_total: IntCounter,
    /// Connections refused before or right after their handshake, by reason (`source`,
    /// `handshakes`, `device`).
    pub connection_slots_refused_total: IntCounterVec,
    /// Bytes queued towards peers and not yet taken by the transport, over all sessions.
    pub unread_bytes: IntGauge,
    /// Distinct large files held (issue 15).
    pub content_files: IntGauge,
    /// Bytes of the distinct large files held (what `content.max_bytes` bounds).
    pub content_bytes: IntGauge,
    /// Content offers and opens refused, by reason (`quota`, `too_large`, `not_found`,
    /// `bad_request`, `unavailable`).
    pub content_refused_total: IntCounterVec,
    /// Bytes of large files moved, by direction: `push` (received by completed pushes) and
    /// `get` (sent, whether the get completed or stopped part way).
    pub content_transfer_bytes_total: IntCounterVec,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("metric name and help are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique in this registry");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label])
        .expect("metric name, help and label are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique in this registry");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("metric name and help are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique in this registry");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("histogram options are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique in this registry");
    metric
}

/// Latency buckets from 50 µs to 5 s: a loopback ack takes well under a millisecond, a
/// congested disk flush can take seconds.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0,
    ]
}

impl RelayMetrics {
    /// A fresh registry with every relay metric registered.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("zerok_relay".into()), None)
            .expect("a static prefix is a valid registry prefix");
        let r = &registry;
        RelayMetrics {
            connections_total: counter(r, "connections_total", "connections accepted"),
            connections_refused_total: counter(
                r,
                "connections_refused_total",
                "connections refused by limits",
            ),
            sessions: gauge(r, "sessions", "sessions open now"),
            pushes_total: counter_vec(r, "pushes_total", "pushes by result", "result"),
            pulls_total: counter(r, "pulls_total", "pull requests served"),
            items_stored: gauge(r, "items_stored", "items stored now"),
            bytes_stored: gauge(r, "bytes_stored", "ciphertext bytes stored now"),
            mailboxes: gauge(r, "mailboxes", "mailboxes holding items now"),
            store_disk_bytes: gauge(r, "store_disk_bytes", "bytes of the store's log on disk"),
            store_damaged_records_total: counter(
                r,
                "store_damaged_records_total",
                "damaged records found in the store (never served); zerok-relay check lists them",
            ),
            store_read_ahead_hits_total: counter(
                r,
                "store_read_ahead_hits_total",
                "reads answered by a page read ahead while the page before was sent",
            ),
            store_full: gauge(
                r,
                "store_full",
                "1 while the store refuses pushes for lack of space",
            ),
            store_charged_bytes: gauge(
                r,
                "store_charged_bytes",
                "bytes charged against the store byte budget",
            ),
            store_charged_bytes_max: gauge(r, "store_charged_bytes_max", "store byte budget"),
            store_index_entries: gauge(
                r,
                "store_index_entries",
                "index entries charged against the store item budget",
            ),
            store_index_entries_max: gauge(r, "store_index_entries_max", "store item budget"),
            store_free_disk_bytes: gauge(
                r,
                "store_free_disk_bytes",
                "free bytes of the store filesystem at the last check",
            ),
            store_min_free_disk_bytes: gauge(
                r,
                "store_min_free_disk_bytes",
                "free-disk floor below which pushes are refused",
            ),
            push_latency_seconds: histogram(
                r,
                "push_latency_seconds",
                "push frame to durable ack",
                latency_buckets(),
            ),
            batch_size: histogram(
                r,
                "batch_size",
                "pushes per group commit",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ],
            ),
            flush_latency_seconds: histogram(
                r,
                "flush_latency_seconds",
                "group commit write and fdatasync",
                latency_buckets(),
            ),
            fanout_drops_total: counter(
                r,
                "fanout_drops_total",
                "live deliveries replaced by notify for slow subscribers",
            ),
            rate_limited_total: counter_vec(
                r,
                "rate_limited_total",
                "requests refused by rate limits",
                "scope",
            ),
            sweeper_evictions_total: counter(r, "sweeper_evictions_total", "items evicted"),
            actor_restarts_total: counter_vec(
                r,
                "actor_restarts_total",
                "actor restarts by supervisor",
                "actor",
            ),
            errors_total: counter_vec(r, "errors_total", "error frames sent by code", "code"),
            slow_peers_disconnected_total: counter(
                r,
                "slow_peers_disconnected_total",
                "connections aborted because the peer left too much unread",
            ),
            connection_slots_refused_total: counter_vec(
                r,
                "connection_slots_refused_total",
                "connections refused by per-source or per-device slots",
                "reason",
            ),
            unread_bytes: gauge(
                r,
                "unread_bytes",
                "bytes queued towards peers, not yet sent",
            ),
            content_files: gauge(r, "content_files", "distinct large files held"),
            content_bytes: gauge(r, "content_bytes", "bytes of the distinct large files held"),
            content_refused_total: counter_vec(
                r,
                "content_refused_total",
                "content offers and opens refused",
                "reason",
            ),
            content_transfer_bytes_total: counter_vec(
                r,
                "content_transfer_bytes_total",
                "bytes of large files received by completed pushes and sent by gets",
                "direction",
            ),
            registry,
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding gathered metrics to a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_and_separate_registries() {
        let a = RelayMetrics::new();
        let b = RelayMetrics::new();
        a.pushes_total.with_label_values(&["stored"]).inc_by(3);
        let text = a.render();
        assert!(
            text.contains("zerok_relay_pushes_total{result=\"stored\"} 3"),
            "{text}"
        );
        assert!(!b.render().contains("result=\"stored\"} 3"));
    }
}
