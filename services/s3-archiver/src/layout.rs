//! Where an archived record goes. Keys are a pure function of the record's own fields, so a
//! redelivered record lands on the same key (one copy) whatever batch it arrives in:
//!
//! - raw events: `raw/{tenant}/{kind}/{yyyy}/{mm}/{dd}/{event_id}.json` (date of `event_time`,
//!   UTC), the object holding the event's JSON exactly as the gateway accepted it;
//! - invoices: `invoices/{tenant}/{invoice_id}.json`, a JSON document.
//!
//! One object per event rather than batched files: a batch file's name would depend on batch
//! boundaries (offsets), which differ between deliveries, and would duplicate events on replay.
//! Each segment is one path part: a `/` or `..` inside an id is percent-encoded by `object_store`,
//! never a directory.

use chrono::{DateTime, Datelike};
use object_store::path::{Path, PathPart};
use serde::Serialize;
use ve_schema::{Invoice, RawPayload};

/// Segments of a raw event's key, e.g. `["raw", "acme", "web", "2026", "11", "22", "e1.json"]`.
pub fn raw_key(
    tenant_id: &str,
    raw: &RawPayload,
    event_time_micros: i64,
    event_id: &str,
) -> Result<Vec<String>, String> {
    let date = DateTime::from_timestamp_micros(event_time_micros)
        .ok_or_else(|| format!("event_time {event_time_micros} is out of range"))?;
    Ok(vec![
        "raw".to_owned(),
        segment(tenant_id),
        segment(&raw.kind),
        format!("{:04}", date.year()),
        format!("{:02}", date.month()),
        format!("{:02}", date.day()),
        format!("{}.json", segment(event_id)),
    ])
}

/// Segments of an invoice's key.
pub fn invoice_key(tenant_id: &str, invoice: &Invoice) -> Vec<String> {
    vec![
        "invoices".to_owned(),
        segment(tenant_id),
        format!("{}.json", segment(&invoice.invoice_id)),
    ]
}

/// An empty id would silently drop a level of the layout; give it a visible name instead.
fn segment(value: &str) -> String {
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

    fn raw(kind: &str) -> RawPayload {
        RawPayload {
            kind: kind.into(),
            content_type: "application/json".into(),
            channel: "http".into(),
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn raw_keys_are_partitioned_by_tenant_kind_and_utc_date() {
        // 2023-11-14T22:13:20Z
        let key = raw_key("acme", &raw("web"), 1_700_000_000_000_000, "e1").unwrap();
        assert_eq!(key.join("/"), "raw/acme/web/2023/11/14/e1.json");
        let prefix = Path::from("archive/v1");
        assert_eq!(
            object_path(&prefix, &key).as_ref(),
            "archive/v1/raw/acme/web/2023/11/14/e1.json"
        );
        assert_eq!(object_path(&Path::default(), &key).as_ref(), key.join("/"));
    }

    #[test]
    fn ids_cannot_escape_their_segment() {
        let key = raw_key("acme", &raw("web"), 0, "../../etc/passwd").unwrap();
        let path = object_path(&Path::default(), &key);
        assert_eq!(path.parts().count(), 7, "{path}");
        assert!(path.as_ref().starts_with("raw/acme/web/1970/01/01/"));
        let dots = raw_key("..", &raw("."), 0, "x").unwrap();
        let path = object_path(&Path::default(), &dots);
        assert!(
            !path
                .parts()
                .any(|p| p.as_ref() == ".." || p.as_ref() == ".")
        );
        let empty = raw_key("", &raw(""), 0, "").unwrap();
        assert_eq!(object_path(&Path::default(), &empty).parts().count(), 7);
    }

    #[test]
    fn out_of_range_times_are_refused() {
        assert!(raw_key("a", &raw("web"), i64::MAX, "e").is_err());
        let before_epoch = raw_key("a", &raw("web"), -1, "e").unwrap();
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
