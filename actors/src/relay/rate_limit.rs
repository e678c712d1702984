//! Relay rate limits (governor, GCRA): connections per source, frames per device, frames per
//! source, frames for the whole relay (DESIGN.md §7). A source is an IPv4 address or an IPv6
//! /64 ([`SourceKey`]); the per-source frame limit keeps one host (with any number of device
//! keys) to a share of the relay's global frame budget, so others always find some. A refused connection or frame is answered with
//! `Error{rate_limited, retry_after_ms}` so well-behaved clients know exactly how long to wait.
//!
//! Keyed limiters keep one small state per recent key; the SessionsSupervisor calls
//! [`RelayLimiters::shrink`] periodically so idle keys are forgotten and memory stays bounded
//! by the number of recently active IPs and devices.

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use zerok_messages::DeviceId;

pub use crate::link::slots::SourceKey;

/// Rates and bursts; zero is not allowed (use a large value to effectively disable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// New connections per second from one IP.
    pub connections_per_ip_per_sec: u32,
    /// Burst of new connections from one IP.
    pub connections_per_ip_burst: u32,
    /// Frames per second from one device (over all its connections).
    pub frames_per_device_per_sec: u32,
    /// Burst of frames from one device.
    pub frames_per_device_burst: u32,
    /// Frames per second from one source (all its devices together).
    pub frames_per_source_per_sec: u32,
    /// Burst of frames from one source.
    pub frames_per_source_burst: u32,
    /// Frames per second for the whole relay.
    pub frames_global_per_sec: u32,
    /// Burst of frames for the whole relay.
    pub frames_global_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            connections_per_ip_per_sec: 20,
            connections_per_ip_burst: 50,
            frames_per_device_per_sec: 2_000,
            frames_per_device_burst: 4_000,
            frames_per_source_per_sec: 25_000,
            frames_per_source_burst: 50_000,
            frames_global_per_sec: 100_000,
            frames_global_burst: 200_000,
        }
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Connections per IP.
    Ip,
    /// Frames per device.
    Device,
    /// Frames per source.
    Source,
    /// Frames for the relay.
    Global,
}

impl Scope {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Device => "device",
            Scope::Source => "source",
            Scope::Global => "global",
        }
    }
}

/// A refusal: which limit, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The limit that refused.
    pub scope: Scope,
    /// Wait at least this long before retrying (at least 1 ms).
    pub retry_after: Duration,
}

impl Limited {
    /// `retry_after` in whole milliseconds, rounded up.
    pub fn retry_after_ms(&self) -> u64 {
        let ms = self.retry_after.as_micros().div_ceil(1000);
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }
}

/// The relay's limiters, shared by the listener and every session.
#[derive(Debug)]
pub struct RelayLimiters {
    per_ip: DefaultKeyedRateLimiter<SourceKey>,
    per_device: DefaultKeyedRateLimiter<DeviceId>,
    per_source: DefaultKeyedRateLimiter<SourceKey>,
    global: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
    Quota::per_second(per_sec).allow_burst(burst)
}

