//! `zerok-bench`: measurements of the relay and client against the machine's own limits,
//! measured in the same run (docs/BENCHMARKS.md).
//!
//! Every figure is a [`BenchResult`]; where a matching limit exists it carries the baseline
//! figure and the ratio, and says whether a higher ratio is better, so `--compare` can flag
//! regressions of the ratio (robust to a noisy, shared machine) rather than of raw numbers.

pub mod baseline;
pub mod relay_benches;
pub mod stats;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which direction of a value (and of its ratio) is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Throughputs, rates.
    Higher,
    /// Latencies, sizes.
    Lower,
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Subcommand (`baseline`, `push`, ...).
    pub bench: String,
    /// What was measured (`acked_per_s`, `latency_p50_ms`, ...).
    pub metric: String,
    /// Parameters of the run (clients, subscribers, records, ...).
    pub params: BTreeMap<String, serde_json::Value>,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The baseline it is compared with, when one matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_metric: Option<String>,
    /// The baseline's figure in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_value: Option<f64>,
    /// `value / baseline_value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Which way is better, for the value and the ratio.
    pub better: Better,
}

impl BenchResult {
    /// A figure without a baseline.
    pub fn new(bench: &str, metric: &str, value: f64, unit: &str, better: Better) -> Self {
        Self {
            bench: bench.to_owned(),
            metric: metric.to_owned(),
            params: BTreeMap::new(),
            value,
            unit: unit.to_owned(),
            baseline_metric: None,
            baseline_value: None,
            ratio: None,
            better,
        }
    }

    /// Add a parameter.
    pub fn param(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.params.insert(name.to_owned(), value.into());
        self
    }

    /// Compare with a baseline figure of the same run.
    pub fn against(mut self, metric: &str, value: f64) -> Self {
        self.baseline_metric = Some(metric.to_owned());
        self.baseline_value = Some(value);
        self.ratio = (value != 0.0).then(|| self.value / value);
        self
    }

    /// The key identifying this figure across runs.
    pub fn key(&self) -> String {
        let params = serde_json::to_string(&self.params).unwrap_or_default();
        format!("{}/{}/{params}", self.bench, self.metric)
    }
}
