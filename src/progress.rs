//! Progress of a run: on a terminal, a live line per stage with its elapsed time and what
//! it has processed; elsewhere (cron, Airflow) the same facts as plain log lines.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Time spent per stage, for the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
}

/// Seconds of each step of a stage, logged at debug level (`KLANTBEELD_LOG=klantbeeld=debug`):
/// where a slow stage spends its time.
pub struct Lap {
    stage: &'static str,
    at: Instant,
}

impl Lap {
    pub fn start(stage: &'static str) -> Lap {
        Lap { stage, at: Instant::now() }
    }

    pub fn done(&mut self, step: &str) {
        tracing::debug!(stage = self.stage, step, seconds = self.at.elapsed().as_secs_f64(), "step");
        self.at = Instant::now();
    }
}

/// Tracks the stages of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    current: Option<(String, Instant)>,
    pub timings: Vec<StageTiming>,
}

impl Progress {
    /// `live`: draw on the terminal (only when stderr is one and the log is human text).
    pub fn new(live: bool) -> Progress {
        let bar = live.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar, current: None, timings: Vec::new() }
    }

    /// Starts a stage (ending the one before).
    pub fn stage(&mut self, stage: &str) {
        self.stop();
        tracing::info!(stage, "stage started");
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{stage} ..."));
        }
        self.current = Some((stage.to_string(), Instant::now()));
    }

    /// What the current stage has processed so far ("4,743 identity records").
    pub fn note(&self, what: &str) {
        let stage = self.current.as_ref().map(|(s, _)| s.as_str()).unwrap_or("run");
        tracing::info!(stage, progress = what, "progress");
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{stage}: {what}"));
        }
    }

    /// Ends the current stage.
    pub fn stop(&mut self) {
        if let Some((stage, t)) = self.current.take() {
            let seconds = t.elapsed().as_secs_f64();
            tracing::info!(stage = stage.as_str(), seconds, "stage finished");
            if let Some(bar) = &self.bar {
                bar.println(format!("  {stage:<8} {seconds:>7.1}s"));
            }
            self.timings.push(StageTiming { stage, seconds });
        }
    }

    /// Ends the display.
    pub fn finish(&mut self) {
        self.stop();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_timed_in_order() {
        let mut p = Progress::new(false);
        p.stage("extract");
        p.note("3 files");
        p.stage("stage");
        p.finish();
        let names: Vec<&str> = p.timings.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(names, ["extract", "stage"]);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
