//! `zerok-bench`: measurements of the relay and client against the machine's own limits,
//! measured in the same run (docs/BENCHMARKS.md).
//!
//! Every figure is a [`BenchResult`]; where a matching limit exists it carries the baseline
//! figure and the ratio, and says whether a higher ratio is better, so `--compare` can flag
//! regressions of the ratio (robust to a noisy, shared machine) rather than of raw numbers.

pub mod baseline;
pub mod client_bench;
pub mod content_bench;
pub mod engines;
pub mod relay_benches;
pub mod stats;
pub mod stored;

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

/// The ratios of `now` more than 10% worse than the same figures (same bench, metric and
/// params) in `saved`, each as one line, and how many ratios were compared.
pub fn regressions(saved: &[BenchResult], now: &[BenchResult]) -> (Vec<String>, usize) {
    let saved: std::collections::HashMap<String, &BenchResult> =
        saved.iter().map(|r| (r.key(), r)).collect();
    let mut worse = Vec::new();
    let mut compared = 0;
    for result in now {
        let (Some(ratio), Some(old)) =
            (result.ratio, saved.get(&result.key()).and_then(|r| r.ratio))
        else {
            continue;
        };
        compared += 1;
        let change = ratio / old;
        let is_worse = match result.better {
            Better::Higher => change < 0.9,
            Better::Lower => change > 1.1,
        };
        if is_worse {
            worse.push(format!(
                "{} {} {:?}: ratio {ratio:.3} vs {old:.3} ({:+.0}%)",
                result.bench,
                result.metric,
                result.params,
                (change - 1.0) * 100.0
            ));
        }
    }
    (worse, compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(metric: &str, better: Better, ratio_of: f64) -> BenchResult {
        BenchResult::new("push", metric, ratio_of, "x", better)
            .param("clients", 8)
            .against("base", 1.0)
    }

    #[test]
    fn only_ratios_worse_by_more_than_ten_percent_are_regressions() {
        let saved = [
            figure("per_s", Better::Higher, 100.0),
            figure("latency", Better::Lower, 10.0),
            figure("other", Better::Lower, 10.0),
        ];
        let now = [
            figure("per_s", Better::Higher, 89.0),
            figure("latency", Better::Lower, 10.9),
            figure("other", Better::Lower, 11.5),
            figure("unmatched", Better::Lower, 99.0),
        ];
        let (worse, compared) = regressions(&saved, &now);
        assert_eq!(compared, 3);
        assert_eq!(worse.len(), 2, "{worse:?}");
        assert!(worse[0].starts_with("push per_s"));
        assert!(worse[1].starts_with("push other"));
        // A different parameter set is another figure.
        let (_, compared) = regressions(
            &saved,
            &[figure("per_s", Better::Higher, 1.0).param("clients", 64)],
        );
        assert_eq!(compared, 0);
    }

    #[test]
    fn results_round_trip_through_json_lines() {
        let result = figure("per_s", Better::Higher, 5.0);
        let line = serde_json::to_string(&result).expect("json");
        assert!(line.contains("\"baseline_metric\":\"base\""));
        assert_eq!(
            serde_json::from_str::<BenchResult>(&line).expect("parse"),
            result
        );
    }
}
