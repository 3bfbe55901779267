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
