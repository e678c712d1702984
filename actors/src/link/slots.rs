//! Connection slots per source and per device: what one host or one device may hold of a
//! listener's connections, checked *before* the QUIC handshake takes a slot (per source) and
//! right after it authenticated the peer (per device).
//!
//! A *source* is an IPv4 address, or an IPv6 /64 (one host or one customer line hands out a
//! whole /64, so counting single IPv6 addresses would let one host take every slot). IPv4
//! addresses mapped into IPv6 count as the IPv4 address. A dual-stack host is two sources.
//!
//! Each slot is a [`SlotGuard`] that gives the slot back when dropped; the transport keeps the
//! guards of a connection until the connection is closed. Counts live in one small map
//! holding only sources and devices with a slot now, so memory is bounded by the connections
//! themselves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zerok_messages::DeviceId;
use zerok_messages::sync::lock;

/// One source: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl SourceKey {
    /// The source an address belongs to.
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(prefix)
                }
            },
        }
    }
}

/// How many slots one source and one device may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    /// Connections (handshaking or established) one source may hold at once.
    pub per_source_max: u32,
    /// Of those, handshakes still without their stream.
    pub handshakes_per_source_max: u32,
    /// Established connections one device (endpoint id) may hold at once.
    pub per_device_max: u32,
}

impl Default for SlotLimits {
    fn default() -> Self {
        Self {
            // A household or office behind one NAT: a few devices per person, each with a
            // connection per relay, and reconnects overlapping their old connection.
            per_source_max: 64,
            // Handshakes finish in a round trip or two; 16 at once from one address is a
            // burst of reconnects, more is someone holding slots.
            handshakes_per_source_max: 16,
            // One connection per relay per device, plus a reconnect overlapping the old one
            // and a CLI run beside the app.
            per_device_max: 4,
        }
    }
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    /// The source holds its maximum of connections.
    #[error("too many connections from this source")]
    SourceFull,
    /// The source holds its maximum of unfinished handshakes.
    #[error("too many handshakes from this source")]
    SourceHandshakes,
    /// The device holds its maximum of connections.
    #[error("too many connections for this device")]
    DeviceFull,
}

impl SlotRefused {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotRefused::SourceFull => "source",
            SlotRefused::SourceHandshakes => "handshakes",
            SlotRefused::DeviceFull => "device",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct SourceCount {
    connections: u32,
    handshakes: u32,
}

#[derive(Debug, Default)]
struct Counts {
    sources: HashMap<SourceKey, SourceCount>,
    devices: HashMap<DeviceId, u32>,
}

/// The slot table of one listener. Shared (`Arc`) by the accept loop and every guard.
#[derive(Debug)]
pub struct ConnectionSlots {
    limits: SlotLimits,
    counts: Mutex<Counts>,
    refused: [AtomicU64; 3],
    refused_metric: Option<prometheus::IntCounterVec>,
}

#[derive(Debug, Clone, Copy)]
enum Held {
    Handshake(SourceKey),
    Connection(SourceKey),
    Device(DeviceId),
}

/// A held slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<ConnectionSlots>,
    held: Held,
}

impl ConnectionSlots {
    /// An empty table with `limits`.
    pub fn new(limits: SlotLimits) -> Arc<ConnectionSlots> {
        Self::with_metric(limits, None)
    }

