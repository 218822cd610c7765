//! Transfer rate and time left of a download or copy, from the progress it really made: bytes stored over the
//! last few seconds, not a guess.

use std::collections::VecDeque;

/// Seconds of history the rate is measured over.
pub const RATE_WINDOW_SECONDS: f64 = 8.0;

/// Progress samples of one running transfer.
#[derive(Debug, Clone, Default)]
pub struct TransferMeter {
    /// `(seconds, bytes done)`, oldest first; the first one is where the transfer (re)started.
    samples: VecDeque<(f64, u64)>,
}

impl TransferMeter {
    /// A meter that starts at `done` bytes (what was stored before) at time `now` (seconds).
    pub fn start(now: f64, done: u64) -> Self {
        Self { samples: VecDeque::from([(now, done)]) }
    }

    /// Records `done` bytes at `now`; samples older than the window are dropped, keeping one before it.
    pub fn record(&mut self, now: f64, done: u64) {
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && self.samples[1].0 < now - RATE_WINDOW_SECONDS {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window, `None` before any measurable progress.
    pub fn rate(&self) -> Option<f64> {
        let (&(t0, b0), &(t1, b1)) = (self.samples.front()?, self.samples.back()?);
        (t1 > t0 && b1 > b0).then(|| (b1 - b0) as f64 / (t1 - t0))
    }

    /// Seconds until `total` bytes at the current rate.
    pub fn eta(&self, total: u64) -> Option<f64> {
        let done = self.samples.back()?.1;
        self.rate().map(|rate| total.saturating_sub(done) as f64 / rate)
    }
}

/// `3 s`, `4 min 05 s`, `2 h 10 min`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_recent_progress() {
        let mut meter = TransferMeter::start(100.0, 1_000);
        assert_eq!(meter.rate(), None);
        meter.record(102.0, 3_000);
        assert_eq!(meter.rate(), Some(1_000.0));
        assert_eq!(meter.eta(10_000), Some(7.0));
        // After a slow-down the window forgets the fast start: 20 s later only the last 8 s (and one sample
        // before) count.
        for t in 1..=10 {
            meter.record(102.0 + 2.0 * t as f64, 3_000 + 100 * t);
        }
        assert_eq!(meter.rate(), Some(50.0));
        assert_eq!(meter.eta(4_500), Some(10.0));
    }

    #[test]
    fn a_stalled_transfer_has_no_rate() {
        let mut meter = TransferMeter::start(0.0, 5);
        meter.record(30.0, 5);
        assert_eq!((meter.rate(), meter.eta(10)), (None, None));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(3.4), "3 s");
        assert_eq!(format_duration(245.0), "4 min 05 s");
        assert_eq!(format_duration(7_800.0), "2 h 10 min");
        assert_eq!(format_duration(-1.0), "0 s");
    }
}
