//! Report latency with 1,000,000 events in ClickHouse (a benchmark, not a test).
//!
//! Loads the events with one `INSERT ... SELECT ... FROM numbers(N)` into a database of its own
//! (the sink's schema), then times every report template through the same `QueryService` core
//! the REST and gRPC APIs call, and prints a Markdown table of p50/p95 per template.
//!
//! ```text
//! cargo run -p ve-query-api --example report_bench [-- EVENTS RUNS]
//! ```
//! `VE_TEST_CLICKHOUSE` / `VE_TEST_CLICKHOUSE_COMPRESSION` pick the ClickHouse (default: the
//! local engine).

use std::time::{Duration, Instant};

use ve_query_api::core::{QueryService, ReportRequest};
use ve_query_api::sql::SqlPolicy;
use ve_query_api::store::Store;
use ve_query_api::{Config, DEFAULTS};
use ve_schema::Tenant;

const TENANT: &str = "acme";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);

    let stack = ve_testkit::Stack::require();
    let database = ve_testkit::unique("qapi_bench");
    let clickhouse = stack.clickhouse(&database);
    let _ = ve_store::migrate(&clickhouse, ve_clickhouse_sink::schema::MIGRATIONS).await?;

    // 40% of the events belong to the tenant the reports are run for, the rest to 6 others;
    // spread over the last 7 days; 45% web pageviews over 200 paths, then video starts,
    // heartbeats (watch time), searches over 300 queries and other app events.
    let load = format!(
        "INSERT INTO events (event_id, tenant_id, event_time, ingest_time, kind, event_type, \
         event_name, app_id, session_id, user_id, path, properties, retention_days) \
         SELECT concat('e', toString(number)) AS event_id, \
           if(number % 10 < 4, '{TENANT}', concat('tenant_', toString(number % 10))), \
           now64(6) - toIntervalSecond(number % 604800) AS t, t, \
           if(number % 20 < 9, 'web', 'app') AS kind, \
           multiIf(kind = 'web', 'pageview', number % 20 < 11, 'video_start', \
             number % 20 < 17, 'video_heartbeat', number % 20 < 19, 'search', 'purchase') \
             AS type, if(kind = 'app', type, ''), 'streamer', \
           concat('s', toString(intDiv(number, 7) % 20000)), \
           concat('u', toString(number % 5000)), \
           if(kind = 'web', concat('/page/', toString(number % 200)), ''), \
           multiIf(type IN ('video_start', 'video_heartbeat'), \
               concat('{{\"content_id\":\"c', toString(number % 500), \
                 '\",\"watch_seconds\":10,\"network\":\"5g\"}}'), \
             type = 'search', concat('{{\"query\":\"q', toString(number % 300), \
               '\",\"results_count\":', toString(number % 13), '}}'), \
             '{{}}'), \
           90 \
         FROM numbers({events})"
    );
    let started = Instant::now();
    clickhouse.client()?.query_raw(&load).execute().await?;
    println!(
        "loaded {events} events into {database} in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let config: Config = ve_config::Sources::new("query-api", DEFAULTS).load()?;
    let store = Store::new(
        &clickhouse,
        &config.sql.sandbox_database,
        config.limits.clone(),
    )?;
    let tenant = Tenant {
        tenant_id: TENANT.into(),
        name: TENANT.into(),
        plan: "paid".into(),
        retention_days: 90,
        rate_limit_eps: 0,
        burst: 0,
        api_keys: vec![ve_schema::ApiKey {
            key_id: "k".into(),
            sha256: ve_auth::hash_api_key("bench"),
            revoked: false,
        }],
        currency: "USD".into(),
    };
    let service = QueryService::new(
        ve_auth::Tenants::fixed([tenant]),
        store,
        SqlPolicy::new(config.sql.tables.clone(), database.clone()),
    );
    let caller = service.authenticate(Some(&format!("Bearer {TENANT}:bench")))?;

    println!();
    println!("| template | runs | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    for template in ["overview_stats", "top_content", "search_analytics"] {
        let request = ReportRequest {
            template: template.into(),
            ..Default::default()
        };
        // One untimed run: the first read of a table pays for loading its parts.
        let _ = service.report(&caller, &request).await?;
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let _ = service.report(&caller, &request).await?;
            times.push(started.elapsed());
        }
        times.sort();
        let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {template} | {runs} | {:.0} | {:.0} | {:.0} |",
            ms(pick(0.5)),
            ms(pick(0.95)),
            ms(pick(1.0))
        );
    }

    clickhouse
        .server_client()?
        .query_raw(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute()
        .await?;
    Ok(())
}
