//! Latency histograms with fixed buckets, cheap enough to be always on: an observation is a few
//! relaxed atomic adds, no lock and no allocation. They render as Prometheus histograms, and
//! [`Parsed`] reads them back from a `/metrics` text, so that `kuberaft bench` can subtract a
//! scrape taken before a run from one taken after it and report means and quantiles of the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds for the stages of a request, in seconds: fine below a millisecond, where a
/// write on a fast disk spends its time, and up to the 5 s a proposal may wait.
pub const STAGE_BUCKETS: [f64; 26] = [
    0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_25, 0.000_3, 0.000_4, 0.000_5, 0.000_6, 0.000_75,
    0.001, 0.001_25, 0.001_5, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// A histogram of durations over `STAGE_BUCKETS`.
#[derive(Debug)]
pub struct Histogram {
    /// Per bucket (not cumulative), plus one past the last bound.
    buckets: [AtomicU64; STAGE_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let slot = STAGE_BUCKETS.iter().position(|upper| seconds <= *upper).unwrap_or(STAGE_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The series of this histogram in Prometheus' text format, under `name` with `labels`
    /// (`key="value"` pairs, comma-separated, or empty); the HELP and TYPE lines are the caller's.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bucket, upper) in self.buckets.iter().zip(STAGE_BUCKETS) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{upper}\"}} {cumulative}");
        }
        cumulative += self.buckets[STAGE_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A histogram as read from a Prometheus text: cumulative counts per upper bound, the sum
/// (seconds) and the count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Parsed {
    /// Every histogram named `name` in `text`, by the value of its label `label` (the series
    /// without that label are left out). Lines that do not parse are skipped: this reads what a
    /// member serves, and a reader must not fail on a series it does not know.
    pub fn all(text: &str, name: &str, label: &str) -> BTreeMap<String, Parsed> {
        Self::collect(text, name, |labels| labels.get(label).cloned())
    }

    /// The histogram named `name` that has no label (but `le`), if `text` has it.
    pub fn one(text: &str, name: &str) -> Option<Parsed> {
        Self::collect(text, name, |labels| labels.keys().all(|k| k == "le").then(String::new)).remove("")
    }

    fn collect(
        text: &str,
        name: &str,
        key_of: impl Fn(&BTreeMap<String, String>) -> Option<String>,
    ) -> BTreeMap<String, Parsed> {
        let mut out: BTreeMap<String, Parsed> = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(name)) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            let Some(key) = key_of(&labels) else { continue };
            let entry = out.entry(key).or_default();
            match metric.strip_prefix(name) {
                Some("_bucket") => {
                    let Some(le) = labels.get("le") else { continue };
                    let upper = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                    if !upper.is_nan() {
                        entry.buckets.push((upper, value));
                    }
                }
                Some("_sum") => entry.sum = value,
                Some("_count") => entry.count = value,
                _ => {}
            }
        }
        for parsed in out.values_mut() {
            parsed.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }

    /// What was observed between `before` and `self` (a later scrape of the same series).
    pub fn since(&self, before: &Parsed) -> Parsed {
        let earlier = |upper: f64| before.buckets.iter().find(|(u, _)| *u == upper).map_or(0.0, |(_, c)| *c);
        Parsed {
            buckets: self.buckets.iter().map(|(u, c)| (*u, (c - earlier(*u)).max(0.0))).collect(),
            sum: (self.sum - before.sum).max(0.0),
            count: (self.count - before.count).max(0.0),
        }
    }

    /// Adds what `other` observed (a histogram of the same buckets, from another member).
    pub fn add(&mut self, other: &Parsed) {
        for (upper, count) in &other.buckets {
            match self.buckets.iter_mut().find(|(u, _)| u == upper) {
                Some((_, mine)) => *mine += count,
                None => self.buckets.push((*upper, *count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile, interpolated linearly within its bucket as Prometheus'
    /// `histogram_quantile` does (the first bucket from 0; a quantile in the last, unbounded
    /// bucket is its lower bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, c)| *c)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(upper, cumulative) in &self.buckets {
            if cumulative >= rank {
                if upper.is_infinite() {
                    return Some(lower.0);
                }
                let inside = cumulative - lower.1;
                let share = if inside > 0.0 { (rank - lower.1) / inside } else { 0.0 };
                return Some(lower.0 + (upper - lower.0) * share);
            }
            lower = (upper, cumulative);
        }
        Some(lower.0)
    }
}

/// `a="1",b="x"` into a map (values unescaped of `\"` and `\\`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    #[test]
    fn a_rendered_histogram_reads_back_with_its_count_sum_and_quantiles() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.observe(ms(0.18));
        }
        for _ in 0..10 {
            h.observe(ms(3.0));
        }
        h.observe(ms(9000.0));
        let mut text = String::from("# TYPE x histogram\n");
        h.render(&mut text, "x_seconds", "point=\"a\"");
        Histogram::default().render(&mut text, "x_seconds", "point=\"b\"");
        text.push_str("x_seconds_bucket{point=\"c\",le=\"garbage\"} 1\nnot a line\n");
        let parsed = Parsed::all(&text, "x_seconds", "point");
        let a = &parsed["a"];
        assert_eq!(a.count, 101.0);
        assert!((a.sum - (90.0 * 0.000_18 + 10.0 * 0.003 + 9.0)).abs() < 1e-6, "{}", a.sum);
        // 90 of 101 are in (0.15 ms, 0.2 ms]: the median interpolates inside it.
        let p50 = a.quantile(0.5).expect("a median");
        assert!(p50 > 0.000_15 && p50 <= 0.000_2, "{p50}");
        let p95 = a.quantile(0.95).expect("p95");
        assert!(p95 > 0.002 && p95 <= 0.003, "{p95}");
        // The one past every bound is reported at the last bound.
        assert_eq!(a.quantile(1.0), Some(5.0));
        assert_eq!(parsed["b"].quantile(0.5), None);
        assert_eq!(parsed["b"].mean(), None);
        assert!(parsed.get("c").is_none_or(|c| c.buckets.is_empty()));
    }

    #[test]
    fn the_difference_of_two_scrapes_is_what_happened_between_them() {
        let h = Histogram::default();
        h.observe(ms(10.0));
        let mut before = String::new();
        h.render(&mut before, "y", "");
        for _ in 0..4 {
            h.observe(ms(0.1));
        }
        let mut after = String::new();
        h.render(&mut after, "y", "");
        // Unlabelled series have no key: read them under a label they lack, nothing comes back.
        assert!(Parsed::all(&after, "y", "point").is_empty());
        let b = Parsed::one(&before, "y").expect("before");
        let a = Parsed::one(&after, "y").expect("after");
        assert_eq!(Parsed::one(&after, "z"), None);
        let run = a.since(&b);
        assert_eq!(run.count, 4.0);
        let mut two = run.clone();
        two.add(&run);
        assert_eq!((two.count, two.buckets.last().map(|b| b.1)), (8.0, Some(8.0)));
        assert_eq!(two.quantile(0.5), run.quantile(0.5));
        assert!((run.mean().expect("a mean") - 0.000_1).abs() < 1e-9);
        assert!(run.quantile(0.99).expect("p99") <= 0.000_1);
    }

    #[test]
    fn labels_with_escapes_and_commas_parse() {
        let labels = parse_labels(r#"a="1",b="x,\"y\"\\",le="0.5""#);
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b"], "x,\"y\"\\");
        assert_eq!(labels["le"], "0.5");
    }
}
