//! Latency statistics for the benchmarks.

use std::time::Duration;

/// The `p` quantile (0..=1) of `v` (sorted in place); zero when empty.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// `123 µs`.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `1.23 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 when unreadable.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Process id of the first process whose command line's program ends with `prog`.
pub fn pid_of(prog: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|d| {
        let pid: u32 = d.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(d.path().join("cmdline")).ok()?;
        let first = cmd.split(|b| *b == 0).next()?;
        std::str::from_utf8(first)
            .ok()?
            .ends_with(prog)
            .then_some(pid)
    })
}

/// One figure over a benchmark's repeats: the median, and the smallest and largest, so that a
/// slow run on a noisy machine shows as such.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// Median of the repeats.
    pub median: Duration,
    /// Smallest.
    pub min: Duration,
    /// Largest.
    pub max: Duration,
}

impl Spread {
    /// Of the repeats' values (zero when none).
    pub fn of(v: &[Duration]) -> Self {
        let mut v = v.to_vec();
        v.sort();
        Self {
            median: pct(&mut v, 0.5),
            min: v.first().copied().unwrap_or_default(),
            max: v.last().copied().unwrap_or_default(),
        }
    }

    /// `123 µs (110–140)`.
    pub fn us(&self) -> String {
        format!(
            "{} ({:.0}–{:.0})",
            us(self.median),
            self.min.as_secs_f64() * 1e6,
            self.max.as_secs_f64() * 1e6
        )
    }

    /// `1.23 ms (1.10–1.40)`.
    pub fn ms(&self) -> String {
        format!(
            "{} ({:.2}–{:.2})",
            ms(self.median),
            self.min.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

/// `a / b` (how many times `b` fits in `a`); 0 when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        let ms = Duration::from_millis;
        let s = Spread::of(&[ms(5), ms(1), ms(3)]);
        assert_eq!((s.median, s.min, s.max), (ms(3), ms(1), ms(5)));
        assert_eq!(s.ms(), "3.00 ms (1.00–5.00)");
        assert_eq!(ratio(ms(6), ms(3)), 2.0);
    }
}
