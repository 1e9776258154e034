//! Counters for `/metrics` in the Prometheus text format (version 0.0.4), written by hand:
//! a handful of counters and histograms do not need a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use vlm_core::CacheStats;

/// Why a request failed, as the `kind` label of `vlm_request_errors_total`.
pub const ERROR_KINDS: &[&str] = &[
    "bad_request",
    "unauthorized",
    "not_found",
    "overloaded",
    "cancelled",
    "internal",
];

/// Seconds: from a few ms (tiny models, cache hits) to minutes (a long answer on a CPU).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A Prometheus histogram: cumulative bucket counts are computed when written.
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Default)]
struct HistogramState {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.counts[slot] += 1;
        s.sum += value;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&s.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += s.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {cumulative}", s.sum);
    }
}

/// Everything `/metrics` reports; shared by the handlers and the batching thread.
pub struct Metrics {
    requests: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    queue_depth: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// f64 bits: decode speed summed over the rows of the last batch.
    decode_tokens_per_second: AtomicU64,
    latency: Histogram,
    time_to_first_token: Histogram,
    batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            errors: Default::default(),
            queue_depth: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            decode_tokens_per_second: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
            time_to_first_token: Histogram::new(LATENCY_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failure; `kind` is one of [`ERROR_KINDS`].
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn queued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dequeued(&self) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    pub fn time_to_first_token(&self, d: Duration) {
        self.time_to_first_token.observe(d.as_secs_f64());
    }

    pub fn batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
    }

    pub fn decode_speed(&self, tokens_per_second: f64) {
        self.decode_tokens_per_second
            .store(tokens_per_second.to_bits(), Ordering::Relaxed);
    }

    /// The Prometheus text; `cache` is the model's image-cache counters.
    pub fn render(&self, cache: CacheStats) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "vlm_requests_total",
            "Chat completion requests received.",
            load(&self.requests),
        );
        let _ = writeln!(
            out,
            "# HELP vlm_request_errors_total Requests that failed, by kind.\n# TYPE vlm_request_errors_total counter"
        );
        for (kind, n) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "vlm_request_errors_total{{kind=\"{kind}\"}} {}",
                load(n)
            );
        }
        gauge(
            &mut out,
            "vlm_queue_depth",
            "Requests waiting for the model (the running batch excluded).",
            load(&self.queue_depth).to_string(),
        );
        counter(
            &mut out,
            "vlm_prompt_tokens_total",
            "Prompt tokens processed (image tokens included).",
            load(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "vlm_completion_tokens_total",
            "Tokens generated; rate() of it is the served tokens/s.",
            load(&self.completion_tokens),
        );
        gauge(
            &mut out,
            "vlm_decode_tokens_per_second",
            "Decode speed of the last batch, all its rows together.",
            f64::from_bits(load(&self.decode_tokens_per_second)).to_string(),
        );
        counter(
            &mut out,
            "vlm_image_cache_hits_total",
            "Images whose vision encoding was reused (model image cache, or the same photo twice in a batch).",
            cache.hits,
        );
        counter(
            &mut out,
            "vlm_image_cache_misses_total",
            "Images the vision tower encoded.",
            cache.misses,
        );
        self.latency.write(
            &mut out,
            "vlm_request_duration_seconds",
            "Time from a request's arrival to its last byte of answer.",
        );
        self.time_to_first_token.write(
            &mut out,
            "vlm_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token (queueing included).",
        );
        self.batch_size.write(
            &mut out,
            "vlm_batch_size",
            "Requests per batch the model ran.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for size in [1, 3, 3, 100] {
            m.batch(size);
        }
        let text = m.render(CacheStats::default());
        assert!(
            text.contains("vlm_batch_size_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("vlm_batch_size_bucket{le=\"4\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("vlm_batch_size_bucket{le=\"64\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("vlm_batch_size_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("vlm_batch_size_sum 107\n"), "{text}");
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let m = Metrics::default();
        m.error("overloaded");
        m.error("overloaded");
        m.error("no such kind");
        let text = m.render(CacheStats::default());
        assert!(text.contains("vlm_request_errors_total{kind=\"overloaded\"} 2\n"));
        assert!(text.contains("vlm_request_errors_total{kind=\"internal\"} 0\n"));
    }
}
