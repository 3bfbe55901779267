//! Usage state per input partition: "usage derived from partition p up to offset o". The state is
//! a pure function of the partition's records before `next_offset`, so whichever instance resumes
//! from a published state and applies the records from exactly `next_offset` on reaches the same
//! state; that is what makes counting exactly-once across crashes, replays and rebalances.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::period::Period;
use crate::pricing::Meter;

/// Usage of one tenant in one period, from one partition (or summed over all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub events: u64,
    pub ingest_bytes: u64,
    pub spans: u64,
    /// Distinct `host/metric` series; a set so partitions and replays merge without counting
    /// a series twice.
    pub series: BTreeSet<String>,
}

impl Usage {
    pub fn quantity(&self, meter: Meter) -> u64 {
        match meter {
            Meter::Events => self.events,
            Meter::IngestBytes => self.ingest_bytes,
            Meter::Spans => self.spans,
            Meter::MetricSeries => self.series.len() as u64,
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.events += other.events;
        self.ingest_bytes += other.ingest_bytes;
        self.spans += other.spans;
        self.series.extend(other.series.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        Meter::ALL.iter().all(|m| self.quantity(*m) == 0)
    }
}

/// What an event adds to its tenant's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metered {
    Event { bytes: u64 },
    Span { bytes: u64 },
    Sample { bytes: u64, series: String },
}

impl Metered {
    fn add_to(&self, usage: &mut Usage) {
        match self {
            Self::Event { bytes } => {
                usage.events += 1;
                usage.ingest_bytes += bytes;
            }
            Self::Span { bytes } => {
                usage.spans += 1;
                usage.ingest_bytes += bytes;
            }
            Self::Sample { bytes, series } => {
                usage.ingest_bytes += bytes;
                let _ = usage.series.insert(series.clone());
            }
        }
    }
}

/// The published state of one input partition (`billing.usage.v1`, key `p{partition}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub partition: i32,
    /// Every record before this offset is reflected here; the next one to apply.
    pub next_offset: i64,
    /// First offset of the dedup window: a restart re-reads `dedup_from..next_offset` to rebuild
    /// the set of recent event ids (without counting).
    pub dedup_from: i64,
    /// Latest ingest time seen; the dedup window and period retention are measured from it so
    /// they depend on the records only, never on the clock.
    pub max_ingest_time: i64,
    /// tenant -> period start -> usage.
    pub usage: BTreeMap<String, BTreeMap<i64, Usage>>,
}

impl PartitionState {
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    pub fn key(partition: i32) -> String {
        format!("p{partition}")
    }

    pub fn add(&mut self, tenant: &str, period_start: i64, metered: &Metered) {
        let usage = self
            .usage
            .entry(tenant.to_owned())
            .or_default()
            .entry(period_start)
            .or_default();
        metered.add_to(usage);
    }

    /// Oldest period start still kept: `retain` periods before the latest one seen.
    pub fn horizon(&self, period: Period, retain: u32) -> i64 {
        let mut start = period.start_of(self.max_ingest_time);
        for _ in 0..retain {
            start = period.previous(start);
        }
        start
    }

    /// Drops periods older than the horizon (long invoiced; keeps the record small).
    pub fn prune(&mut self, period: Period, retain: u32) {
        let horizon = self.horizon(period, retain);
        self.usage.retain(|_, periods| {
            periods.retain(|start, _| *start >= horizon);
            !periods.is_empty()
        });
    }
}

/// Event ids seen in one partition within the window (by ingest time), as 128-bit digests:
/// a fraction of the memory of the ids, with a collision chance far below one in 10^20.
#[derive(Debug, Default)]
pub struct Dedup {
    window_micros: i64,
    seen: HashSet<u128>,
    /// Insertion order: (ingest time, digest, offset), evicted from the front.
    order: VecDeque<(i64, u128, i64)>,
}

