//! Against the local ClickHouse engine (or the ClickHouse `VE_TEST_CLICKHOUSE` names): the
//! `clickhouse` crate's insert + select with row validation on, the table features the sinks rely
//! on, and migrations.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use ve_store::{Migration, migrate};
use ve_testkit::{Stack, unique};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Event {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: uuid::Uuid,
    tenant_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    event_time: chrono::DateTime<chrono::Utc>,
    value: f64,
    properties: String,
}

const TABLE: &str = "CREATE TABLE IF NOT EXISTS events (
    event_id UUID,
    tenant_id LowCardinality(String),
    event_time DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
    value Float64 CODEC(Gorilla),
    properties String CODEC(ZSTD)
) ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, event_id)
TTL toDateTime(event_time) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000";

fn events(n: usize) -> Vec<Event> {
    let base =
        chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap();
    (0..n)
        .map(|i| Event {
            event_id: uuid::Uuid::new_v4(),
            tenant_id: format!("t{}", i % 3),
            event_time: base - chrono::Duration::seconds(i as i64),
            value: i as f64 * 1.5,
            properties: format!(r#"{{"i":{i}}}"#),
        })
        .collect()
}

async fn insert(client: &clickhouse::Client, rows: &[Event], token: Option<&str>) {
    let client = match token {
        Some(token) => client
            .clone()
            .with_setting("insert_deduplication_token", token),
        None => client.clone(),
    };
    let mut insert = client.insert::<Event>("events").await.unwrap();
    for row in rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
}

#[tokio::test]
async fn insert_and_select_round_trip_with_validation_on() {
    let config = Stack::require().clickhouse(&unique("ve_test"));
    config.ensure_database().await.unwrap();
    let client = config.client().unwrap();
    client.query(TABLE).execute().await.unwrap();

    let rows = events(500);
    insert(&client, &rows, None).await;
    let mut back: Vec<Event> = client
        .query("SELECT ?fields FROM events ORDER BY event_time DESC")
        .fetch_all()
        .await
        .unwrap();
    let mut expected = rows.clone();
    expected.sort_by_key(|e| std::cmp::Reverse(e.event_time));
    back.sort_by_key(|e| std::cmp::Reverse(e.event_time));
    assert_eq!(back, expected);

    let per_tenant: Vec<(String, u64)> = client
        .query("SELECT tenant_id, count() FROM events WHERE tenant_id = ? GROUP BY tenant_id")
        .bind("t1")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(per_tenant, vec![("t1".to_owned(), 167)]);
    client
        .query(&format!("DROP DATABASE {}", config.database))
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn replayed_batches_insert_nothing_twice() {
    let config = Stack::require().clickhouse(&unique("ve_test"));
    config.ensure_database().await.unwrap();
    let client = config.client().unwrap();
    client.query(TABLE).execute().await.unwrap();

    let rows = events(100);
    // The same batch twice under the same token (a redelivered topic/partition/offset range).
    insert(&client, &rows, Some("events-0-0-99")).await;
    insert(&client, &rows, Some("events-0-0-99")).await;
    let count: u64 = client
        .query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        count, 100,
        "the deduplication token drops the replayed block"
    );

    // Rows that arrive again in a different batch collapse by key in ReplacingMergeTree.
    insert(&client, &rows[..10], Some("events-0-100-109")).await;
    let distinct: u64 = client
        .query("SELECT count() FROM events FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        distinct, 100,
        "ReplacingMergeTree keeps one row per event id"
    );
    client
        .query(&format!("DROP DATABASE {}", config.database))
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn errors_come_back_as_clickhouse_errors() {
    let config = Stack::require().clickhouse(&unique("ve_test"));
    config.ensure_database().await.unwrap();
    let err = config
        .client()
        .unwrap()
        .query("SELECT * FROM no_such_table")
        .execute()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Code: 60") && text.contains("UNKNOWN_TABLE"),
        "{text}"
    );
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        statements: &[TABLE],
    },
    Migration {
        version: 2,
        name: "events_source",
        statements: &[
            "ALTER TABLE events ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT ''",
        ],
    },
];

#[tokio::test]
async fn migrations_apply_once() {
    let config = Stack::require().clickhouse(&unique("ve_test"));
    assert_eq!(migrate(&config, MIGRATIONS).await.unwrap(), 2);
    assert_eq!(
        migrate(&config, MIGRATIONS).await.unwrap(),
        0,
        "a second start applies nothing"
    );
    let columns: Vec<String> = config
        .client()
        .unwrap()
        .query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'events' ORDER BY position")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        columns,
        [
            "event_id",
            "tenant_id",
            "event_time",
            "value",
            "properties",
            "source"
        ]
    );
    config
        .server_client()
        .unwrap()
        .query(&format!("DROP DATABASE {}", config.database))
        .execute()
        .await
        .unwrap();
}