impl RelayLimiters {
    /// Limiters for `config`.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            per_ip: RateLimiter::keyed(quota(
                config.connections_per_ip_per_sec,
                config.connections_per_ip_burst,
            )),
            per_device: RateLimiter::keyed(quota(
                config.frames_per_device_per_sec,
                config.frames_per_device_burst,
            )),
            per_source: RateLimiter::keyed(quota(
                config.frames_per_source_per_sec,
                config.frames_per_source_burst,
            )),
            global: RateLimiter::direct(quota(
                config.frames_global_per_sec,
                config.frames_global_burst,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// May `ip` (its source) open another connection now?
    pub fn check_connection(&self, ip: IpAddr) -> Result<(), Limited> {
        self.per_ip
            .check_key(&SourceKey::of(ip))
            .map_err(|not_until| Limited {
                scope: Scope::Ip,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// May `device`, connected from `source`, send another frame now? Checks the device's
    /// limit, its source's, then the relay's.
    pub fn check_frame(&self, device: &DeviceId, source: Option<IpAddr>) -> Result<(), Limited> {
        self.per_device
            .check_key(device)
            .map_err(|not_until| Limited {
                scope: Scope::Device,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        if let Some(ip) = source {
            self.per_source
                .check_key(&SourceKey::of(ip))
                .map_err(|not_until| Limited {
                    scope: Scope::Source,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
        }
        self.global.check().map_err(|not_until| Limited {
            scope: Scope::Global,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Forget keys whose state is back to full capacity.
    pub fn shrink(&self) {
        self.per_ip.retain_recent();
        self.per_device.retain_recent();
        self.per_source.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_device.shrink_to_fit();
        self.per_source.shrink_to_fit();
    }

    /// Keys tracked now (sources connecting + devices + sources sending frames).
    pub fn tracked_keys(&self) -> usize {
        self.per_ip.len() + self.per_device.len() + self.per_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_burst_then_refusal_with_a_retry_hint() {
        let limiters = RelayLimiters::new(&RateLimitConfig {
            connections_per_ip_per_sec: 1,
            connections_per_ip_burst: 3,
            ..RateLimitConfig::default()
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            limiters.check_connection(ip).expect("within the burst");
        }
        let limited = limiters.check_connection(ip).expect_err("over the burst");
        assert_eq!(limited.scope, Scope::Ip);
        assert!(limited.retry_after_ms() >= 1 && limited.retry_after_ms() <= 1000);
        // Another IP is not affected.
        limiters
            .check_connection([10, 0, 0, 2].into())
            .expect("other ip");
    }

    #[test]
    fn device_limit_is_per_device_and_global_limit_is_shared() {
        let limiters = RelayLimiters::new(&RateLimitConfig {
            frames_per_device_per_sec: 1,
            frames_per_device_burst: 2,
            frames_global_per_sec: 1,
            frames_global_burst: 3,
            ..RateLimitConfig::default()
        });
        let a = DeviceId([1; 32]);
        let b = DeviceId([2; 32]);
        limiters.check_frame(&a, None).expect("a 1");
        limiters.check_frame(&a, None).expect("a 2");
        assert_eq!(
            limiters.check_frame(&a, None).map_err(|l| l.scope),
            Err(Scope::Device)
        );
        limiters.check_frame(&b, None).expect("b 1 (global 3)");
        assert_eq!(
            limiters.check_frame(&b, None).map_err(|l| l.scope),
            Err(Scope::Global)
        );
        assert_eq!(limiters.tracked_keys(), 2);
    }

    #[test]
    fn one_source_with_many_devices_gets_only_its_share_of_the_global_budget() {
        let limiters = RelayLimiters::new(&RateLimitConfig {
            frames_per_source_per_sec: 1,
            frames_per_source_burst: 3,
            ..RateLimitConfig::default()
        });
        let host: IpAddr = "2001:db8::1".parse().unwrap();
        let same_host_other_address: IpAddr = "2001:db8::2".parse().unwrap();
        for n in 0..3u8 {
            limiters
                .check_frame(&DeviceId([n; 32]), Some(host))
                .expect("within the source's burst");
        }
        assert_eq!(
            limiters
                .check_frame(&DeviceId([9; 32]), Some(same_host_other_address))
                .map_err(|l| l.scope),
            Err(Scope::Source),
            "a fresh device key from the same /64 is the same source"
        );
        limiters
            .check_frame(&DeviceId([9; 32]), Some("192.0.2.1".parse().unwrap()))
            .expect("another source has its own share");
    }

    #[test]
    fn connections_are_limited_per_source_not_per_address() {
        let limiters = RelayLimiters::new(&RateLimitConfig {
            connections_per_ip_per_sec: 1,
            connections_per_ip_burst: 1,
            ..RateLimitConfig::default()
        });
        limiters
            .check_connection("2001:db8::1".parse().unwrap())
            .expect("first");
        assert!(
            limiters
                .check_connection("2001:db8::ffff".parse().unwrap())
                .is_err(),
            "same /64"
        );
    }
}
