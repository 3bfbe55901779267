//! The gateway on the real local stack: API keys from a tenants topic, limits, partial
//! acceptance, every route and protocol, and the records it leaves on the raw topic.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ve_gateway::grpc::proto::ingest_service_client::IngestServiceClient;
use ve_gateway::grpc::proto::{Event, IngestRequest};
use ve_gateway::{Config, DEFAULTS, Listeners, hash_api_key};
use ve_kafka::{KafkaConfig, OutRecord, Producer, Record, TailEvent, TopicSpec};
use ve_schema::{ApiKey, Body, Codec, Envelope, Map, Source, Tenant};
use ve_testkit::{Stack, unique};

const SECRET: &str = "s3cret-key";

fn tenant(id: &str, rate: i32, burst: i32) -> Tenant {
    Tenant {
        tenant_id: id.into(),
        name: id.into(),
        plan: "paid".into(),
        retention_days: 90,
        rate_limit_eps: rate,
        burst,
        api_keys: vec![
            ApiKey {
                key_id: "old".into(),
                sha256: hash_api_key("revoked-key"),
                revoked: true,
            },
            ApiKey {
                key_id: "current".into(),
                sha256: hash_api_key(SECRET),
                revoked: false,
            },
        ],
        currency: "USD".into(),
    }
}

struct Gateway {
    http: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
    raw_topic: String,
    kafka: KafkaConfig,
    codec: Codec,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
}

