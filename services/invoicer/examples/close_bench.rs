//! Benchmark (not a test): closing one billing period for 100 tenants on the local stack.
//!
//! ```sh
//! cargo run --release -p ve-invoicer --example close_bench [TENANTS] [EVENTS_PER_TENANT]
//! ```
//! Produces enriched events for each tenant into topics of its own, runs the invoicer in this
//! process, waits until everything is metered, then times `POST /v1/billing/close` (sync with the
//! state topic, pricing, publishing every invoice with broker acknowledgement) and a second,
//! idempotent close. Uses `VE_TEST_*` like the integration tests.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark binary: fail loudly, print

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ve_invoicer::{Config, DEFAULTS, Period, rfc3339};
use ve_kafka::{OutRecord, Producer, TopicSpec};
use ve_schema::{AppEvent, Body, Codec, Envelope, Source};
use ve_testkit::{Stack, service_config, unique};

const PERIOD: i64 = 60_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tenants: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let per_tenant: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let stack = Stack::require();
    let kafka = stack.kafka(&unique("bench"));
    let codec = Codec::new(&stack.registry())?;
    let producer = Producer::new(&kafka, "invoicer-bench")?;
    let input = unique("bench_enriched");
    ve_kafka::ensure_topics(&kafka, &[TopicSpec::new(&input)]).await?;

    let period_start =
        Period::Fixed(PERIOD).start_of(chrono::Utc::now().timestamp_micros()) - 3 * PERIOD;
    let started = Instant::now();
    let mut records = Vec::new();
    for t in 0..tenants {
        for i in 0..per_tenant {
            let id = format!("bench-{t}-{i}");
            let body = Body::App(AppEvent {
                app_id: "bench".into(),
                event_name: "tick".into(),
                user_id: "u".into(),
                properties: "{}".into(),
            });
            let envelope = Envelope {
                event_id: id.clone(),
                event_time: period_start + i as i64,
                ingest_time: period_start + i as i64,
                tenant_id: format!("tenant-{t:03}"),
                source: Source {
                    kind: "app".into(),
                    id: "bench".into(),
                },
                schema_name: body.schema_name().into(),
                schema_version: 1,
                attributes: BTreeMap::from([("ingest_bytes".into(), "200".into())]),
                tags: BTreeMap::new(),
                body,
            };
            records.push(OutRecord::new(
                &input,
                id,
                codec.encode(&input, &envelope).await?,
            ));
        }
    }
    for chunk in records.chunks(1000) {
        let _ = producer.send_all(chunk).await?;
    }
    println!(
        "produced {} events for {tenants} tenants in {:?}",
        records.len(),
        started.elapsed()
    );

    let env: Vec<(String, String)> = [
        ("TOPICS__INPUT", input.clone()),
        ("TOPICS__TENANTS", unique("bench_tenants")),
        ("TOPICS__INVOICES", unique("bench_invoices")),
        ("TOPICS__USAGE", unique("bench_usage")),
        ("KAFKA__GROUP_ID", unique("bench_invoicer")),
        ("BILLING__PERIOD", "60s".to_owned()),
        ("BILLING__SCHEDULE", "false".to_owned()),
        ("LOG__LEVEL", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("VE_INVOICER__{k}"), v))
    .collect();
    let config: Config = service_config("invoicer", DEFAULTS, env);
    let ctx = ve_service::Context::ephemeral("invoicer").await?;
    let admin = ctx.admin.local_addr()?;
    let shutdown = ctx.shutdown.clone();
    let service = tokio::spawn(ve_invoicer::run(config, ctx));
    let http = reqwest::Client::new();

    let metering = Instant::now();
    let expected = json!(records.len());
    loop {
        let usage: Value = match http
            .get(format!("http://{admin}/v1/billing/usage"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json().await?,
            _ => Value::Null,
        };
        let total: u64 = usage["usage"]
            .as_object()
            .map(|tenants| {
                tenants
                    .values()
                    .filter_map(|p| p[rfc3339(period_start)]["events"].as_u64())
                    .sum()
            })
            .unwrap_or_default();
        if json!(total) == expected {
            break;
        }
        anyhow::ensure!(!service.is_finished(), "the invoicer stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "metered {} events in {:?} (from service start)",
        records.len(),
        metering.elapsed()
    );

    let mut figures = Vec::new();
    for round in ["first close", "second close (idempotent)"] {
        let started = Instant::now();
        let response = http
            .post(format!("http://{admin}/v1/billing/close"))
            .json(&json!({ "period_start": period_start }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "close failed: {}",
            response.text().await?
        );
        let body: Value = response.json().await?;
        let elapsed = started.elapsed();
        let invoices = body["invoices"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(
            invoices == tenants,
            "{invoices} invoices for {tenants} tenants"
        );
        figures.push((round, invoices, elapsed));
    }
    println!("| close | invoices | time |\n|---|---|---|");
    for (round, invoices, elapsed) in figures {
        println!(
            "| {round} | {invoices} | {:.1} ms |",
            elapsed.as_secs_f64() * 1000.0
        );
    }
    shutdown.cancel();
    let _ = service.await?;
    Ok(())
}
