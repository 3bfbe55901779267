//! A hostile SQL corpus against the running API: every statement is refused (400/403) or, when
//! it runs, answers only the caller's rows. The other tenant's rows carry the marker
//! `secret-beta` and its tenant id; neither may ever appear in an answer, and counts that would
//! include its rows must equal the caller's own.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod common;

use serde_json::json;

/// Statements that must never run.
const REFUSED: &[&str] = &[
    // More than one statement, also behind comments.
    "SELECT 1; SELECT * FROM system.tables",
    "SELECT 1 /* ; */; DROP TABLE events",
    "SELECT 1 -- comment\n; SELECT 2",
    "SELECT 1 # comment\n; SELECT 2",
    "SELECT count() FROM events; SELECT count() FROM events",
    // Settings that would lift the limits or read-only mode.
    "SELECT * FROM events SETTINGS readonly = 0",
    "SELECT * FROM events SETTINGS max_result_rows = 0",
    "SET readonly = 0",
    "SELECT * FROM (SELECT * FROM events SETTINGS max_execution_time = 0)",
    // Table functions, all of them.
    "SELECT * FROM url('http://127.0.0.1:8123/?query=SELECT+1', CSV, 'a String')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM file('/etc/passwd', LineAsString)",
    "SELECT * FROM s3('http://127.0.0.1:9000/bucket/x.csv')",
    "SELECT * FROM numbers(10)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM input('a String')",
    "SELECT * FROM merge(currentDatabase(), '.*')",
    "SELECT * FROM events AS e JOIN url('http://x', CSV, 'a String') AS u ON 1 = 1",
    // Other databases and system tables.
    "SELECT * FROM system.tables",
    "SELECT * FROM system.query_log",
    "SELECT name FROM system.databases",
    "SELECT * FROM default.events",
    "SELECT * FROM `system`.`tables`",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT (SELECT count() FROM system.tables) FROM events",
    "SELECT * FROM events WHERE path IN (SELECT name FROM system.tables)",
    // Tables outside the allow-list, CTEs named like tables.
    "SELECT * FROM sink_offsets",
    "SELECT * FROM schema_migrations",
    "WITH events AS (SELECT * FROM dead_letters) SELECT * FROM events",
    // Writes and DDL.
    "INSERT INTO events (event_id) VALUES ('x')",
    "INSERT INTO events SELECT * FROM events",
    "ALTER TABLE events DELETE WHERE 1 = 1",
    "DROP TABLE events",
    "TRUNCATE TABLE events",
    "CREATE TABLE x (a Int32) ENGINE = Memory",
    "OPTIMIZE TABLE events FINAL",
    "KILL QUERY WHERE 1 = 1",
    "SYSTEM FLUSH LOGS",
    "GRANT ALL ON *.* TO default",
    "EXPLAIN SELECT * FROM system.tables",
    "SHOW TABLES",
    "DESCRIBE TABLE events",
    // Output redirection and formats.
    "SELECT * FROM events INTO OUTFILE '/tmp/leak.csv'",
    "SELECT * FROM events FORMAT CSV",
    "SELECT * INTO leak FROM events",
    // Escapes through functions.
    "SELECT dictGet('dict', 'value', toUInt64(1)) FROM events",
    "SELECT dictGetString('dict', 'value', toUInt64(1))",
    "SELECT joinGet('join_table', 'value', 1)",
    "SELECT file('/etc/passwd')",
    "SELECT arrayMap(x -> dictGet('d', 'v', x), [1, 2]) FROM events",
    "SELECT getSetting('readonly')",
    "SELECT sleep(3)",
    // Backslash literals the renderer would not re-escape (a string that swallows the next one).
    r"SELECT * FROM events WHERE path = '\\' AND path = ' UNION ALL SELECT * FROM system.tables --'",
];

/// Statements that run, but only over the caller's rows.
const SCOPED: &[&str] = &[
    "SELECT * FROM events WHERE tenant_id != ''",
    "SELECT * FROM events WHERE 1 = 1 OR 1 = 1",
    "SELECT tenant_id, path, properties FROM events WHERE tenant_id = 'TENANT_OTHER'",
    "SELECT * FROM events WHERE tenant_id = 'TENANT_OTHER' OR 1 = 1",
    "SELECT path FROM events UNION ALL SELECT path FROM events",
    "SELECT event_id FROM events UNION ALL SELECT reason FROM dead_letters",
    "SELECT * FROM events WHERE user_id IN (SELECT user_id FROM events WHERE tenant_id = 'TENANT_OTHER')",
    "WITH x AS (SELECT * FROM events) SELECT * FROM x",
    "WITH x AS (SELECT * FROM events WHERE 1 = 1 OR tenant_id = 'TENANT_OTHER') SELECT properties FROM x",
    "SELECT * FROM (SELECT * FROM events) AS sub",
    "SELECT * FROM events AS a JOIN events AS b ON a.event_id = b.event_id",
    "SELECT a.path, b.metric FROM events AS a, metric_samples AS b",
    // An escaped quote is read back as the same one-character string: harmless.
    r"SELECT * FROM events WHERE path = '\''",
    "SELECT * FROM events FINAL",
    "SELECT /* comment */ path FROM events -- trailing",
    "SELECT path FROM events /* UNION ALL SELECT * FROM system.tables */",
    "SELECT arrayMap(x -> x * 2, [1, 2]) AS doubled FROM events",
    "SELECT * FROM alerts",
    "SELECT * FROM invoices",
    "SELECT * FROM runs_summary",
];

#[tokio::test(flavor = "multi_thread")]
async fn hostile_statements_are_refused_or_scoped() {
    let api = common::Api::start().await;
    let mut failures = Vec::new();
    for sql in REFUSED {
        let (status, body) = api.post("/query", &api.mine, json!({ "sql": sql })).await;
        if !(status == 400 || status == 403) {
            failures.push(format!("{sql:?} answered {status}: {body}"));
        }
    }
    for template in SCOPED {
        let sql = template.replace("TENANT_OTHER", &api.other);
        let (status, body) = api.post("/query", &api.mine, json!({ "sql": sql })).await;
        let answer = body["rows"].to_string();
        if status != 200 {
            failures.push(format!("{sql:?} should run, answered {status}: {body}"));
        } else if answer.contains("secret-beta") || answer.contains(&api.other) {
            failures.push(format!("{sql:?} leaked the other tenant: {body}"));
        }
    }
    // Counts that would include the other tenant's rows equal the caller's own.
    for sql in [
        "SELECT count() FROM events FINAL WHERE 1 = 1 OR 1 = 1",
        "SELECT count() FROM events FINAL WHERE tenant_id != ''",
        "SELECT count() FROM (SELECT * FROM events FINAL) AS e",
    ] {
        let (status, body) = api.post("/query", &api.mine, json!({ "sql": sql })).await;
        assert_eq!(status, 200, "{sql}: {body}");
        assert_eq!(body["rows"], json!([[14]]), "{sql}: {body}");
    }
    let (_, body) = api
        .post(
            "/query",
            &api.mine,
            json!({ "sql": format!("SELECT count() FROM events WHERE tenant_id = '{}'", api.other) }),
        )
        .await;
    assert_eq!(body["rows"], json!([[0]]), "{body}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Refusals are counted by reason.
    let metrics = ve_telemetry::metrics_recorder().unwrap().render();
    assert!(
        metrics.contains("query_api_sql_refused_total{reason=\"table_function\"}"),
        "{metrics}"
    );
    api.stop().await;
}