    /// An empty table with `limits` that counts refusals in `refused` too (label: reason).
    pub fn with_metric(
        limits: SlotLimits,
        refused: Option<prometheus::IntCounterVec>,
    ) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots {
            limits,
            counts: Mutex::new(Counts::default()),
            refused: Default::default(),
            refused_metric: refused,
        })
    }

    /// The limits.
    pub fn limits(&self) -> SlotLimits {
        self.limits
    }

    fn refuse(&self, why: SlotRefused) -> SlotRefused {
        let index = match why {
            SlotRefused::SourceFull => 0,
            SlotRefused::SourceHandshakes => 1,
            SlotRefused::DeviceFull => 2,
        };
        self.refused[index].fetch_add(1, Ordering::Relaxed);
        if let Some(metric) = &self.refused_metric {
            metric.with_label_values(&[why.as_str()]).inc();
        }
        why
    }

    /// Refusals so far: (source full, source handshakes, device full).
    pub fn refused(&self) -> (u64, u64, u64) {
        (
            self.refused[0].load(Ordering::Relaxed),
            self.refused[1].load(Ordering::Relaxed),
            self.refused[2].load(Ordering::Relaxed),
        )
    }

    /// Before a handshake from `ip`: take one of its source's handshake slots.
    pub fn enter_handshake(self: &Arc<Self>, ip: IpAddr) -> Result<SlotGuard, SlotRefused> {
        let key = SourceKey::of(ip);
        let mut counts = lock(&self.counts);
        let count = counts.sources.entry(key).or_default();
        if count.connections + count.handshakes >= self.limits.per_source_max {
            drop(counts);
            return Err(self.refuse(SlotRefused::SourceFull));
        }
        if count.handshakes >= self.limits.handshakes_per_source_max {
            drop(counts);
            return Err(self.refuse(SlotRefused::SourceHandshakes));
        }
        count.handshakes += 1;
        Ok(SlotGuard {
            slots: Arc::clone(self),
            held: Held::Handshake(key),
        })
    }

    /// The handshake finished with `device`: turn its slot into a connection slot and take
    /// one of the device's. On refusal the handshake slot is given back.
    pub fn established(
        self: &Arc<Self>,
        handshake: SlotGuard,
        device: DeviceId,
    ) -> Result<[SlotGuard; 2], SlotRefused> {
        let Held::Handshake(key) = handshake.held else {
            return Err(SlotRefused::SourceFull);
        };
        let mut counts = lock(&self.counts);
        let device_count = counts.devices.get(&device).copied().unwrap_or(0);
        if device_count >= self.limits.per_device_max {
            drop(counts);
            return Err(self.refuse(SlotRefused::DeviceFull));
        }
        *counts.devices.entry(device).or_default() += 1;
        let source = counts.sources.entry(key).or_default();
        source.handshakes = source.handshakes.saturating_sub(1);
        source.connections += 1;
        drop(counts);
        // The handshake slot became the connection slot: its guard must not give it back.
        std::mem::forget(handshake);
        Ok([
            SlotGuard {
                slots: Arc::clone(self),
                held: Held::Connection(key),
            },
            SlotGuard {
                slots: Arc::clone(self),
                held: Held::Device(device),
            },
        ])
    }

    /// Slots held now: (sources with a slot, connections, handshakes, devices with a slot).
    pub fn held(&self) -> (usize, u32, u32, usize) {
        let counts = lock(&self.counts);
        let (connections, handshakes) = counts
            .sources
            .values()
            .fold((0, 0), |(c, h), s| (c + s.connections, h + s.handshakes));
        (
            counts.sources.len(),
            connections,
            handshakes,
            counts.devices.len(),
        )
    }

    fn give_back(&self, held: Held) {
        let mut counts = lock(&self.counts);
        match held {
            Held::Handshake(key) | Held::Connection(key) => {
                if let Some(count) = counts.sources.get_mut(&key) {
                    match held {
                        Held::Handshake(_) => count.handshakes = count.handshakes.saturating_sub(1),
                        _ => count.connections = count.connections.saturating_sub(1),
                    }
                    if count.connections == 0 && count.handshakes == 0 {
                        counts.sources.remove(&key);
                    }
                }
            }
            Held::Device(device) => {
                if let Some(count) = counts.devices.get_mut(&device) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        counts.devices.remove(&device);
                    }
                }
            }
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SlotLimits {
        SlotLimits {
            per_source_max: 3,
            handshakes_per_source_max: 2,
            per_device_max: 1,
        }
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            SourceKey::of(mapped),
            SourceKey::of("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn a_source_is_capped_in_handshakes_and_in_connections() {
        let slots = ConnectionSlots::new(limits());
        let ip: IpAddr = [192, 0, 2, 1].into();
        let h1 = slots.enter_handshake(ip).unwrap();
        let h2 = slots.enter_handshake(ip).unwrap();
        assert_eq!(
            slots.enter_handshake(ip).unwrap_err(),
            SlotRefused::SourceHandshakes
        );
        // Another source is not affected.
        let other = slots.enter_handshake([192, 0, 2, 2].into()).unwrap();
        let c1 = slots.established(h1, DeviceId([1; 32])).unwrap();
        let c2 = slots.established(h2, DeviceId([2; 32])).unwrap();
        let h3 = slots.enter_handshake(ip).unwrap();
        assert_eq!(
            slots.enter_handshake(ip).unwrap_err(),
            SlotRefused::SourceFull,
            "two connections and a handshake fill the source's three slots"
        );
        drop(h3);
        drop(c1);
        assert_eq!(slots.held().1, 1, "one connection left of this source");
        let _h = slots.enter_handshake(ip).expect("slots came back");
        drop((c2, other));
        assert_eq!(slots.refused(), (1, 1, 0));
    }

    #[test]
    fn a_device_is_capped_and_a_refused_device_gives_the_handshake_back() {
        let slots = ConnectionSlots::new(limits());
        let device = DeviceId([7; 32]);
        let first = slots
            .established(
                slots.enter_handshake([192, 0, 2, 1].into()).unwrap(),
                device,
            )
            .unwrap();
        let second = slots.enter_handshake([192, 0, 2, 9].into()).unwrap();
        assert_eq!(
            slots.established(second, device).unwrap_err(),
            SlotRefused::DeviceFull
        );
        assert_eq!(
            slots.held(),
            (1, 1, 0, 1),
            "the refused handshake's slot is back"
        );
        drop(first);
        assert_eq!(
            slots.held(),
            (0, 0, 0, 0),
            "nothing held, nothing remembered"
        );
    }
}
