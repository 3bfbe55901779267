//! Test helpers for integration tests against the real local stack (`make stack-up`, or
//! `make test`, which starts it). When the stack is not reachable every helper panics with a
//! message saying what is missing and how to start it: integration tests fail loudly, never skip.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use ve_kafka::KafkaConfig;
use ve_schema::RegistryConfig;
use ve_store::ClickHouseConfig;

/// Where the local stack listens; overridable for a stack elsewhere.
#[derive(Debug, Clone)]
pub struct Stack {
    pub brokers: String,
    pub registry: String,
    pub clickhouse: String,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn require(what: &str, addr: &str) {
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "the local stack's {what} is not reachable at {addr}. Integration tests need the real stack: \
         run `make stack-up` (or `make test`, which starts it), or point VE_TEST_* at one."
    );
}

fn host_port(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

impl Stack {
    /// The stack from `VE_TEST_BROKERS`, `VE_TEST_REGISTRY`, `VE_TEST_CLICKHOUSE` (defaults: the
    /// local stack's loopback ports). Each accessor checks that its component answers and panics
    /// with instructions when it does not.
    pub fn require() -> Self {
        Self {
            brokers: env_or("VE_TEST_BROKERS", "127.0.0.1:9092"),
            registry: env_or("VE_TEST_REGISTRY", "http://127.0.0.1:8081"),
            clickhouse: env_or("VE_TEST_CLICKHOUSE", "http://127.0.0.1:8123"),
        }
    }

    /// Client settings for tests: short group timeouts so a consumer group forms in seconds.
    pub fn kafka(&self, group: &str) -> KafkaConfig {
        require("broker", self.brokers.split(',').next().unwrap_or_default());
        KafkaConfig {
            brokers: self.brokers.clone(),
            group_id: group.to_owned(),
            compression: "lz4".into(),
            linger_ms: 5,
            delivery_timeout_ms: 10_000,
            batch_size: 500,
            flush_interval_ms: 200,
            session_timeout_ms: 6000,
            heartbeat_interval_ms: 1000,
            max_poll_interval_ms: 7000,
            partitions: 3,
            replication_factor: 1,
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: ve_config::Secret::default(),
            extra: Default::default(),
        }
    }

    pub fn registry(&self) -> RegistryConfig {
        require("schema registry", host_port(&self.registry));
        RegistryConfig {
            url: self.registry.clone(),
            username: String::new(),
            password: ve_config::Secret::default(),
            timeout_ms: 5000,
        }
    }

    /// A ClickHouse config for a database of the test's own.
    pub fn clickhouse(&self, database: &str) -> ClickHouseConfig {
        require("ClickHouse engine", host_port(&self.clickhouse));
        let local = self.clickhouse.contains("127.0.0.1:8123")
            || self.clickhouse.contains("localhost:8123");
        ClickHouseConfig {
            url: self.clickhouse.clone(),
            database: database.to_owned(),
            user: env_or("VE_TEST_CLICKHOUSE_USER", "default"),
            password: ve_config::Secret::new(env_or("VE_TEST_CLICKHOUSE_PASSWORD", "")),
            compression: env_or(
                "VE_TEST_CLICKHOUSE_COMPRESSION",
                if local { "none" } else { "lz4" },
            ),
        }
    }
}

/// A name no other test run uses: topics, groups, databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple()).replace('-', "_")
}

impl Stack {
    /// Environment overrides that point a service's configuration at this stack (and at a
    /// private object-store directory), with a consumer group of its own and short group
    /// timeouts.
    pub fn service_env(&self, service: &str) -> Vec<(String, String)> {
        let prefix = ve_config::env_prefix(service);
        let clickhouse = self.clickhouse("value_engine");
        let registry = self.registry();
        let archive = std::env::temp_dir().join(unique("ve-archive"));
        [
            ("KAFKA__BROKERS", self.kafka("unused").brokers),
            // Never the service's real consumer group: a test instance that dies mid-rebalance
            // can leave a member behind that some brokers (Tansu) never evict.
            ("KAFKA__GROUP_ID", unique(&format!("test-{service}"))),
            ("KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("KAFKA__MAX_POLL_INTERVAL_MS", "7000".to_owned()),
            ("REGISTRY__URL", registry.url),
            ("CLICKHOUSE__URL", clickhouse.url),
            ("CLICKHOUSE__COMPRESSION", clickhouse.compression),
            ("OBJECT_STORE__URL", format!("file://{}", archive.display())),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
    }
}

/// A service's configuration pointed at this stack (see [`Stack::service_env`]) plus `extra`
/// environment overrides (full `VE_<SERVICE>__...` names), which win.
pub fn service_config<C: serde::de::DeserializeOwned>(
    service: &str,
    defaults: &str,
    extra: Vec<(String, String)>,
) -> C {
    let stack = Stack::require();
    let prefix = ve_config::env_prefix(service);
    let mut env = stack.service_env(service);
    // Keys a service lacks are rejected, so keep only those of sections in its defaults.
    env.retain(|(key, _)| {
        let section = key
            .trim_start_matches(&prefix)
            .split("__")
            .next()
            .unwrap_or_default();
        defaults.contains(&format!("[{}]", section.to_ascii_lowercase()))
    });
    env.extend(extra);
    ve_config::Sources::new(service, defaults)
        .env(env)
        .load()
        .expect("test configuration loads")
}

/// Starts a service through its real `run` on this stack, waits until `/health/ready` answers
/// 200, then requests shutdown and checks that it drains and returns cleanly.
pub async fn assert_service_lifecycle<C, F, Fut>(
    service: &'static str,
    defaults: &'static str,
    run: F,
) where
    C: ve_service::ServiceConfig,
    F: FnOnce(C, ve_service::Context) -> Fut,
    Fut: std::future::Future<Output = Result<(), ve_service::ServiceError>> + Send + 'static,
{
    let config: C = service_config(service, defaults, Vec::new());
    let ctx = ve_service::Context::ephemeral(service)
        .await
        .expect("bind admin port");
    let admin = ctx.admin.local_addr().expect("admin address");
    let shutdown = ctx.shutdown.clone();
    let running = tokio::spawn(run(config, ctx));

    let ready_url = format!("http://{admin}/health/ready");
    let mut last = String::new();
    let mut ready = false;
    for _ in 0..300 {
        assert!(
            !running.is_finished(),
            "{service} stopped during start-up: {:?}",
            running.await
        );
        if let Some((status, body)) = http_get(&ready_url).await {
            if status == 200 {
                ready = true;
                break;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "{service} never became ready; last /health/ready: {last}"
    );
    let (status, metrics) = http_get(&format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer");
    assert_eq!(status, 200, "{metrics}");
    let (status, _) = http_get(&format!("http://{admin}/health/live"))
        .await
        .expect("live answers");
    assert_eq!(status, 200);

    shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap_or_else(|_| panic!("{service} did not drain within 30 s"))
        .expect("service task");
    assert!(outcome.is_ok(), "{service} stopped with {outcome:?}");
}

/// Minimal HTTP/1.1 GET over a plain socket: enough for admin endpoints, no client dependency.
async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
