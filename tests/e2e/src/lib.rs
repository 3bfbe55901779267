//! The shared harness of the end-to-end tests: Value Engine's services run in-process on the real
//! local stack, each on topics, consumer groups, a ClickHouse database and an archive of the
//! test's own, so tests run side by side and a service can be crashed and restarted.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a test harness: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ve_schema::Codec;
use ve_service::{Context, ServiceError};
use ve_testkit::{Stack, service_config, unique};

pub const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

#[derive(Debug)]
struct Running {
    token: CancellationToken,
    handle: JoinHandle<Result<(), ServiceError>>,
    admin: SocketAddr,
}

/// The services on topics, groups, a database and an archive of this test's own.
#[derive(Debug)]
pub struct Pipeline {
    pub prefix: String,
    pub database: String,
    pub archive: PathBuf,
    pub tenant: String,
    pub api_key: String,
    /// The gateway's HTTP and gRPC addresses once it runs.
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The query API's HTTP and gRPC addresses once it runs.
    pub query_http: SocketAddr,
    pub query_grpc: SocketAddr,
    /// Extra configuration (full `VE_<SERVICE>__...` names) applied when a service starts.
    pub overrides: Vec<(String, String)>,
    running: BTreeMap<&'static str, Running>,
    /// Time origin of the events a test sends.
    pub base: chrono::DateTime<chrono::Utc>,
}

impl Pipeline {
    pub fn topic(&self, base: &str) -> String {
        format!("{}.{base}", self.prefix)
    }

    /// Topic, group, database and archive overrides for one service.
    pub fn env(&self, service: &str) -> Vec<(String, String)> {
        let p = ve_config::env_prefix(service);
        let t = |base: &str| self.topic(base);
        let mut env = vec![
            (
                format!("{p}KAFKA__GROUP_ID"),
                format!("{}-{service}", self.prefix),
            ),
            (format!("{p}KAFKA__FLUSH_INTERVAL_MS"), "200".to_owned()),
        ];
        let mut set = |k: &str, v: String| env.push((format!("{p}{k}"), v));
        match service {
            "gateway" => {
                set("TOPICS__RAW", t("ingest.raw.v1"));
                set("TOPICS__TENANTS", t("control.tenants.v1"));
            }
            "normalizer" => {
                set("TOPICS__RAW", t("ingest.raw.v1"));
                set("TOPICS__NORMALIZED", t("events.normalized.v1"));
                set("TOPICS__METRIC", t("signals.metric.v1"));
            }
            "enricher" => {
                set(
                    "TOPICS__INPUTS",
                    format!(
                        "[{}, {}]",
                        t("events.normalized.v1"),
                        t("signals.metric.v1")
                    ),
                );
                set("TOPICS__OUTPUT", t("events.enriched.v1"));
                set("TOPICS__TENANTS", t("control.tenants.v1"));
                set("TOPICS__CMDB", t("control.cmdb.v1"));
            }
            "clickhouse-sink" => {
                set("TOPICS__ENRICHED", t("events.enriched.v1"));
                set("TOPICS__ALERTS", t("ops.alert.v1"));
                set("TOPICS__INVOICES", t("billing.invoice.v1"));
                set(
                    "TOPICS__DEAD_LETTERS",
                    format!(
                        "[{}, {}]",
                        t("ingest.raw.v1.dlq"),
                        t("events.normalized.v1.dlq")
                    ),
                );
                set("CLICKHOUSE__DATABASE", self.database.clone());
            }
            "s3-archiver" => {
                set("TOPICS__RAW", t("ingest.raw.v1"));
                set("TOPICS__INVOICES", t("billing.invoice.v1"));
                set(
                    "OBJECT_STORE__URL",
                    format!("file://{}", self.archive.display()),
                );
            }
            "rules" => {
                set("TOPICS__INPUTS", format!("[{}]", t("events.enriched.v1")));
                set("TOPICS__RULES", t("control.rules.v1"));
                set("TOPICS__ALERTS", t("ops.alert.v1"));
                set("EVALUATION__TICK_INTERVAL_MS", "250".to_owned());
            }
            "invoicer" => {
                set("TOPICS__INPUT", t("events.enriched.v1"));
                set("TOPICS__TENANTS", t("control.tenants.v1"));
                set("TOPICS__INVOICES", t("billing.invoice.v1"));
                set("TOPICS__USAGE", t("billing.usage.v1"));
                // Closed on demand by the tests, never by the clock.
                set("BILLING__SCHEDULE", "false".to_owned());
            }
            "query-api" => {
                set("TOPICS__TENANTS", t("control.tenants.v1"));
                set("TOPICS__ALERTS", t("ops.alert.v1"));
                set("CLICKHOUSE__DATABASE", self.database.clone());
            }
            _ => unreachable!("{service}"),
        }
        env.extend(
            self.overrides
                .iter()
                .filter(|(k, _)| k.starts_with(&p))
                .cloned(),
        );
        env
    }

