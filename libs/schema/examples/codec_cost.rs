//! Cost of the envelope codec per record, as every pipeline stage pays it:
//! `cargo run --release -p ve-schema --example codec_cost -- http://127.0.0.1:8081 [records]`.
//! Prints microseconds per encode and per decode of a ~300-byte web event envelope.

use std::time::Instant;

use ve_schema::{Body, Codec, Envelope, Map, RawPayload, RegistryConfig, Source, topics};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let records: u32 = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let codec = Codec::new(&RegistryConfig {
        url,
        username: String::new(),
        password: Default::default(),
        timeout_ms: 5000,
    })?;
    let payload = format!(
        r#"{{"type":"pageview","session_id":"s-1","url":"https://example.com/docs/a","title":"Docs","user_agent":"Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0","pad":"{}"}}"#,
        "x".repeat(120)
    );
    let envelope = Envelope {
        event_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        event_time: 1_700_000_000_000_000,
        ingest_time: 1_700_000_000_100_000,
        tenant_id: "acme".into(),
        source: Source {
            kind: "sdk".into(),
            id: "web-js/1.0".into(),
        },
        schema_name: "ve.v1.RawPayload".into(),
        schema_version: 1,
        attributes: Map::from([
            (
                "batch_id".into(),
                "0193a1b2-0000-7000-8000-000000000000".into(),
            ),
            ("client_ip".into(), "203.0.113.9".into()),
        ]),
        tags: Map::new(),
        body: Body::Raw(RawPayload {
            kind: "web".into(),
            content_type: "application/json".into(),
            channel: "http".into(),
            payload: payload.into_bytes(),
        }),
    };
    // Warm the schema caches (one registry round trip each).
    let bytes = codec.encode(topics::INGEST_RAW, &envelope).await?;
    assert_eq!(codec.decode(&bytes).await?, envelope);

    let started = Instant::now();
    for _ in 0..records {
        let _ = codec.encode(topics::INGEST_RAW, &envelope).await?;
    }
    let encode = started.elapsed().as_secs_f64() * 1e6 / f64::from(records);
    let started = Instant::now();
    for _ in 0..records {
        let _ = codec.decode(&bytes).await?;
    }
    let decode = started.elapsed().as_secs_f64() * 1e6 / f64::from(records);
    println!(
        "| envelope of {} bytes | encode {encode:.2} µs | decode {decode:.2} µs | ({records} records, one thread) |",
        bytes.len()
    );
    Ok(())
}
