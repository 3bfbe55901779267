//! The content of one raw-event segment object: JSON Lines, one line per record, sorted by offset:
//!
//! `{"offset":N,"event_id":"...","event_time":"RFC3339 µs","ingest_time":"...","payload":<event>}`
//!
//! `payload` is the event's JSON as the gateway accepted it, embedded verbatim except that raw
//! `\n` / `\r` bytes become spaces: JSON strings cannot hold raw newlines, so such bytes are
//! whitespace between tokens and replacing them changes no value, while one line stays one record.
//!
//! Merging is a union by offset (a redelivered record replaces itself) that keeps, per event id,
//! only the line with the lowest offset (a client retry that reached the same object). Both rules
//! depend only on the set of records merged, so any split into batches, any order and any number
//! of redeliveries give the same bytes.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One archived record: its event id, ingest time and serialized line (no trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) event_id: String,
    pub(crate) ingest_time: i64,
    pub(crate) json: Bytes,
}

#[derive(Serialize)]
struct LineOut<'a> {
    offset: i64,
    event_id: &'a str,
    event_time: String,
    ingest_time: String,
    payload: &'a RawValue,
}

/// What merging needs of a stored line; the payload is kept as bytes, never re-parsed.
#[derive(Deserialize)]
struct LineHead {
    offset: i64,
    event_id: String,
    ingest_time: String,
}

fn rfc3339(micros: i64) -> Result<String, String> {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .ok_or_else(|| format!("time {micros} is out of range"))
}

impl Line {
    /// The line of a record. `Err` (the payload is not one JSON value in UTF-8, a time is out of
    /// range) means it can never be archived in this format.
    pub(crate) fn new(
        offset: i64,
        event_id: &str,
        event_time: i64,
        ingest_time: i64,
        payload: Vec<u8>,
    ) -> Result<(Self, i64), String> {
        let mut payload = payload;
        for byte in &mut payload {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
        // Replacing ASCII bytes cannot break UTF-8: they never occur inside a multi-byte sequence.
        let text = String::from_utf8(payload).map_err(|e| format!("payload is not UTF-8: {e}"))?;
        let payload: &RawValue =
            serde_json::from_str(&text).map_err(|e| format!("payload is not JSON: {e}"))?;
        let json = serde_json::to_vec(&LineOut {
            offset,
            event_id,
            event_time: rfc3339(event_time)?,
            ingest_time: rfc3339(ingest_time)?,
            payload,
        })
        .map_err(|e| format!("line as JSON: {e}"))?;
        Ok((
            Self {
                event_id: event_id.to_owned(),
                ingest_time,
                json: Bytes::from(json),
            },
            offset,
        ))
    }
}

/// What merging one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merged {
    /// A line that was not in the object.
    Added,
    /// The object already held this offset (a redelivery) or this event id at a lower offset
    /// (a client retry): nothing new.
    Duplicate,
}

/// The lines of one segment object, by offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Segment {
    lines: BTreeMap<i64, Line>,
    /// Event id → the offset of its line: the lowest offset it was seen at.
    ids: HashMap<String, i64>,
}

impl Segment {
    /// Parses a stored object. `Err` names the first bad line: such an object must not be
    /// overwritten with what could be parsed of it.
    pub(crate) fn parse(bytes: &Bytes) -> Result<Self, String> {
        let mut segment = Self::default();
        let mut start = 0;
        for (number, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let end = start + raw.len();
            if !raw.iter().all(u8::is_ascii_whitespace) {
                let head: LineHead =
                    serde_json::from_slice(raw).map_err(|e| format!("line {}: {e}", number + 1))?;
                let ingest_time = DateTime::parse_from_rfc3339(&head.ingest_time)
                    .map_err(|e| format!("line {}: ingest_time: {e}", number + 1))?
                    .timestamp_micros();
                let line = Line {
                    event_id: head.event_id,
                    ingest_time,
                    json: bytes.slice(start..end),
                };
                let _ = segment.merge(head.offset, line);
            }
            start = end + 1;
        }
        Ok(segment)
    }

    /// Adds one record's line.
    pub(crate) fn merge(&mut self, offset: i64, line: Line) -> Merged {
        if let Some(&seen) = self.ids.get(&line.event_id) {
            if seen <= offset {
                return Merged::Duplicate;
            }
            // The same event at a lower offset: the earlier copy is the one to keep.
            let _ = self.lines.remove(&seen);
        }
        let _ = self.ids.insert(line.event_id.clone(), offset);
        match self.lines.insert(offset, line) {
            None => Merged::Added,
            // One offset is one record, so another id here is a broker anomaly; keep the index
            // in step with what is stored.
            Some(previous) => {
                if self.ids.get(&previous.event_id) == Some(&offset) {
                    let _ = self.ids.remove(&previous.event_id);
                }
                Merged::Added
            }
        }
    }

    /// The object's bytes: every line followed by a newline, by offset.
    pub(crate) fn to_bytes(&self) -> Bytes {
        let size = self.lines.values().map(|l| l.json.len() + 1).sum();
        let mut out = Vec::with_capacity(size);
        for line in self.lines.values() {
            out.extend_from_slice(&line.json);
            out.push(b'\n');
        }
        Bytes::from(out)
    }