impl Gateway {
    async fn start(tenants: &[Tenant], overrides: &[(&str, &str)]) -> Self {
        let stack = Stack::require();
        let kafka = stack.kafka(&unique("gateway"));
        let registry = stack.registry();
        let raw_topic = unique("ingest_raw");
        let tenants_topic = unique("control_tenants");
        ve_kafka::ensure_topics(&kafka, &[TopicSpec::compacted(&tenants_topic)])
            .await
            .unwrap();
        let codec = Codec::new(&registry).unwrap();
        let producer = Producer::new(&kafka, "gateway-test").unwrap();
        for t in tenants {
            let envelope = Envelope {
                event_id: t.tenant_id.clone(),
                event_time: 1_700_000_000_000_000,
                ingest_time: 1_700_000_000_000_000,
                tenant_id: t.tenant_id.clone(),
                source: Source {
                    kind: "service".into(),
                    id: "gateway-test".into(),
                },
                schema_name: "ve.v1.Tenant".into(),
                schema_version: 1,
                attributes: Map::new(),
                tags: Map::new(),
                body: Body::Tenant(t.clone()),
            };
            let bytes = codec.encode(&tenants_topic, &envelope).await.unwrap();
            let _ = producer
                .send(&OutRecord::new(&tenants_topic, t.tenant_id.clone(), bytes))
                .await
                .unwrap();
        }
        // A record the gateway must skip without falling over.
        let _ = producer
            .send(&OutRecord::new(
                &tenants_topic,
                "junk",
                b"not an envelope".to_vec(),
            ))
            .await
            .unwrap();

        let prefix = ve_config::env_prefix("gateway");
        let mut env: Vec<(String, String)> = vec![
            ("KAFKA__BROKERS".into(), kafka.brokers.clone()),
            ("KAFKA__DELIVERY_TIMEOUT_MS".into(), "10000".into()),
            ("REGISTRY__URL".into(), registry.url.clone()),
            ("TOPICS__RAW".into(), raw_topic.clone()),
            ("TOPICS__TENANTS".into(), tenants_topic),
        ];
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config: Config = ve_config::Sources::new("gateway", DEFAULTS)
            .env(env.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
            .load()
            .unwrap();
        let listeners = Listeners {
            http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let http = listeners.http.local_addr().unwrap();
        let grpc = listeners.grpc.local_addr().unwrap();
        let ctx = ve_service::Context::ephemeral("gateway").await.unwrap();
        let admin = ctx.admin.local_addr().unwrap();
        let shutdown = ctx.shutdown.clone();
        let task = tokio::spawn(ve_gateway::run_with(config, ctx, listeners));
        let gateway = Self {
            http,
            grpc,
            admin,
            raw_topic,
            kafka,
            codec,
            shutdown,
            task,
        };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/health/ready", self.admin);
        for _ in 0..600 {
            assert!(!self.task.is_finished(), "gateway stopped during start-up");
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gateway never became ready");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn post(&self, path: &str, auth: Option<&str>, body: Vec<u8>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send().await.unwrap()
    }

    async fn post_json(&self, path: &str, tenant: &str, body: Value) -> (u16, Value) {
        let auth = format!("Bearer {tenant}:{SECRET}");
        let response = self
            .post(path, Some(&auth), serde_json::to_vec(&body).unwrap())
            .await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Reads `count` records from the raw topic (failing after 30 s).
    async fn raw_records(&self, count: usize) -> Vec<Record> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (kafka, topic, token) = (self.kafka.clone(), self.raw_topic.clone(), stop.clone());
        let tail = tokio::spawn(async move {
            ve_kafka::tail_topic(
                &kafka,
                "gateway-test",
                &topic,
                move |event| {
                    let tx = tx.clone();
                    async move {
                        if let TailEvent::Record(record) = event {
                            let _ = tx.send(record);
                        }
                    }
                },
                token,
            )
            .await
        });
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while records.len() < count {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(record)) => records.push(record),
                _ => panic!(
                    "only {} of {count} records on {}",
                    records.len(),
                    self.raw_topic
                ),
            }
        }
        stop.cancel();
        let _ = tail.await;
        records
    }

    async fn decoded(&self, count: usize) -> Vec<(Record, Envelope)> {
        let mut out = Vec::new();
        for record in self.raw_records(count).await {
            let envelope = self
                .codec
                .decode(record.payload.as_deref().unwrap())
                .await
                .unwrap();
            out.push((record, envelope));
        }
        out
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("gateway drains within 30 s")
            .unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

fn web_event(id: Option<&str>, kind: &str) -> Value {
    let mut event = json!({
        "tenant_id": "someone-else",
        "session_id": "11111111-1111-1111-1111-111111111111",
        "timestamp": "2024-01-01T00:00:00Z",
        "type": kind,
        "title": "Home",
        "path": "/",
    });
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    event
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_failures_look_alike_and_limits_answer_413_and_429() {
    let gateway = Gateway::start(
        &[tenant("t-auth", 0, 0), tenant("t-slow", 1, 2)],
        &[
            ("HTTP__MAX_BODY_BYTES", "4096"),
            ("LIMITS__MAX_EVENTS_PER_BATCH", "5"),
        ],
    )
    .await;
    let body = serde_json::to_vec(&json!({"events": [web_event(None, "pageview")]})).unwrap();

    // 401: one body for every way of failing.
    let mut answers = Vec::new();
    for auth in [
        None,
        Some("Bearer nobody:s3cret-key".to_owned()),
        Some("Bearer t-auth:wrong".to_owned()),
        Some("Bearer t-auth:revoked-key".to_owned()),
        Some("Basic dC1hdXRoOnMzY3JldC1rZXk=".to_owned()),
        Some("Bearer t-auth".to_owned()),
    ] {
        let response = gateway.post("/ingest", auth.as_deref(), body.clone()).await;
        assert_eq!(response.status(), 401, "{auth:?}");
        answers.push(response.bytes().await.unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let good = format!("Bearer t-auth:{SECRET}");
    assert_eq!(
        gateway
            .post("/ingest", Some(&good), body.clone())
            .await
            .status(),
        200
    );

    // 413: an oversized body is refused (before auth, unread) ...
    let big = serde_json::to_vec(&json!({"events": [{"padding": "x".repeat(8192)}]})).unwrap();
    for auth in [Some(good.as_str()), None] {
        let response = gateway.post("/ingest", auth, big.clone()).await;
        assert_eq!(response.status(), 413);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "payload_too_large");
    }
    // ... and so is a batch with too many events.
    let events: Vec<Value> = (0..6).map(|_| web_event(None, "click")).collect();
    let (status, answer) = gateway
        .post_json("/ingest", "t-auth", json!({ "events": events }))
        .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("6 events"),
        "{answer}"
    );

    // 429: a tenant allowed 1 event/s with a burst of 2.
    let two = json!({"events": [web_event(None, "pageview"), web_event(None, "click")]});
    let (status, answer) = gateway.post_json("/ingest", "t-slow", two.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let response = gateway
        .post(
            "/ingest",
            Some(&format!("Bearer t-slow:{SECRET}")),
            serde_json::to_vec(&two).unwrap(),
        )
        .await;
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");

    let metrics = gateway.metrics().await;
    for line in [
        r#"gateway_events_rejected_total{reason="unauthorized"} 6"#,
        r#"gateway_events_rejected_total{reason="rate_limited"} 2"#,
        r#"gateway_http_requests_total{route="/ingest",status="429"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_event_is_rejected_with_its_reason_and_the_rest_land_on_the_topic() {
    let gateway = Gateway::start(&[tenant("t-web", 0, 0)], &[]).await;
    let client_id = "550e8400-e29b-41d4-a716-446655440000";
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let events = vec![
        web_event(Some(client_id), "pageview"),
        json!({"session_id": "s", "timestamp": "not a time", "type": "click"}),
        web_event(None, "click"),
        json!({"kind": "app", "app_id": "openstream", "event_name": "video_buffering",
               "user_id": "u1", "timestamp": "2026-02-02T12:00:00.000Z",
               "properties": {"buffer_duration_ms": 1500}}),
        json!({"kind": "logline", "message": "?"}),
    ];
    let response = reqwest::Client::new()
        .post(gateway.url("/ingest"))
        .header("authorization", format!("Bearer t-web:{SECRET}"))
        .header("traceparent", traceparent)
        .header("user-agent", "test-sdk/1.0")
        .header("x-source-id", "web-js/3.1")
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "partial", "{answer}");
    assert_eq!(answer["events_accepted"], 3, "{answer}");
    assert_eq!(answer["events_rejected"], 2, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected[0]["index"], 1);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("bad timestamp"),
        "{answer}"
    );
    assert_eq!(rejected[1]["index"], 4);
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown kind `logline`")
    );
    let batch_id = answer["batch_id"].as_str().unwrap().to_owned();

    let records = gateway.decoded(3).await;
    let by_key: HashMap<String, &(Record, Envelope)> = records
        .iter()
        .map(|r| (r.0.key_str().unwrap().to_owned(), r))
        .collect();
    let (record, envelope) = by_key[client_id];
    assert_eq!(envelope.event_id, client_id);
    assert_eq!(
        envelope.tenant_id, "t-web",
        "the key decides the tenant, not the body"
    );
    assert_eq!(envelope.event_time, 1_704_067_200_000_000);
    assert_eq!(envelope.source.kind, "sdk");
    assert_eq!(envelope.source.id, "web-js/3.1");
    assert_eq!(envelope.attributes["batch_id"], batch_id);
    assert_eq!(envelope.attributes["user_agent"], "test-sdk/1.0");
    assert_eq!(envelope.attributes["client_ip"], "127.0.0.1");
    let Body::Raw(raw) = &envelope.body else {
        panic!("{envelope:?}")
    };
    assert_eq!((raw.kind.as_str(), raw.channel.as_str()), ("web", "http"));
    assert_eq!(raw.content_type, "application/json");
    let sent: Value = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(sent, events[0]);
    let trace = record.trace_context().unwrap();
    assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");

    // Events without an id get the deterministic one.
    let click = serde_json::to_vec(&events[2]).unwrap();
    let derived = ve_schema::ingest::derive_event_id("t-web", ve_schema::ingest::Kind::Web, &click);
    assert!(by_key.contains_key(&derived), "{:?}", by_key.keys());
    let app = records
        .iter()
        .find(|(_, e)| matches!(&e.body, Body::Raw(r) if r.kind == "app"))
        .unwrap();
    assert_eq!(app.1.source.kind, "app");
    assert_eq!(app.1.event_time, 1_770_033_600_000_000);

    // A batch whose every event is bad is a 400 with the reasons.
    let (status, answer) = gateway
        .post_json(
            "/ingest",
            "t-web",
            json!({"events": [{"type": "pageview"}]}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["status"], "rejected");
    let (status, _) = gateway
        .post_json("/ingest", "t-web", json!({"not_events": []}))
        .await;
    assert_eq!(status, 400);

    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("gateway_events_accepted_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_events_rejected_total{reason="invalid"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_records_produced_total"),
        "{metrics}"
    );
    gateway.stop().await;
}

fn otlp_request(service: &str, spans: usize) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![0xab; 16],
                        // An all-zero span id is invalid: the last span of a batch is refused.
                        span_id: if i + 1 == spans && spans > 1 {
                            vec![0; 8]
                        } else {
                            vec![i as u8 + 1; 8]
                        },
                        name: format!("op-{i}"),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_001_000_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_and_protocol_lands_its_kind() {
    let gateway = Gateway::start(&[tenant("t-all", 0, 0)], &[]).await;
    let auth = format!("Bearer t-all:{SECRET}");

    let (status, answer) = gateway
        .post_json(
            "/v1/app-events",
            "t-all",
            json!({"events": [{"app_id": "openstream", "event_name": "play", "user_id": "u",
                               "timestamp": "2026-02-02T12:00:00Z"}]}),
        )
        .await;
    assert_eq!(
        (status, answer["events_accepted"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );

    let (status, answer) = gateway
        .post_json(
            "/v1/metrics",
            "t-all",
            json!({"samples": [{"host": "host-a", "metric": "cpu_load", "value": 92, "unit": "percent",
                                "ts_event": "2025-10-16T09:00:00Z", "tags": {"env": "prod"}}]}),
        )
        .await;
    assert_eq!(
        (status, answer["events_accepted"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );

    let (status, answer) = gateway
        .post_json(
            "/v1/pipeline",
            "t-all",
            json!({
                "runs": [{"run_id": "r1", "pipeline_id": "p1", "status": "running", "started_at": "2025-01-01T00:00:00Z"}],
                "steps": [{"step_id": "s1", "run_id": "r1", "pipeline_id": "p1", "input_count": 10, "output_count": 20}],
                "decisions": [{"decision_id": "d1", "step_id": "s1", "run_id": "r1", "pipeline_id": "p1", "item_id": "i1", "outcome": "kept"}]
            }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events_accepted"], 2, "{answer}");
    assert_eq!(
        answer["rejected"][0]["index"], 1,
        "the step (output > input): {answer}"
    );

    // OTLP/HTTP protobuf: 3 spans, the last invalid -> partial success.
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/traces"))
        .header("authorization", &auth)
        .header("content-type", "application/x-protobuf")
        .body(otlp_request("checkout", 3).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let answer = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    let partial = answer.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("span_id"),
        "{}",
        partial.error_message
    );

    // OTLP/HTTP JSON.
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/traces"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&otlp_request("cart", 1)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer.get("partialSuccess").is_none_or(Value::is_null),
        "{answer}"
    );

    // OTLP/HTTP with a bad key: 401 with a google.rpc.Status body.
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/traces"))
        .header("authorization", "Bearer t-all:nope")
        .header("content-type", "application/x-protobuf")
        .body(otlp_request("x", 1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // gRPC ingest.
    let mut client = IngestServiceClient::connect(format!("http://{}", gateway.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(IngestRequest {
        events: vec![
            Event {
                kind: "metric".into(),
                json: br#"{"host":"h2","metric":"mem","value":1,"unit":"MB"}"#.to_vec(),
            },
            Event {
                kind: "metric".into(),
                json: br#"{"host":"h2","metric":"mem"}"#.to_vec(),
            },
        ],
        source_id: "agent-7".into(),
    });
    let _ = request
        .metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    let answer = client.ingest(request).await.unwrap().into_inner();
    assert_eq!((answer.events_accepted, answer.events_rejected), (1, 1));
    assert!(
        answer.rejected[0].reason.contains("missing field `value`"),
        "{answer:?}"
    );
    let unauthenticated = client
        .ingest(IngestRequest {
            events: vec![],
            source_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);

    // OTLP/gRPC.
    let mut traces = TraceServiceClient::connect(format!("http://{}", gateway.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(otlp_request("search", 1));
    let _ = request
        .metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    let answer = traces.export(request).await.unwrap().into_inner();
    assert!(answer.partial_success.is_none(), "{answer:?}");

    // 1 app + 1 metric + 2 pipeline + 2 + 1 OTLP/HTTP + 1 gRPC metric + 1 OTLP/gRPC.
    let records = gateway.decoded(9).await;
    let mut seen: Vec<(String, String)> = records
        .iter()
        .map(|(_, e)| match &e.body {
            Body::Raw(raw) => (raw.kind.clone(), raw.channel.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    seen.sort();
    let expected = [
        ("app", "http"),
        ("decision", "http"),
        ("metric", "grpc"),
        ("metric", "http"),
        ("run", "http"),
        ("span", "otlp"),
        ("span", "otlp"),
        ("span", "otlp"),
        ("span", "otlp"),
    ];
    assert_eq!(
        seen,
        expected.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
    );
    let grpc_metric = records
        .iter()
        .find(|(_, e)| matches!(&e.body, Body::Raw(r) if r.channel == "grpc"))
        .unwrap();
    assert_eq!(grpc_metric.1.source.id, "agent-7");
    assert_eq!(grpc_metric.1.source.kind, "agent");
    let span = records
        .iter()
        .find(|(_, e)| e.source.id == "search")
        .unwrap();
    let Body::Raw(raw) = &span.1.body else {
        panic!()
    };
    let flat: ve_schema::ingest::SpanIn = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(flat.service_name, "search");
    assert_eq!(span.1.event_time, 1_700_000_000_000_000);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_does_not_acknowledge_means_503_and_nothing_accepted() {
    use tower::ServiceExt as _;
    let stack = Stack::require();
    let mut kafka = stack.kafka("unused");
    // Nothing listens there: every delivery times out.
    kafka.brokers = "127.0.0.1:1".into();
    kafka.delivery_timeout_ms = 1500;
    let ingestor = ve_gateway::Ingestor::with_limits(
        ve_gateway::Tenants::fixed([tenant("t-down", 0, 0)]),
        Codec::new(&stack.registry()).unwrap(),
        Producer::new(&kafka, "gateway-test").unwrap(),
        unique("ingest_raw"),
        10,
    );
    let app = ve_gateway::http::router(
        std::sync::Arc::new(ingestor),
        &ve_gateway::HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: 1 << 20,
            trust_forwarded_for: false,
        },
    );
    let body = serde_json::to_vec(&json!({"events": [web_event(None, "pageview")]})).unwrap();
    let response = app
        .oneshot(
            axum::http::Request::post("/ingest")
                .header("authorization", format!("Bearer t-down:{SECRET}"))
                .body(axum::body::Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["error"], "unavailable", "{answer}");
    assert!(answer.get("events_accepted").is_none(), "{answer}");
}
