//! Automatic compaction of the key history, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`:
//! - `periodic`: keep the history of the last retention period. The revision is sampled every
//!   tenth of the compaction interval (the period, at most one hour), and every interval the
//!   leader compacts to the newest sample taken at least one period ago.
//! - `revision`: every five minutes the leader compacts to the current revision minus the
//!   retention.
//!
//! Only the leader proposes compactions; they go through the log like any write, so every member
//! compacts at the same point of its history. A retention of 0 turns it off.
//!
//! `Compactor` is the decision alone, driven by a clock the caller passes in (tested without
//! time passing); `run` drives it on the member.

use std::collections::VecDeque;
use std::time::Duration;

use clap::ValueEnum;

use super::handle::NodeHandle;
use crate::store::mvcc::Revision;

/// etcd's compaction interval cap for the periodic mode.
const MAX_PERIODIC_INTERVAL: Duration = Duration::from_secs(3600);
/// etcd samples the revision this many times per periodic interval.
const SAMPLES_PER_INTERVAL: u32 = 10;
/// etcd's interval for the revision mode.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

/// What to keep, from `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    Off,
    /// Keep the history of this long.
    Period(Duration),
    /// Keep this many revisions.
    Revisions(i64),
}

impl Retention {
    /// Parses the retention as etcd does: for `periodic` a duration (`30m`, `1h`, `90s`) or a
    /// plain number of hours; for `revision` a number of revisions. `0` turns compaction off.
    pub fn parse(mode: CompactionMode, text: &str) -> Result<Retention, String> {
        let text = text.trim();
        let bad = |what: &str| format!("--auto-compaction-retention '{text}' is not {what}");
        match mode {
            CompactionMode::Revision => match text.parse::<i64>() {
                Ok(0) => Ok(Retention::Off),
                Ok(n) if n > 0 => Ok(Retention::Revisions(n)),
                _ => Err(bad("a number of revisions (mode revision)")),
            },
            CompactionMode::Periodic => {
                let period = match text.parse::<u64>() {
                    Ok(hours) => hours.checked_mul(3600).map(Duration::from_secs),
                    Err(_) => parse_duration(text),
                };
                match period {
                    Some(period) if period.is_zero() => Ok(Retention::Off),
                    Some(period) => Ok(Retention::Period(period)),
                    None => Err(bad("a duration such as 30m or 1h, or a number of hours (mode periodic)")),
                }
            }
        }
    }

    /// How often the compactor looks at the store.
    pub fn tick(self) -> Duration {
        match self {
            Retention::Off => REVISION_INTERVAL,
            Retention::Period(period) => (compact_interval(period) / SAMPLES_PER_INTERVAL).max(MIN_TICK),
            Retention::Revisions(_) => REVISION_INTERVAL,
        }
    }
}

/// The compactor never looks more often than this, however short the retention (a zero tick
/// would stop its timer).
const MIN_TICK: Duration = Duration::from_millis(100);

fn compact_interval(period: Duration) -> Duration {
    period.min(MAX_PERIODIC_INTERVAL)
}

/// `<number><unit>` with units `ms`, `s`, `m`, `h`, and sums of them (`1h30m`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit);
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(seconds).ok()?)?;
        rest = tail;
    }
    (!text.is_empty()).then_some(total)
}

/// The compaction decision. Time is what the caller says it is: the time since the compactor
/// started.
#[derive(Debug)]
pub struct Compactor {
    retention: Retention,
    /// (time, revision) samples, oldest first (periodic mode).
    samples: VecDeque<(Duration, Revision)>,
    last_compaction: Duration,
    /// `last_compaction` before the attempt `tick` asked for last, restored if it fails.
    before_attempt: Duration,
}

impl Compactor {
    pub fn new(retention: Retention) -> Compactor {
        Compactor {
            retention,
            samples: VecDeque::new(),
            last_compaction: Duration::ZERO,
            before_attempt: Duration::ZERO,
        }
    }

    /// Called every `Retention::tick` with the store's current and compacted revisions: the
    /// revision to compact to now, if any. Non-leaders only sample.
    pub fn tick(&mut self, now: Duration, revision: Revision, compacted: Revision, leader: bool) -> Option<Revision> {
        let target = match self.retention {
            Retention::Off => None,
            Retention::Revisions(keep) => {
                let due = now.saturating_sub(self.last_compaction) >= REVISION_INTERVAL;
                due.then(|| revision.saturating_sub(keep))
            }
            Retention::Period(period) => {
                self.samples.push_back((now, revision));
                // Keep the newest sample at least one period old, and everything after it.
                while self.samples.len() > 1 && self.samples[1].0 + period <= now {
                    self.samples.pop_front();
                }
                let due = now.saturating_sub(self.last_compaction) >= compact_interval(period);
                let old_enough = self.samples.front().filter(|(at, _)| *at + period <= now);
                old_enough.filter(|_| due).map(|(_, rev)| *rev)
            }
        };
        let target = target.filter(|t| leader && *t > compacted && *t > 0)?;
        self.before_attempt = self.last_compaction;
        self.last_compaction = now;
        Some(target)
    }

    /// The compaction the last `tick` asked for did not happen (no leader, no quorum): it is
    /// due again at the next tick, as etcd's compactors retry, rather than an interval later.
    pub fn failed(&mut self) {
        self.last_compaction = self.before_attempt;
    }
}