    /// `(offset, line)` of every line, by offset.
    pub(crate) fn lines(&self) -> impl Iterator<Item = (i64, &Line)> {
        self.lines.iter().map(|(o, l)| (*o, l))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lines.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    /// 2026-11-22T10:00:00Z
    const T: i64 = 1_795_341_600_000_000;

    fn line(offset: i64, id: &str, payload: &str) -> (i64, Line) {
        let (line, offset) = Line::new(offset, id, T, T + 1, payload.as_bytes().to_vec()).unwrap();
        (offset, line)
    }

    fn object(records: &[(i64, Line)]) -> Bytes {
        let mut segment = Segment::default();
        for (offset, line) in records {
            let _ = segment.merge(*offset, line.clone());
        }
        segment.to_bytes()
    }

    #[test]
    fn a_line_carries_position_times_and_the_payload_as_accepted() {
        let (offset, l) = line(7, "e1", r#"{"type":"pageview",  "path":"/" }"#);
        assert_eq!(
            std::str::from_utf8(&l.json).unwrap(),
            r#"{"offset":7,"event_id":"e1","event_time":"2026-11-22T10:00:00.000000Z","ingest_time":"2026-11-22T10:00:00.000001Z","payload":{"type":"pageview",  "path":"/" }}"#
        );
        assert_eq!((offset, l.ingest_time), (7, T + 1));
    }

    #[test]
    fn newlines_in_the_payload_become_spaces_and_the_value_is_unchanged() {
        let payload = "{\r\n  \"msg\": \"a\\nb\",\n  \"n\": [1,\n2]\n}\n";
        let (_, l) = line(1, "e1", payload);
        assert!(!l.json.contains(&b'\n') && !l.json.contains(&b'\r'));
        let parsed: serde_json::Value = serde_json::from_slice(&l.json).unwrap();
        let original: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(parsed["payload"], original);
        assert_eq!(parsed["payload"]["msg"], "a\nb");
    }

    #[test]
    fn what_is_not_one_json_value_is_refused() {
        for bad in ["", "not json", "{} {}", "{\"a\":"] {
            assert!(
                Line::new(0, "e", T, T, bad.as_bytes().to_vec()).is_err(),
                "{bad:?}"
            );
        }
        assert!(Line::new(0, "e", T, T, vec![b'"', 0xff, b'"']).is_err());
        assert!(Line::new(0, "e", i64::MAX, T, b"{}".to_vec()).is_err());
    }

    #[test]
    fn lines_are_sorted_by_offset_and_the_object_parses_back() {
        let records = [line(9, "c", "3"), line(2, "a", "1"), line(5, "b", "[2]")];
        let bytes = object(&records);
        let offsets: Vec<i64> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["offset"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, [2, 5, 9]);
        assert!(bytes.ends_with(b"\n"));
        let parsed = Segment::parse(&bytes).unwrap();
        assert_eq!(parsed.to_bytes(), bytes);
        assert_eq!(parsed.len(), 3);
        assert!(Segment::parse(&Bytes::from_static(b"{\"offset\":1}\n")).is_err());
        assert_eq!(Segment::parse(&Bytes::new()).unwrap(), Segment::default());
    }

    #[test]
    fn merging_the_same_records_twice_changes_nothing() {
        let records = [line(1, "a", "{}"), line(2, "b", "{}")];
        let mut segment = Segment::default();
        for (offset, l) in records.clone() {
            assert_eq!(segment.merge(offset, l), Merged::Added);
        }
        let once = segment.to_bytes();
        for (offset, l) in records {
            assert_eq!(segment.merge(offset, l), Merged::Duplicate);
        }
        assert_eq!(segment.to_bytes(), once);
    }

    #[test]
    fn an_event_id_is_kept_once_at_its_lowest_offset() {
        let mut segment = Segment::default();
        let _ = segment.merge(10, line(10, "a", "2").1);
        // The original (lower offset) arrives after its retry: it replaces it.
        assert_eq!(segment.merge(3, line(3, "a", "1").1), Merged::Added);
        assert_eq!(segment.merge(12, line(12, "a", "3").1), Merged::Duplicate);
        let offsets: Vec<i64> = segment.lines().map(|(o, _)| o).collect();
        assert_eq!(offsets, [3]);
        assert_eq!(segment.to_bytes(), object(&[line(3, "a", "1")]));
    }

    proptest! {
        /// Any split into batches, any order, any redelivery: the same object.
        #[test]
        fn the_object_depends_only_on_the_records(
            ids in proptest::collection::vec(0u8..8, 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
        ) {
            let records: Vec<(i64, Line)> = ids
                .iter()
                .enumerate()
                .map(|(offset, id)| line(offset as i64, &format!("e{id}"), &format!("{{\"n\":{offset}}}")))
                .collect();
            let reference = object(&records);
            // Start from a stored prefix, then deliver records in a shuffled order with repeats.
            let mut segment = Segment::parse(&object(&records[..records.len() / 2])).unwrap();
            for index in &order {
                let (offset, l) = index.get(&records).clone();
                let _ = segment.merge(offset, l);
            }
            for (offset, l) in records.iter().cloned() {
                let _ = segment.merge(offset, l);
            }
            prop_assert_eq!(segment.to_bytes(), reference);
            let distinct: std::collections::HashSet<&u8> = ids.iter().collect();
            prop_assert_eq!(segment.len(), distinct.len());
        }
    }
}
