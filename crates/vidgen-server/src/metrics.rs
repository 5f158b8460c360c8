//! Counters for `GET /metrics` (Prometheus text format). Queue depth and jobs by status are
//! read from the store when scraped, so they cover every process on the data folder; the
//! counters and durations here are this process's.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub requeued: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    /// (sum of seconds, count)
    job_seconds: Mutex<(f64, u64)>,
    step_seconds: Mutex<(f64, u64)>,
}

fn add(summary: &Mutex<(f64, u64)>, seconds: f64) {
    let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
    s.0 += seconds;
    s.1 += 1;
}

impl Metrics {
    pub fn job_done(&self, seconds: f64) {
        add(&self.job_seconds, seconds);
    }

    pub fn step_done(&self, seconds: f64) {
        add(&self.step_seconds, seconds);
    }

    /// The exposition text; `by_status` from the store.
    pub fn render(&self, by_status: &[(String, i64)], ready: bool, busy_workers: usize) -> String {
        let mut out = String::new();
        let count = |s: &str| {
            by_status
                .iter()
                .find(|(k, _)| k == s)
                .map_or(0, |(_, n)| *n)
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "vidgen_queue_depth",
            "Jobs waiting for a worker.",
            count(crate::store::QUEUED).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP vidgen_jobs Jobs in the store by status.\n# TYPE vidgen_jobs gauge"
        );
        for status in [
            crate::store::QUEUED,
            crate::store::IN_PROGRESS,
            crate::store::COMPLETED,
            crate::store::FAILED,
        ] {
            let _ = writeln!(out, "vidgen_jobs{{status=\"{status}\"}} {}", count(status));
        }
        gauge(
            &mut out,
            "vidgen_ready",
            "1 when the model is loaded and a worker runs.",
            u8::from(ready).to_string(),
        );
        gauge(
            &mut out,
            "vidgen_workers_busy",
            "Workers generating right now.",
            busy_workers.to_string(),
        );
        let counters = [
            (
                "vidgen_jobs_completed_total",
                "Jobs this process completed.",
                &self.completed,
            ),
            (
                "vidgen_jobs_failed_total",
                "Jobs this process failed.",
                &self.failed,
            ),
            (
                "vidgen_jobs_cancelled_total",
                "Running jobs stopped because they were deleted.",
                &self.cancelled,
            ),
            (
                "vidgen_jobs_requeued_total",
                "Running jobs put back in the queue at shutdown.",
                &self.requeued,
            ),
            (
                "vidgen_rejected_queue_full_total",
                "Submissions refused with 429.",
                &self.rejected_queue_full,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        for (name, help, summary) in [
            (
                "vidgen_job_seconds",
                "Wall-clock seconds per finished job.",
                &self.job_seconds,
            ),
            (
                "vidgen_step_seconds",
                "Seconds per denoising step.",
                &self.step_seconds,
            ),
        ] {
            let (sum, n) = *summary.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} summary\n{name}_sum {sum}\n{name}_count {n}"
            );
        }
        out
    }
}