/// Runs the compactor on this member until the process ends: every tick, when this member
/// leads, it proposes the compaction `Compactor::tick` asks for.
pub async fn run(node: NodeHandle, retention: Retention) {
    if retention == Retention::Off {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut compactor = Compactor::new(retention);
    let mut ticks = tokio::time::interval(retention.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (revision, compacted) = node.with_kv(|kv| (kv.current_revision(), kv.compacted_revision()));
        let Some(target) = compactor.tick(start.elapsed(), revision, compacted, node.is_leader()) else { continue };
        // The leader's own compaction travels bare (`store::auth::Caller`).
        match node.compact(&crate::store::auth::Caller::default(), target).await {
            Ok(_) => tracing::info!(revision = target, ?retention, "auto-compaction: compacted the key history"),
            Err(e) => {
                compactor.failed();
                tracing::warn!(revision = target, error = %e, "auto-compaction failed; it tries again at the next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn retention_parses_as_etcd_reads_it() {
        let periodic = |t| Retention::parse(CompactionMode::Periodic, t);
        assert_eq!(periodic("1"), Ok(Retention::Period(secs(3600))), "a plain number is hours");
        assert_eq!(periodic("30m"), Ok(Retention::Period(secs(1800))));
        assert_eq!(periodic("1h30m"), Ok(Retention::Period(secs(5400))));
        assert_eq!(periodic("500ms"), Ok(Retention::Period(Duration::from_millis(500))));
        assert_eq!(periodic("0"), Ok(Retention::Off));
        for bad in ["", "h", "5x", "-1", "1h-"] {
            assert!(periodic(bad).is_err(), "{bad:?} accepted");
        }
        let revision = |t| Retention::parse(CompactionMode::Revision, t);
        assert_eq!(revision("1000"), Ok(Retention::Revisions(1000)));
        assert_eq!(revision("0"), Ok(Retention::Off));
        assert!(revision("1h").is_err() && revision("-5").is_err());
        assert_eq!(Retention::Period(secs(3600)).tick(), secs(360), "a tenth of the interval");
        assert_eq!(Retention::Period(secs(72 * 3600)).tick(), secs(360), "the interval is at most an hour");
    }

    #[test]
    fn periodic_compacts_to_the_revision_of_one_period_ago_once_per_interval() {
        let mut c = Compactor::new(Retention::Period(secs(100)));
        // Revision 10 * t at time t; ticks every 10 s (a tenth of the interval).
        let mut compactions = Vec::new();
        for t in (0..=300).step_by(10) {
            if let Some(rev) = c.tick(secs(t), 10 * t as i64 + 1, -1, true) {
                compactions.push((t, rev));
            }
        }
        // At 100 s the sample of 0 s is one period old; then every 100 s, the sample one period back.
        assert_eq!(compactions, vec![(100, 1), (200, 1001), (300, 2001)]);
    }

    #[test]
    fn periodic_keeps_sampling_on_a_follower_and_compacts_once_it_leads() {
        let mut c = Compactor::new(Retention::Period(secs(100)));
        for t in (0..=150).step_by(10) {
            assert_eq!(c.tick(secs(t), t as i64 + 1, -1, false), None, "a follower never compacts");
        }
        assert_eq!(c.tick(secs(160), 161, -1, true), Some(61), "the sample of 60 s, one period before 160 s");
        // Nothing new until the next interval, and never to a revision already compacted.
        assert_eq!(c.tick(secs(170), 171, 61, true), None);
        assert_eq!(c.tick(secs(260), 261, 161, true), None, "161 is compacted already");
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_every_five_minutes() {
        let mut c = Compactor::new(Retention::Revisions(100));
        assert_eq!(c.tick(secs(60), 1000, -1, true), None, "not due before five minutes");
        assert_eq!(c.tick(secs(300), 1000, -1, true), Some(900));
        assert_eq!(c.tick(secs(360), 5000, 900, true), None, "due again only five minutes later");
        assert_eq!(c.tick(secs(600), 5000, 900, false), None, "only the leader compacts");
        assert_eq!(c.tick(secs(610), 5000, 900, true), Some(4900));
        assert_eq!(c.tick(secs(910), 50, -1, true), None, "fewer revisions than the retention");
    }

    #[test]
    fn a_failed_compaction_is_tried_again_at_the_next_tick_not_an_interval_later() {
        let mut c = Compactor::new(Retention::Period(secs(100)));
        for t in (0..100).step_by(10) {
            c.tick(secs(t), t as i64 + 1, -1, true);
        }
        assert_eq!(c.tick(secs(100), 101, -1, true), Some(1));
        c.failed();
        assert_eq!(c.tick(secs(110), 111, -1, true), Some(11), "the next tick tries again");
        assert_eq!(c.tick(secs(120), 121, 11, true), None, "once it worked, the next is an interval later");
        assert_eq!(c.tick(secs(210), 211, 11, true), Some(111));
        let mut c = Compactor::new(Retention::Revisions(100));
        assert_eq!(c.tick(secs(300), 1000, -1, true), Some(900));
        c.failed();
        assert_eq!(c.tick(secs(600), 1000, -1, true), Some(900), "revision mode ticks every five minutes anyway");
    }

    #[test]
    fn off_never_compacts() {
        let mut c = Compactor::new(Retention::Off);
        for t in 0..100 {
            assert_eq!(c.tick(secs(t * 3600), 1_000_000, -1, true), None);
        }
    }

    #[test]
    fn a_tiny_retention_still_ticks() {
        let retention = Retention::parse(CompactionMode::Periodic, "0.000001ms").unwrap();
        assert!(matches!(retention, Retention::Period(p) if !p.is_zero()));
        assert_eq!(retention.tick(), MIN_TICK);
        assert_eq!(Retention::parse(CompactionMode::Periodic, "10m").unwrap().tick(), Duration::from_secs(60));
    }
}