fn digest(event_id: &str) -> u128 {
    let hash = Sha256::digest(event_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    u128::from_be_bytes(bytes)
}

impl Dedup {
    pub fn new(window_micros: i64) -> Self {
        Self {
            window_micros,
            ..Self::default()
        }
    }

    /// Records the id; false when it was already seen within the window (a duplicate).
    /// `max_ingest_time` is the partition's latest ingest time including this record.
    pub fn first_sighting(
        &mut self,
        event_id: &str,
        ingest_time: i64,
        offset: i64,
        max_ingest_time: i64,
    ) -> bool {
        // Forget first: an id last seen longer than the window ago is a new sighting.
        self.evict(max_ingest_time);
        let id = digest(event_id);
        let fresh = self.seen.insert(id);
        if fresh {
            self.order.push_back((ingest_time, id, offset));
        }
        fresh
    }

    /// Forgets ids older than the window before `max_ingest_time`.
    pub fn evict(&mut self, max_ingest_time: i64) {
        let oldest = max_ingest_time.saturating_sub(self.window_micros);
        while let Some((time, id, _)) = self.order.front() {
            if *time >= oldest {
                break;
            }
            let _ = self.seen.remove(id);
            let _ = self.order.pop_front();
        }
    }

    /// First offset whose id is still remembered, `next_offset` when none is.
    pub fn window_start(&self, next_offset: i64) -> i64 {
        self.order.front().map_or(next_offset, |(_, _, o)| *o)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    #[test]
    fn duplicates_within_the_window_are_caught_and_old_ids_forgotten() {
        let mut dedup = Dedup::new(15 * MINUTE);
        assert!(dedup.first_sighting("a", 0, 0, 0));
        assert!(!dedup.first_sighting("a", MINUTE, 1, MINUTE), "retry");
        assert!(dedup.first_sighting("b", 10 * MINUTE, 2, 10 * MINUTE));
        assert_eq!(dedup.window_start(3), 0);
        // 16 minutes on, `a` left the window; `b` has not.
        assert!(dedup.first_sighting("c", 16 * MINUTE, 3, 16 * MINUTE));
        assert_eq!(dedup.window_start(4), 2);
        assert!(!dedup.first_sighting("b", 16 * MINUTE, 4, 16 * MINUTE));
        assert!(dedup.first_sighting("a", 17 * MINUTE, 5, 17 * MINUTE));
        assert_eq!(dedup.len(), 3);
    }

    #[test]
    fn replaying_the_window_rebuilds_the_same_set() {
        let ids = ["a", "b", "a", "c", "d", "b", "e", "a"];
        let mut live = Dedup::new(3 * MINUTE);
        let mut max = 0;
        let mut verdicts = Vec::new();
        for (offset, id) in ids.iter().enumerate() {
            max = max.max(offset as i64 * MINUTE);
            verdicts.push(live.first_sighting(id, offset as i64 * MINUTE, offset as i64, max));
        }
        let from = live.window_start(ids.len() as i64);
        let mut rebuilt = Dedup::new(3 * MINUTE);
        let mut max = 0;
        for (offset, id) in ids.iter().enumerate().skip(from as usize) {
            max = max.max(offset as i64 * MINUTE);
            let _ = rebuilt.first_sighting(id, offset as i64 * MINUTE, offset as i64, max);
        }
        assert_eq!(rebuilt.seen, live.seen);
        assert_eq!(rebuilt.order, live.order);
        assert_eq!(verdicts, [true, true, false, true, true, true, true, true]);
    }

    #[test]
    fn usage_adds_up_and_series_are_distinct() {
        let mut state = PartitionState::new(2);
        let sample = |s: &str| Metered::Sample {
            bytes: 10,
            series: s.into(),
        };
        state.add("acme", 0, &Metered::Event { bytes: 100 });
        state.add("acme", 0, &Metered::Span { bytes: 50 });
        state.add("acme", 0, &sample("h1/cpu"));
        state.add("acme", 0, &sample("h1/cpu"));
        state.add("acme", 0, &sample("h2/cpu"));
        let usage = &state.usage["acme"][&0];
        assert_eq!(usage.quantity(Meter::Events), 1);
        assert_eq!(usage.quantity(Meter::Spans), 1);
        assert_eq!(usage.quantity(Meter::IngestBytes), 180);
        assert_eq!(usage.quantity(Meter::MetricSeries), 2);
        let mut total = usage.clone();
        total.merge(usage);
        assert_eq!(total.events, 2);
        assert_eq!(total.series.len(), 2, "a series seen twice is one series");
    }

    #[test]
    fn pruning_keeps_the_retained_periods() {
        let period = Period::Fixed(MINUTE);
        let mut state = PartitionState::new(0);
        for start in 0..5 {
            state.add("t", start * MINUTE, &Metered::Event { bytes: 1 });
        }
        state.max_ingest_time = 4 * MINUTE + 5;
        assert_eq!(state.horizon(period, 2), 2 * MINUTE);
        state.prune(period, 2);
        let kept: Vec<i64> = state.usage["t"].keys().copied().collect();
        assert_eq!(kept, vec![2 * MINUTE, 3 * MINUTE, 4 * MINUTE]);
        let json = serde_json::to_string(&state).expect("serializes");
        let back: PartitionState = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, state);
    }
}
