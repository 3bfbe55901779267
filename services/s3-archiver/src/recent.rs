//! Event ids archived recently, per partition of `ingest.raw.v1`: a client that retries a request
//! sends the same events again (same ids, so the same partition) at new offsets, possibly in
//! another segment, where merging alone would not see the first copy.
//!
//! The window is bounded by count and by age (measured on the records' ingest time, so a replay
//! decides as the first pass did) and lives in memory: it starts empty and is seeded from the
//! segment objects read back when work resumes, so a retry arriving across a restart can be
//! archived twice only if its first copy sits in a segment that was not read back.

use std::collections::{HashMap, VecDeque};

/// Bounds of the window, per partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowLimits {
    pub(crate) max_ids: usize,
    pub(crate) max_age_micros: i64,
}

#[derive(Debug, Default)]
struct Window {
    /// Event id → the offset it was archived at.
    ids: HashMap<String, i64>,
    /// Arrival order: (ingest time, id, offset), oldest first.
    order: VecDeque<(i64, String, i64)>,
    newest: i64,
}

/// Recently archived event ids of every partition seen.
#[derive(Debug)]
pub(crate) struct RecentIds {
    limits: WindowLimits,
    partitions: HashMap<i32, Window>,
}

impl RecentIds {
    pub(crate) fn new(limits: WindowLimits) -> Self {
        Self {
            limits,
            partitions: HashMap::new(),
        }
    }

    /// Whether `event_id` was archived from `partition` at another offset than `offset`: this
    /// record is then a retry of an event already in the archive. The same offset is the same
    /// record delivered again, which merging absorbs.
    pub(crate) fn archived_elsewhere(&self, partition: i32, event_id: &str, offset: i64) -> bool {
        self.partitions
            .get(&partition)
            .and_then(|w| w.ids.get(event_id))
            .is_some_and(|&seen| seen != offset)
    }

    /// Notes that `event_id` is archived from `partition` at `offset`.
    pub(crate) fn remember(
        &mut self,
        partition: i32,
        event_id: &str,
        offset: i64,
        ingest_time: i64,
    ) {
        if self.limits.max_ids == 0 {
            return;
        }
        let window = self.partitions.entry(partition).or_default();
        match window.ids.get(event_id) {
            Some(&seen) if seen <= offset => return,
            _ => {}
        }
        let _ = window.ids.insert(event_id.to_owned(), offset);
        window
            .order
            .push_back((ingest_time, event_id.to_owned(), offset));
        window.newest = window.newest.max(ingest_time);
        let oldest_kept = window.newest.saturating_sub(self.limits.max_age_micros);
        while let Some((at, _, _)) = window.order.front() {
            if window.order.len() <= self.limits.max_ids && *at >= oldest_kept {
                break;
            }
            if let Some((_, id, offset)) = window.order.pop_front()
                && window.ids.get(&id) == Some(&offset)
            {
                let _ = window.ids.remove(&id);
            }
        }
    }

    /// Ids in the window of `partition`.
    #[cfg(test)]
    fn len(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, |w| w.ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    fn window(max_ids: usize) -> RecentIds {
        RecentIds::new(WindowLimits {
            max_ids,
            max_age_micros: 15 * MINUTE,
        })
    }

    #[test]
    fn a_retry_at_another_offset_is_recognised_a_redelivery_is_not() {
        let mut recent = window(10);
        recent.remember(0, "a", 5, 0);
        assert!(recent.archived_elsewhere(0, "a", 900));
        assert!(!recent.archived_elsewhere(0, "a", 5));
        assert!(!recent.archived_elsewhere(1, "a", 900), "per partition");
        assert!(!recent.archived_elsewhere(0, "b", 900));
    }

    #[test]
    fn the_window_is_bounded_by_count_and_by_ingest_time() {
        let mut recent = window(3);
        for (offset, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            recent.remember(0, id, offset as i64, 0);
        }
        assert_eq!(recent.len(0), 3);
        assert!(!recent.archived_elsewhere(0, "a", 99), "oldest dropped");
        assert!(recent.archived_elsewhere(0, "d", 99));

        let mut recent = window(100);
        recent.remember(0, "old", 1, 0);
        recent.remember(0, "recent", 2, 10 * MINUTE);
        assert!(recent.archived_elsewhere(0, "old", 99));
        recent.remember(0, "new", 3, 16 * MINUTE);
        assert!(
            !recent.archived_elsewhere(0, "old", 99),
            "older than 15 min"
        );
        assert!(recent.archived_elsewhere(0, "recent", 99));
    }

    #[test]
    fn remembering_again_does_not_shorten_an_ids_stay() {
        let mut recent = window(2);
        recent.remember(0, "a", 1, 0);
        recent.remember(0, "a", 1, 0);
        recent.remember(0, "b", 2, 0);
        assert_eq!(recent.len(0), 2);
        assert!(recent.archived_elsewhere(0, "a", 9));
        let mut off = window(0);
        off.remember(0, "a", 1, 0);
        assert!(
            !off.archived_elsewhere(0, "a", 9),
            "a zero-sized window is off"
        );
    }
}