    pub async fn start(&mut self, service: &'static str) {
        let ctx = Context::ephemeral(service).await.unwrap();
        let admin = ctx.admin.local_addr().unwrap();
        let token = ctx.shutdown.clone();
        let env = self.env(service);
        let handle = match service {
            "gateway" => {
                let config: ve_gateway::Config = service_config(service, ve_gateway::DEFAULTS, env);
                let listeners = ve_gateway::Listeners {
                    http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                    grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                };
                self.http = listeners.http.local_addr().unwrap();
                self.grpc = listeners.grpc.local_addr().unwrap();
                tokio::spawn(ve_gateway::run_with(config, ctx, listeners))
            }
            "normalizer" => tokio::spawn(ve_normalizer::run(
                service_config(service, ve_normalizer::DEFAULTS, env),
                ctx,
            )),
            "enricher" => tokio::spawn(ve_enricher::run(
                service_config(service, ve_enricher::DEFAULTS, env),
                ctx,
            )),
            "clickhouse-sink" => tokio::spawn(ve_clickhouse_sink::run(
                service_config(service, ve_clickhouse_sink::DEFAULTS, env),
                ctx,
            )),
            "s3-archiver" => tokio::spawn(ve_s3_archiver::run(
                service_config(service, ve_s3_archiver::DEFAULTS, env),
                ctx,
            )),
            "invoicer" => tokio::spawn(ve_invoicer::run(
                service_config(service, ve_invoicer::DEFAULTS, env),
                ctx,
            )),
            "rules" => tokio::spawn(ve_rules::run(
                service_config(service, ve_rules::DEFAULTS, env),
                ctx,
            )),
            "query-api" => {
                let config: ve_query_api::Config =
                    service_config(service, ve_query_api::DEFAULTS, env);
                let listeners = ve_query_api::Listeners {
                    http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                    grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                };
                self.query_http = listeners.http.local_addr().unwrap();
                self.query_grpc = listeners.grpc.local_addr().unwrap();
                tokio::spawn(ve_query_api::run_with(config, ctx, listeners))
            }
            _ => unreachable!(),
        };
        let _ = self.running.insert(
            service,
            Running {
                token,
                handle,
                admin,
            },
        );
        wait_ready(service, admin, &self.running[service].handle).await;
    }

    /// Base URL of a running service's admin port.
    pub fn admin_url(&self, service: &str) -> String {
        format!("http://{}", self.running[service].admin)
    }

    /// A crash: the task is dropped mid-flight, nothing drains, nothing more is committed.
    pub async fn kill(&mut self, service: &'static str) {
        let running = self.running.remove(service).unwrap();
        running.handle.abort();
        let _ = running.handle.await;
    }

    pub async fn stop_all(mut self) {
        for (name, running) in std::mem::take(&mut self.running) {
            running.token.cancel();
            let outcome = tokio::time::timeout(Duration::from_secs(30), running.handle).await;
            assert!(
                matches!(outcome, Ok(Ok(Ok(())))),
                "{name} did not stop cleanly: {outcome:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&self.archive);
    }

    /// Broker and registry clients for the admin library (`ve_ctl`), as an operator has.
    pub fn admin(&self) -> (ve_kafka::KafkaConfig, Codec) {
        let stack = Stack::require();
        (
            stack.kafka("e2e-ctl"),
            Codec::new(&stack.registry()).unwrap(),
        )
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}:{}", self.tenant, self.api_key)
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .header("authorization", self.auth())
            .header("user-agent", CHROME)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        Stack::require()
            .clickhouse(&self.database)
            .client()
            .unwrap()
    }
}

async fn wait_ready(
    service: &str,
    admin: SocketAddr,
    handle: &JoinHandle<Result<(), ServiceError>>,
) {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        assert!(!handle.is_finished(), "{service} stopped during start-up");
        if let Ok(r) = client
            .get(format!("http://{admin}/health/ready"))
            .send()
            .await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} not ready within 60 s");
}

/// The five ingest services, started on a fresh tenant (plan paid) with a CMDB entry for host
/// `web-1`.
pub async fn pipeline() -> Pipeline {
    pipeline_of(&[
        "clickhouse-sink",
        "s3-archiver",
        "enricher",
        "normalizer",
        "gateway",
    ])
    .await
}

/// `services`, started in this order on a fresh tenant (plan paid) with a CMDB entry for host
/// `web-1`.
pub async fn pipeline_of(services: &[&'static str]) -> Pipeline {
    let mut p = Pipeline::prepare().await;
    for service in services {
        p.start(service).await;
    }
    p
}

impl Pipeline {
    /// A fresh tenant (plan paid, an API key) on this test's control topics, with a CMDB entry for
    /// host `web-1`; no service runs yet.
    pub async fn prepare() -> Self {
        let stack = Stack::require();
        let prefix = unique("e2e");
        let mut p = Self {
            database: prefix.clone(),
            archive: std::env::temp_dir().join(&prefix),
            tenant: format!("acme{}", &prefix[prefix.len() - 8..]),
            api_key: String::new(),
            http: "127.0.0.1:0".parse().unwrap(),
            grpc: "127.0.0.1:0".parse().unwrap(),
            query_http: "127.0.0.1:0".parse().unwrap(),
            query_grpc: "127.0.0.1:0".parse().unwrap(),
            overrides: Vec::new(),
            running: BTreeMap::new(),
            base: chrono::Utc::now(),
            prefix,
        };
        let kafka = stack.kafka("e2e-ctl");
        let codec = Codec::new(&stack.registry()).unwrap();
        for control in ["control.tenants.v1", "control.cmdb.v1", "control.rules.v1"] {
            ve_ctl::ensure_control_topic(&kafka, &p.topic(control))
                .await
                .unwrap();
        }
        let spec = ve_ctl::TenantSpec::new(&p.tenant, "Acme", ve_ctl::Plan::Paid);
        let (_, key) = ve_ctl::create_tenant(&kafka, &codec, &p.topic("control.tenants.v1"), spec)
            .await
            .unwrap();
        p.api_key = key.api_key.expose().to_owned();
        let tags = BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("Team".to_owned(), "payments".to_owned()),
        ]);
        let _ = ve_ctl::set_cmdb_host(
            &kafka,
            &codec,
            &p.topic("control.cmdb.v1"),
            &p.tenant,
            "web-1",
            tags,
            false,
        )
        .await
        .unwrap();
        p
    }
}
