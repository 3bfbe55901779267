//! Billing end to end on the real local stack: events sent to the gateway are metered by the
//! invoicer; closing the period yields an invoice whose quantities and amounts match what was
//! sent, the same invoice when closed again; an event that reaches the invoicer after its period
//! closed is billed as an adjustment line on the next invoice, exactly once. The invoices land in
//! ClickHouse and in the archive.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ve_e2e::Pipeline;

/// Billing periods of this length (epoch-aligned) keep the test short.
const PERIOD_S: i64 = 30;
/// The paid plan, made cheap to reach: 10 events included, then 0.2 per event.
const PER_EVENT_MICROS: i64 = 200_000;

fn web_events(p: &Pipeline, from: usize, count: usize) -> Value {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let events: Vec<Value> = (from..from + count)
        .map(|n| {
            json!({"id": format!("{}-ev-{n}", p.prefix), "session_id": "s1", "timestamp": at,
                   "type": "pageview", "title": "Pricing", "path": "/pricing"})
        })
        .collect();
    json!({ "events": events })
}

async fn close(p: &Pipeline, period_start: i64) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/billing/close", p.admin_url("invoicer")))
        .json(&json!({ "period_start": period_start }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "close: {status} {body}");
    body
}

/// The tenant's invoice in a close answer.
fn invoice_of(p: &Pipeline, closed: &Value) -> Value {
    closed["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tenant_id"] == p.tenant.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no invoice for {} in {closed}", p.tenant))
}

/// Total quantity and amount of the invoice's lines of `kind` (a meter's lines are split by
/// allowance and price tier).
fn lines(invoice: &Value, kind: &str) -> (i64, i64) {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == kind)
        .fold((0, 0), |(q, a), l| {
            (
                q + l["quantity"].as_i64().unwrap(),
                a + l["amount_micros"].as_i64().unwrap(),
            )
        })
}

/// Waits until the invoicer has metered `events` events of the tenant in any period.
async fn metered(p: &Pipeline, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let usage: Value = reqwest::get(format!("{}/v1/billing/usage", p.admin_url("invoicer")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen: u64 = usage["usage"][p.tenant.as_str()]
            .as_object()
            .map(|periods| periods.values().filter_map(|u| u["events"].as_u64()).sum())
            .unwrap_or(0);
        if seen >= events {
            assert_eq!(seen, events, "more events metered than sent: {usage}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metered {seen} of {events}: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sleeps until at least 2 s into a fresh period; returns that period's start (micros).
async fn fresh_period() -> i64 {
    let now = chrono::Utc::now().timestamp_micros();
    let period = PERIOD_S * 1_000_000;
    let into = now.rem_euclid(period);
    if into > 2_000_000 && into < period / 3 {
        return now - into;
    }
    let wait = (period - into + 2_000_000) as u64;
    tokio::time::sleep(Duration::from_micros(wait)).await;
    let now = chrono::Utc::now().timestamp_micros();
    now - now.rem_euclid(period)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invoices_match_what_was_sent_close_idempotently_and_bill_late_events_once() {
    let mut p = Pipeline::prepare().await;
    p.overrides = [
        ("BILLING__PERIOD", format!("{PERIOD_S}s")),
        ("BILLING__PLANS__PAID__EVENTS__INCLUDED", "10".to_owned()),
        ("BILLING__PLANS__PAID__EVENTS__PER", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("VE_INVOICER__{k}"), v))
    .collect();
    for service in [
        "clickhouse-sink",
        "s3-archiver",
        "invoicer",
        "enricher",
        "normalizer",
        "gateway",
    ] {
        p.start(service).await;
    }

    // 25 events in one period, plus a client retry of 5 of them (same ids: not billed twice).
    let period = fresh_period().await;
    let sent = p.post("/ingest", web_events(&p, 0, 25)).await;
    assert_eq!(sent["events_accepted"], 25, "{sent}");
    let retry = p.post("/ingest", web_events(&p, 20, 5)).await;
    assert_eq!(retry["events_accepted"], 5, "{retry}");
    metered(&p, 25).await;

    // One more event accepted in the same period, but held up before the invoicer (enricher
    // down) until the period is closed: a late event.
    p.kill("enricher").await;
    let late = p.post("/ingest", web_events(&p, 100, 1)).await;
    assert_eq!(late["events_accepted"], 1, "{late}");

    let first = invoice_of(&p, &close(&p, period).await);
    assert_eq!(
        lines(&first, "events"),
        (25, 15 * PER_EVENT_MICROS),
        "25 events, 10 of them included: {first}"
    );
    let lines_total: i64 = first["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(first["total_micros"].as_i64(), Some(lines_total), "{first}");
    assert_eq!(first["currency"], "USD");

    // Closing again: the same invoice, not a second one.
    let again = invoice_of(&p, &close(&p, period).await);
    assert_eq!(again, first);

    // The late event arrives; it is billed on the next period's invoice as an adjustment.
    p.start("enricher").await;
    metered(&p, 26).await;
    let next = period + PERIOD_S * 1_000_000;
    let wait = next - chrono::Utc::now().timestamp_micros();
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait as u64 + 200_000)).await;
    }
    let second = invoice_of(&p, &close(&p, next).await);
    assert_ne!(second["invoice_id"], first["invoice_id"]);
    assert_eq!(
        lines(&second, "adjustment.events"),
        (1, PER_EVENT_MICROS),
        "{second}"
    );
    assert_eq!(lines(&second, "events"), (0, 0), "{second}");
    // And only there: closing the next period again changes nothing.
    assert_eq!(invoice_of(&p, &close(&p, next).await), second);

    // Both invoices in ClickHouse (once each) and in the archive.
    let client = p.clickhouse();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids: Vec<String> = client
            .query(
                "SELECT invoice_id FROM invoices FINAL WHERE tenant_id = ? ORDER BY period_start",
            )
            .bind(&p.tenant)
            .fetch_all()
            .await
            .unwrap();
        let expected = vec![
            first["invoice_id"].as_str().unwrap().to_owned(),
            second["invoice_id"].as_str().unwrap().to_owned(),
        ];
        if ids == expected {
            break;
        }
        assert!(Instant::now() < deadline, "invoices in ClickHouse: {ids:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for invoice in [&first, &second] {
        let path = p
            .archive
            .join("invoices")
            .join(&p.tenant)
            .join(format!("{}.json", invoice["invoice_id"].as_str().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(Instant::now() < deadline, "{} not archived", path.display());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    p.stop_all().await;
}
