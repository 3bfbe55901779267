use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;
use ve_config::Secret;

/// `[kafka]` section shared by every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Consumer group of this service; instances of one service share it.
    pub group_id: String,
    /// Producer compression: none, gzip, snappy, lz4, zstd.
    pub compression: String,
    /// How long the producer waits to fill a batch.
    pub linger_ms: u64,
    /// How long a produce may take before it counts as failed (includes retries).
    pub delivery_timeout_ms: u64,
    /// Records handed to the stage at once (seed 004 `BATCH_SIZE`).
    pub batch_size: usize,
    /// Longest a partial batch waits before it is processed (seed 004 `FLUSH_INTERVAL`).
    pub flush_interval_ms: u64,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub max_poll_interval_ms: u64,
    /// Partitions for topics this service creates when they are missing.
    pub partitions: i32,
    pub replication_factor: i32,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (TLS/SASL need a build with those features).
    pub security_protocol: String,
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: Secret,
    /// Raw librdkafka properties, applied last (e.g. `"fetch.max.bytes" = "..."`).
    pub extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub(crate) fn client(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        let _ = config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("security.protocol", &self.security_protocol)
            // Surface an unreachable broker as an error instead of waiting forever.
            .set("socket.connection.setup.timeout.ms", "10000");
        if !self.sasl_mechanism.is_empty() {
            let _ = config
                .set("sasl.mechanism", &self.sasl_mechanism)
                .set("sasl.username", &self.sasl_username)
                .set("sasl.password", self.sasl_password.expose());
        }
        config
    }

    /// Consumer prefetch bounds. librdkafka's defaults let one consumer queue up to 64 MiB of
    /// fetched records and ask for 50 MiB per fetch, which alone exceeds a service's memory budget
    /// (100 MiB); a few MiB keeps every partition fed at tens of thousands of records per second.
    /// `[kafka.extra]` overrides them.
    pub(crate) fn bound_prefetch(config: &mut ClientConfig) {
        let _ = config
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.max.bytes", "4194304");
    }

    pub(crate) fn apply_extra(&self, config: &mut ClientConfig) {
        for (key, value) in &self.extra {
            let _ = config.set(key, value);
        }
    }
}
