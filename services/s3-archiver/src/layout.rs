//! Where an archived record goes. Keys are a pure function of the records themselves, so a
//! redelivered record lands on the same key (one copy) whatever batch it arrives in:
//!
//! - raw events: JSON Lines segment objects
//!   `raw/{tenant}/{kind}/{yyyy}/{mm}/{dd}/p{partition}-{segment_start:020}.jsonl`, where
//!   `partition` is the record's partition of `ingest.raw.v1`, `segment_start` its offset rounded
//!   down to a multiple of `[archive] segment_offsets`, and the date that of `event_time` (UTC).
//!   An object holds exactly the records of that partition in
//!   `[segment_start, segment_start + segment_offsets)` with that tenant, kind and date, one line
//!   each sorted by offset (see `segment`), so its name and its final content depend only on those
//!   records, never on how batches fell;
//! - invoices: `invoices/{tenant}/{invoice_id}.json`, one JSON document each.
//!
//! Segments rather than one object per event: a PUT and its file-system or S3 request cost per
//! object, not per byte, and dominated the archiver's CPU (and would dominate an S3 bill).
//! Each key part is one path part: a `/` or `..` inside an id is percent-encoded by
//! `object_store`, never a directory.

use chrono::{DateTime, Datelike};
use object_store::path::{Path, PathPart};
use serde::Serialize;
use ve_schema::Invoice;

/// Where a raw event's segment sits in the input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition of `ingest.raw.v1`.
    pub partition: i32,
    /// Offset of the record in that partition.
    pub offset: i64,
    /// `[archive] segment_offsets`: offsets per segment.
    pub segment_offsets: i64,
}

impl Position {
    /// The first offset of the record's segment.
    pub fn segment_start(&self) -> i64 {
        self.offset - self.offset.rem_euclid(self.segment_offsets.max(1))
    }
}

/// Key parts of the segment a raw event belongs to, e.g.
/// `["raw", "acme", "web", "2026", "11", "22", "p3-00000000000000001000.jsonl"]`.
pub fn segment_key(
    tenant_id: &str,
    kind: &str,
    event_time_micros: i64,
    position: Position,
) -> Result<Vec<String>, String> {
    let date = DateTime::from_timestamp_micros(event_time_micros)
        .ok_or_else(|| format!("event_time {event_time_micros} is out of range"))?;
    Ok(vec![
        "raw".to_owned(),
        part(tenant_id),
        part(kind),
        format!("{:04}", date.year()),
        format!("{:02}", date.month()),
        format!("{:02}", date.day()),
        format!(
            "p{}-{:020}.jsonl",
            position.partition,
            position.segment_start()
        ),
    ])
}

/// Key parts of an invoice's document.
pub fn invoice_key(tenant_id: &str, invoice: &Invoice) -> Vec<String> {
    vec![
        "invoices".to_owned(),
        part(tenant_id),
        format!("{}.json", part(&invoice.invoice_id)),
    ]
}

/// An empty id would silently drop a level of the layout; give it a visible name instead.
fn part(value: &str) -> String {
    if value.is_empty() {
        "_".to_owned()
    } else {
        value.to_owned()
    }
}

/// The object path of `key` under the archive's `prefix`.
pub fn object_path(prefix: &Path, key: &[String]) -> Path {
    Path::from_iter(
        prefix
            .parts()
            .chain(key.iter().map(|s| PathPart::from(s.as_str()))),
    )
}

/// The archived form of an invoice: the record plus the tenant it bills (the envelope's).
#[derive(Debug, Serialize)]
pub struct InvoiceDocument<'a> {
    pub tenant_id: &'a str,
    #[serde(flatten)]
    pub invoice: &'a Invoice,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            partition,
            offset,
            segment_offsets: 1000,
        }
    }

    #[test]
    fn raw_keys_are_tenant_kind_utc_date_partition_and_segment() {
        // 2023-11-14T22:13:20Z
        let key = segment_key("acme", "web", 1_700_000_000_000_000, at(3, 1234)).unwrap();
        assert_eq!(
            key.join("/"),
            "raw/acme/web/2023/11/14/p3-00000000000000001000.jsonl"
        );
        let prefix = Path::from("archive/v1");
        assert_eq!(
            object_path(&prefix, &key).as_ref(),
            "archive/v1/raw/acme/web/2023/11/14/p3-00000000000000001000.jsonl"
        );
        assert_eq!(object_path(&Path::default(), &key).as_ref(), key.join("/"));
    }

    #[test]
    fn a_segment_spans_exactly_segment_offsets_offsets() {
        let name = |offset| segment_key("a", "web", 0, at(0, offset)).unwrap()[6].clone();
        assert_eq!(name(0), "p0-00000000000000000000.jsonl");
        assert_eq!(name(999), "p0-00000000000000000000.jsonl");
        assert_eq!(name(1000), "p0-00000000000000001000.jsonl");
        assert_eq!(name(1999), "p0-00000000000000001000.jsonl");
        let one = Position {
            partition: 5,
            offset: 42,
            segment_offsets: 1,
        };
        assert_eq!(one.segment_start(), 42);
        // A nonsensical size cannot divide by zero; it degrades to one offset per segment.
        let zero = Position {
            segment_offsets: 0,
            ..one
        };
        assert_eq!(zero.segment_start(), 42);
        // Same records, other partition: another object.
        assert_ne!(
            segment_key("a", "web", 0, at(1, 5)).unwrap(),
            segment_key("a", "web", 0, at(2, 5)).unwrap()
        );
    }

    #[test]
    fn ids_cannot_escape_their_part() {
        let key = segment_key("../../etc", "passwd", 0, at(0, 0)).unwrap();
        let path = object_path(&Path::default(), &key);
        assert_eq!(path.parts().count(), 7, "{path}");
        let dots = segment_key("..", ".", 0, at(0, 0)).unwrap();
        let path = object_path(&Path::default(), &dots);
        assert!(
            !path
                .parts()
                .any(|p| p.as_ref() == ".." || p.as_ref() == ".")
        );
        let empty = segment_key("", "", 0, at(0, 0)).unwrap();
        let path = object_path(&Path::default(), &empty);
        assert!(path.as_ref().starts_with("raw/_/_/1970/01/01/"), "{path}");
    }

    #[test]
    fn out_of_range_times_are_refused() {
        assert!(segment_key("a", "web", i64::MAX, at(0, 0)).is_err());
        let before_epoch = segment_key("a", "web", -1, at(0, 0)).unwrap();
        assert_eq!(before_epoch[3..6], ["1969", "12", "31"]);
    }

    #[test]
    fn invoices_are_json_documents_keyed_by_id() {
        let invoice = Invoice {
            invoice_id: "inv-acme-2026-11".into(),
            period_start: 1,
            period_end: 2,
            plan: "paid".into(),
            currency: "USD".into(),
            lines: vec![],
            subtotal_micros: 0,
            total_micros: 0,
            issued_at: 3,
        };
        assert_eq!(
            invoice_key("acme", &invoice).join("/"),
            "invoices/acme/inv-acme-2026-11.json"
        );
        let doc = serde_json::to_value(InvoiceDocument {
            tenant_id: "acme",
            invoice: &invoice,
        })
        .unwrap();
        assert_eq!(doc["tenant_id"], "acme");
        assert_eq!(doc["invoice_id"], "inv-acme-2026-11");
        assert_eq!(doc["plan"], "paid");
    }
}
