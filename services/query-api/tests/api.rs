//! Every operation over REST and gRPC against known rows of two tenants: the same numbers on
//! both transports, the expected numbers, and never a row of the other tenant.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod common;

use serde_json::{Value, json};
use ve_query_api::grpc::proto;

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_answers_the_same_on_rest_and_grpc_for_its_tenant_only() {
    let api = common::Api::start().await;
    let (from, to) = api.range();
    let mut grpc = api.grpc().await;

    // overview_stats: 14 events (a replayed duplicate counted once), watch time 4 x 15 s.
    let (status, rest) = api
        .post(
            "/report",
            &api.mine,
            json!({"template": "overview_stats", "from": from, "to": to}),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    let data = &rest["data"];
    assert_eq!(data["total_events"], 14, "{rest}");
    assert_eq!(data["unique_users"], 3);
    assert_eq!(data["sessions"], 2);
    assert_eq!(data["pageviews"], 4);
    assert_eq!(data["app_events"], 10);
    assert_eq!(data["video_heartbeats"], 4);
    assert_eq!(data["watch_time_seconds"], 60.0);
    assert_eq!(
        data["top_events"][0],
        json!({"name": "pageview", "count": 4})
    );
    let report = |template: &str| proto::ReportRequest {
        template: template.into(),
        from: from.clone(),
        to: to.clone(),
        app_id: String::new(),
        limit: 0,
    };
    let answer = grpc
        .report(api.grpc_request(&api.mine, report("overview_stats")))
        .await
        .unwrap()
        .into_inner();
    let Some(proto::report_response::Data::OverviewStats(o)) = answer.data else {
        panic!("{answer:?}");
    };
    assert_eq!(
        (
            o.total_events,
            o.unique_users,
            o.sessions,
            o.pageviews,
            o.app_events,
            o.video_heartbeats,
            o.watch_time_seconds
        ),
        (14, 3, 2, 4, 10, 4, 60.0)
    );
    assert_eq!(
        o.top_events.len(),
        data["top_events"].as_array().unwrap().len()
    );

    // top_content: pageviews by path, video starts by content id, watch time from heartbeats.
    let (status, rest) = api
        .post(
            "/report",
            &api.mine,
            json!({"template": "top_content", "from": from, "to": to}),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    let rows: Vec<(String, u64, u64, f64)> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["content"].as_str().unwrap().to_owned(),
                r["views"].as_u64().unwrap(),
                r["unique_viewers"].as_u64().unwrap(),
                r["watch_time_seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    let expected = vec![
        ("/home".to_owned(), 3, 2, 0.0),
        ("c1".to_owned(), 2, 2, 30.0),
        ("c2".to_owned(), 1, 1, 30.0),
        ("/pricing".to_owned(), 1, 1, 0.0),
    ];
    assert_eq!(rows, expected);
    let answer = grpc
        .report(api.grpc_request(&api.mine, report("top_content")))
        .await
        .unwrap()
        .into_inner();
    let Some(proto::report_response::Data::TopContent(top)) = answer.data else {
        panic!("{answer:?}");
    };
    let grpc_rows: Vec<_> = top
        .rows
        .into_iter()
        .map(|r| (r.content, r.views, r.unique_viewers, r.watch_time_seconds))
        .collect();
    assert_eq!(grpc_rows, expected);

    // search_analytics: queries normalised (trimmed, lower-cased), zero-result share.
    let (status, rest) = api
        .post(
            "/report",
            &api.mine,
            json!({"template": "search_analytics", "from": from, "to": to}),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    let data = &rest["data"];
    assert_eq!(data["total_searches"], 3, "{rest}");
    assert_eq!(data["unique_searchers"], 2);
    assert_eq!(data["zero_result_searches"], 1);
    assert_eq!(data["top_queries"][0]["query"], "cats");
    assert_eq!(data["top_queries"][0]["searches"], 2);
    assert_eq!(data["top_queries"][0]["avg_results"], 2.5);
    let answer = grpc
        .report(api.grpc_request(&api.mine, report("search_analytics")))
        .await
        .unwrap()
        .into_inner();
    let Some(proto::report_response::Data::SearchAnalytics(s)) = answer.data else {
        panic!("{answer:?}");
    };
    assert_eq!(
        (s.total_searches, s.unique_searchers, s.zero_result_searches),
        (3, 2, 1)
    );
    assert_eq!(
        s.zero_result_rate,
        data["zero_result_rate"].as_f64().unwrap()
    );
    assert_eq!(s.top_queries.len(), 2);

    // The other tenant's numbers are its own.
    let (_, rest) = api
        .post(
            "/report",
            &api.other,
            json!({"template": "overview_stats", "from": from, "to": to}),
        )
        .await;
    assert_eq!(rest["data"]["total_events"], 7, "{rest}");
    assert_eq!(rest["data"]["watch_time_seconds"], 1000.0);

    // Raw SQL: the same rows on both transports, scoped to the caller.
    let sql = "SELECT kind, count() AS n FROM events FINAL GROUP BY kind ORDER BY kind";
    let (status, rest) = api.post("/query", &api.mine, json!({ "sql": sql })).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["rows"], json!([["app", 10], ["web", 4]]), "{rest}");
    assert_eq!(rest["columns"][1]["name"], "n");
    let answer = grpc
        .query(api.grpc_request(&api.mine, proto::SqlRequest { sql: sql.into() }))
        .await
        .unwrap()
        .into_inner();
    let grpc_rows: Vec<Value> = answer
        .rows
        .iter()
        .map(|row| {
            Value::Array(
                row.values
                    .iter()
                    .map(|v| match &v.kind {
                        Some(prost_types::value::Kind::StringValue(s)) => json!(s),
                        Some(prost_types::value::Kind::NumberValue(n)) => json!(*n as u64),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(Value::Array(grpc_rows), rest["rows"]);

    // Metric series: the 1-minute rollup for whole minutes, raw samples otherwise.
    let path = format!(
        "/metrics/cpu?host=h1&from={}&to={}&step=60",
        urlencode(&from),
        urlencode(&to)
    );
    let (status, rest) = api.get(&path, &api.mine).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["source"], "metrics_1m");
    let points = rest["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{rest}");
    assert_eq!(
        (points[0]["count"].clone(), points[0]["avg"].clone()),
        (json!(2), json!(15.0))
    );
    assert_eq!(points[1]["max"], 30.0);
    let answer = grpc
        .metric_series(api.grpc_request(
            &api.mine,
            proto::MetricSeriesRequest {
                metric: "cpu".into(),
                host: "h1".into(),
                from: from.clone(),
                to: to.clone(),
                step_seconds: 60,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.points.len(), 2);
    assert_eq!((answer.points[0].count, answer.points[0].avg), (2, 15.0));
    let raw = path.replace("step=60", "step=30");
    let (_, rest) = api.get(&raw, &api.mine).await;
    assert_eq!(rest["source"], "metric_samples", "{rest}");
    let counts: Vec<u64> = rest["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 3, "{rest}");

    // Runs and steps.
    let (status, rest) = api.get("/runs", &api.mine).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest.as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest[0]["run_id"], "r1");
    assert_eq!(rest[0]["total_steps"], 2);
    assert_eq!(rest[0]["total_input_count"], 140);
    assert_eq!(rest[0]["total_output_count"], 50);
    let (status, rest) = api.get("/runs/r1", &api.mine).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["steps"].as_array().unwrap().len(), 2);
    assert_eq!(rest["steps"][1]["output_count"], 10);
    let (status, _) = api.get("/runs/r2", &api.mine).await;
    assert_eq!(status, 404, "another tenant's run is not found");
    let (_, steps) = api.get("/runs/r1/steps", &api.mine).await;
    assert_eq!(steps, rest["steps"]);
    let run = grpc
        .get_run(api.grpc_request(
            &api.mine,
            proto::GetRunRequest {
                run_id: "r1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.run.unwrap().total_input_count, 140);
    assert_eq!(run.steps.len(), 2);
    let missing = grpc
        .get_run(api.grpc_request(
            &api.mine,
            proto::GetRunRequest {
                run_id: "r2".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Invoices, alerts, dead letters: one each per tenant.
    let (_, rest) = api.get("/invoices", &api.mine).await;
    assert_eq!(rest.as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest[0]["invoice_id"], "inv-r1");
    assert_eq!(rest[0]["total_micros"], 1_234_000);
    let (status, _) = api.get("/invoices/inv-r2", &api.mine).await;
    assert_eq!(status, 404);
    let invoice = grpc
        .get_invoice(api.grpc_request(
            &api.mine,
            proto::GetInvoiceRequest {
                invoice_id: "inv-r1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invoice.total_micros, 1_234_000);
    let (_, rest) = api.get("/alerts", &api.mine).await;
    assert_eq!(rest.as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest[0]["rule_id"], "rule-r1");
    let alerts = grpc
        .list_alerts(api.grpc_request(&api.mine, proto::ListAlertsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alerts.alerts.len(), 1);
    let (_, rest) = api.get("/dead-letters", &api.mine).await;
    assert_eq!(rest.as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest[0]["event_id"], "r1-dead");

    // Auth: every failure is the same 401 on REST, UNAUTHENTICATED on gRPC.
    let mut bodies = Vec::new();
    for header in [
        None,
        Some("Bearer nobody:x".to_owned()),
        Some(format!("Bearer {}:wrong", api.mine)),
    ] {
        let mut request = reqwest::Client::new().get(api.url("/runs"));
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        bodies.push(response.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let denied = grpc
        .list_runs(tonic::Request::new(proto::ListRunsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);

    // Bad requests.
    let (status, rest) = api
        .post("/report", &api.mine, json!({"template": "nope"}))
        .await;
    assert_eq!(status, 400, "{rest}");
    let (status, _) = api
        .post(
            "/report",
            &api.mine,
            json!({"template": "overview_stats", "from": "yesterday"}),
        )
        .await;
    assert_eq!(status, 400);

    // OpenAPI document and page.
    let doc: Value = reqwest::get(api.url("/docs/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/report"]["post"].is_object(), "{doc}");
    assert!(doc["paths"]["/alerts/stream"]["get"].is_object());
    let page = reqwest::get(api.url("/docs")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/docs/openapi.json"));

    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_enforced_by_the_server() {
    let api = common::Api::start().await;
    // The test config allows 50 result rows: 51 is an error, never a truncated answer.
    let (status, rest) = api
        .post(
            "/query",
            &api.mine,
            json!({"sql": "SELECT e.event_id FROM events AS e CROSS JOIN events AS f"}),
        )
        .await;
    assert_eq!(status, 422, "{rest}");
    assert_eq!(rest["error"], "too_large");
    let mut grpc = api.grpc().await;
    let error = grpc
        .query(api.grpc_request(
            &api.mine,
            proto::SqlRequest {
                sql: "SELECT e.event_id FROM events AS e CROSS JOIN events AS f".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    // ClickHouse's own rejection of a query that parses: 400 with its reason.
    let (status, rest) = api
        .post(
            "/query",
            &api.mine,
            json!({"sql": "SELECT no_such_column FROM events"}),
        )
        .await;
    assert_eq!(status, 400, "{rest}");
    assert!(
        rest["message"].as_str().unwrap().contains("no_such_column"),
        "{rest}"
    );
    api.stop().await;
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}
