//! Latency samples and the figures drawn from them.

use std::time::Duration;

/// The figures of one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Completed operations.
    pub ops: usize,
    /// Operations per second over the whole run.
    pub per_second: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// Computes figures from per-operation latencies measured over `elapsed`.
pub fn figures(mut samples: Vec<Duration>, elapsed: Duration) -> Figures {
    samples.sort_unstable();
    let ops = samples.len();
    Figures {
        ops,
        per_second: ops as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50_ms: percentile(&samples, 0.50),
        p99_ms: percentile(&samples, 0.99),
    }
}

/// The `q` quantile (nearest rank) of sorted samples, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    let index = rank.saturating_sub(1).min(sorted.len() - 1);
    sorted
        .get(index)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let f = figures(samples, Duration::from_secs(2));
        assert_eq!(f.ops, 100);
        assert!((f.per_second - 50.0).abs() < 1e-9);
        assert!((f.p50_ms - 50.0).abs() < 1e-9);
        assert!((f.p99_ms - 99.0).abs() < 1e-9);
        assert!(figures(vec![], Duration::from_secs(1)).p99_ms.is_nan());
    }
}
