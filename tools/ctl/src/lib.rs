//! `ve-ctl`: the admin command that writes control data — tenants and their API keys, CMDB host
//! tags, alert rules — as envelopes to the compacted `control.*` topics the services follow.
//!
//! The functions here are the command's whole behaviour, so tests of other crates can set up
//! tenants and rules exactly as an operator would (`create_tenant`, `set_cmdb_host`, `set_rule`).
//!
//! API keys: a key is `ve_` followed by 64 hex digits (32 random bytes from the OS). Only the
//! SHA-256 of the whole key string, in lowercase hex ([`key_sha256`]), is stored in the tenant
//! record; the key itself is printed once and never kept. Clients send it as
//! `Authorization: Bearer <tenant_id>:<api_key>`; the gateway hashes the part after the colon the
//! same way and compares it with the tenant's unrevoked keys.
//!
//! Updates are read-modify-write: the current state is read by tailing the compacted topic from
//! the beginning. Two operators updating the same tenant at the same moment: the last write wins.

pub mod cli;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use ve_config::Secret;
use ve_kafka::{CompactedTable, KafkaConfig, KafkaError, OutRecord, Producer, TopicSpec};
use ve_schema::{AlertRule, ApiKey, Body, CmdbHost, Codec, Envelope, SchemaError, Source, Tenant};

/// Client id on the broker and `source.id` of the envelopes this command writes.
pub const SERVICE: &str = "ve-ctl";

/// How long reading a control topic up to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad input from the operator (exit status 2).
    #[error("{0}")]
    Usage(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The state could not be read completely; writing now could overwrite what was not seen.
    #[error("cannot read {topic}: {reason}")]
    Read { topic: String, reason: String },
    #[error("no random source: {0}")]
    Random(String),
}

impl CtlError {
    /// Whether running the same command again later can succeed (broker or registry down).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Kafka(_) | Self::Read { .. } => true,
            Self::Schema(e) => e.is_retryable(),
            Self::Usage(_) | Self::NotFound(_) | Self::Exists(_) | Self::Random(_) => false,
        }
    }
}

/// Client settings for the command: the brokers given, everything else the services' defaults.
pub fn kafka_config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        group_id: SERVICE.to_owned(),
        compression: "lz4".into(),
        linger_ms: 0,
        delivery_timeout_ms: 30_000,
        batch_size: 1000,
        flush_interval_ms: 1000,
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 1000,
        max_poll_interval_ms: 300_000,
        partitions: 6,
        replication_factor: 1,
        security_protocol: "plaintext".into(),
        sasl_mechanism: String::new(),
        sasl_username: String::new(),
        sasl_password: Secret::default(),
        extra: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Plans and API keys

/// Billing plan of a tenant; each comes with default retention and rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plan {
    Free,
    Paid,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Paid => "paid",
            Self::Enterprise => "enterprise",
        }
    }

    /// Retention tiers (ARCHITECTURE.md): free 24 h, paid 90 d, enterprise custom (a year unless
    /// given).
    pub fn default_retention_days(self) -> i32 {
        match self {
            Self::Free => 1,
            Self::Paid => 90,
            Self::Enterprise => 365,
        }
    }

    /// (events per second, burst).
    pub fn default_rate_limit(self) -> (i32, i32) {
        match self {
            Self::Free => (100, 200),
            Self::Paid => (1_000, 2_000),
            Self::Enterprise => (10_000, 20_000),
        }
    }
}

/// A freshly generated API key: the only moment the secret exists outside its holder.
#[derive(Clone)]
pub struct NewKey {
    pub key_id: String,
    pub api_key: Secret,
}

impl NewKey {
    /// The HTTP header value a client authenticates with.
    pub fn authorization(&self, tenant_id: &str) -> String {
        format!("Bearer {tenant_id}:{}", self.api_key.expose())
    }
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .field("api_key", &self.api_key)
            .finish()
    }
}

/// Lowercase hex SHA-256 of the whole key string: what the tenant record stores.
pub fn key_sha256(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, CtlError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| CtlError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// A new key (32 random bytes) and its id (`key_id` when given, else a random `k_` + 8 hex).
pub fn generate_key(key_id: Option<&str>) -> Result<(NewKey, ApiKey), CtlError> {
    let key_id = match key_id {
        Some(id) => {
            validate_id("key id", id)?;
            id.to_owned()
        }
        None => format!("k_{}", random_hex(4)?),
    };
    let secret = format!("ve_{}", random_hex(32)?);
    let stored = ApiKey {
        key_id: key_id.clone(),
        sha256: key_sha256(&secret),
        revoked: false,
    };
    Ok((
        NewKey {
            key_id,
            api_key: Secret::new(secret),
        },
        stored,
    ))
}

/// Ids become Kafka keys (`{tenant}/{host}`) and object-store path parts: no `/`, no blanks.
fn validate_id(what: &str, id: &str) -> Result<(), CtlError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '/');
    if ok {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "{what} {id:?}: 1 to 128 characters, no '/', spaces or control characters"
        )))
    }
}

/// Tenant ids travel in paths, metric labels and SQL: keep them to a plain alphabet.
fn validate_tenant_id(id: &str) -> Result<(), CtlError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "tenant id {id:?}: 1 to 64 characters of a-z, A-Z, 0-9, '-', '_', '.'"
        )))
    }
}

fn validate_currency(currency: &str) -> Result<(), CtlError> {
    if currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "currency {currency:?}: an ISO 4217 code such as USD"
        )))
    }
}

fn validate_limits(retention_days: i32, rate_limit_eps: i32, burst: i32) -> Result<(), CtlError> {
    if retention_days < 1 {
        return Err(CtlError::Usage("retention days must be at least 1".into()));
    }
    if rate_limit_eps < 1 || burst < rate_limit_eps {
        return Err(CtlError::Usage(format!(
            "rate limit {rate_limit_eps}/s with burst {burst}: the rate must be at least 1 and the burst at least the rate"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading and writing control topics

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// The envelope of one control record.
pub fn control_envelope(tenant_id: &str, body: Body) -> Envelope {
    let now = now_micros();
    Envelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_time: now,
        ingest_time: now,
        tenant_id: tenant_id.to_owned(),
        source: Source {
            kind: "service".into(),
            id: SERVICE.into(),
        },
        schema_name: body.schema_name().to_owned(),
        schema_version: 1,
        attributes: BTreeMap::new(),
        tags: BTreeMap::new(),
        body,
    }
}

/// Creates the control topic (compacted) when it does not exist yet, so the command works before
/// any service has started.
pub async fn ensure_control_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), CtlError> {
    ve_kafka::ensure_topics(kafka, &[TopicSpec::compacted(topic)]).await?;
    Ok(())
}

/// Writes `body` under `key` and waits for the broker's acknowledgement.
pub async fn put(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    key: &str,
    tenant_id: &str,
    body: Body,
) -> Result<(), CtlError> {
    ensure_control_topic(kafka, topic).await?;
    let payload = codec
        .encode(topic, &control_envelope(tenant_id, body))
        .await?;
    let producer = Producer::new(kafka, SERVICE)?;
    let _ = producer.send(&OutRecord::new(topic, key, payload)).await?;
    Ok(())
}

/// Writes a tombstone: the key disappears from the compacted topic and from every follower.
pub async fn delete(kafka: &KafkaConfig, topic: &str, key: &str) -> Result<(), CtlError> {
    ensure_control_topic(kafka, topic).await?;
    let producer = Producer::new(kafka, SERVICE)?;
    let _ = producer.send(&OutRecord::tombstone(topic, key)).await?;
    Ok(())
}

/// Every live key of a control topic with its envelope, read from the beginning to the end.
pub async fn read_topic(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
) -> Result<BTreeMap<String, Envelope>, CtlError> {
    ensure_control_topic(kafka, topic).await?;
    let unavailable = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (table, task) = {
        let codec = codec.clone();
        let unavailable = Arc::clone(&unavailable);
        CompactedTable::follow(
            kafka.clone(),
            SERVICE.to_owned(),
            topic.to_owned(),
            move |bytes: Vec<u8>| {
                let codec = codec.clone();
                let unavailable = Arc::clone(&unavailable);
                async move {
                    codec.decode(&bytes).await.map_err(|e| {
                        if e.is_retryable() {
                            let _ = unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        e.to_string()
                    })
                }
            },
            shutdown.clone(),
        )
    };
    let mut follower = tokio::spawn(task);
    let failed = |reason: String| CtlError::Read {
        topic: topic.to_owned(),
        reason,
    };
    let ready = tokio::select! {
        ready = table.wait_ready(READ_TIMEOUT) => ready,
        joined = &mut follower => {
            return Err(match joined {
                Ok(Err(e)) => CtlError::Kafka(e),
                Ok(Ok(())) => failed("the reader stopped early".into()),
                Err(e) => failed(e.to_string()),
            });
        }
    };
    shutdown.cancel();
    let _ = follower.await;
    if !ready {
        return Err(failed(format!(
            "did not reach the end within {}s",
            READ_TIMEOUT.as_secs()
        )));
    }
    let skipped = unavailable.load(Ordering::Relaxed);
    if skipped > 0 {
        return Err(failed(format!(
            "{skipped} record(s) could not be decoded (schema registry unavailable)"
        )));
    }
    Ok(table.snapshot().into_iter().collect())
}

/// Tenants by id.
pub async fn read_tenants(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
) -> Result<BTreeMap<String, Tenant>, CtlError> {
    Ok(read_topic(kafka, codec, topic)
        .await?
        .into_iter()
        .filter_map(|(key, envelope)| match envelope.body {
            Body::Tenant(tenant) => Some((key, tenant)),
            _ => None,
        })
        .collect())
}

pub async fn read_tenant(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
) -> Result<Tenant, CtlError> {
    read_tenants(kafka, codec, topic)
        .await?
        .remove(tenant_id)
        .ok_or_else(|| CtlError::NotFound(format!("tenant {tenant_id}")))
}

/// CMDB hosts by `{tenant}/{host}`.
pub async fn read_cmdb(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
) -> Result<BTreeMap<String, CmdbHost>, CtlError> {
    Ok(read_topic(kafka, codec, topic)
        .await?
        .into_iter()
        .filter_map(|(key, envelope)| match envelope.body {
            Body::Cmdb(host) => Some((key, host)),
            _ => None,
        })
        .collect())
}

/// Alert rules by `{tenant}/{rule_id}`.
pub async fn read_rules(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
) -> Result<BTreeMap<String, AlertRule>, CtlError> {
    Ok(read_topic(kafka, codec, topic)
        .await?
        .into_iter()
        .filter_map(|(key, envelope)| match envelope.body {
            Body::Rule(rule) => Some((key, rule)),
            _ => None,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Tenants

/// What `tenant create` takes; limits left `None` follow the plan's defaults.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    pub tenant_id: String,
    pub name: String,
    pub plan: Plan,
    pub retention_days: Option<i32>,
    pub rate_limit_eps: Option<i32>,
    pub burst: Option<i32>,
    pub currency: Option<String>,
    /// Id of the first API key; random when `None`.
    pub key_id: Option<String>,
}

impl TenantSpec {
    pub fn new(tenant_id: &str, name: &str, plan: Plan) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            plan,
            retention_days: None,
            rate_limit_eps: None,
            burst: None,
            currency: None,
            key_id: None,
        }
    }
}

/// Changes of `tenant update`; `None` keeps the current value. A plan change without explicit
/// limits moves retention and rate limits to the new plan's defaults.
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub name: Option<String>,
    pub plan: Option<Plan>,
    pub retention_days: Option<i32>,
    pub rate_limit_eps: Option<i32>,
    pub burst: Option<i32>,
    pub currency: Option<String>,
}

async fn write_tenant(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant: &Tenant,
) -> Result<(), CtlError> {
    put(
        kafka,
        codec,
        topic,
        &tenant.tenant_id,
        &tenant.tenant_id,
        Body::Tenant(tenant.clone()),
    )
    .await
}

/// Creates a tenant with one API key; refuses an id that exists.
pub async fn create_tenant(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    spec: TenantSpec,
) -> Result<(Tenant, NewKey), CtlError> {
    validate_tenant_id(&spec.tenant_id)?;
    let (default_eps, default_burst) = spec.plan.default_rate_limit();
    let rate_limit_eps = spec.rate_limit_eps.unwrap_or(default_eps);
    let burst = spec.burst.unwrap_or(rate_limit_eps.max(default_burst));
    let retention_days = spec
        .retention_days
        .unwrap_or(spec.plan.default_retention_days());
    validate_limits(retention_days, rate_limit_eps, burst)?;
    let currency = spec.currency.unwrap_or_else(|| "USD".to_owned());
    validate_currency(&currency)?;
    if read_tenants(kafka, codec, topic)
        .await?
        .contains_key(&spec.tenant_id)
    {
        return Err(CtlError::Exists(format!(
            "tenant {} exists; use `tenant update` or `tenant add-key`",
            spec.tenant_id
        )));
    }
    let (key, stored) = generate_key(spec.key_id.as_deref())?;
    let tenant = Tenant {
        name: if spec.name.is_empty() {
            spec.tenant_id.clone()
        } else {
            spec.name
        },
        tenant_id: spec.tenant_id,
        plan: spec.plan.as_str().to_owned(),
        retention_days,
        rate_limit_eps,
        burst,
        api_keys: vec![stored],
        currency,
    };
    write_tenant(kafka, codec, topic, &tenant).await?;
    Ok((tenant, key))
}

/// Applies `update` to a tenant's current record.
pub async fn update_tenant(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
    update: TenantUpdate,
) -> Result<Tenant, CtlError> {
    let mut tenant = read_tenant(kafka, codec, topic, tenant_id).await?;
    if let Some(name) = update.name {
        tenant.name = name;
    }
    if let Some(plan) = update.plan {
        tenant.plan = plan.as_str().to_owned();
        tenant.retention_days = plan.default_retention_days();
        (tenant.rate_limit_eps, tenant.burst) = plan.default_rate_limit();
    }
    if let Some(days) = update.retention_days {
        tenant.retention_days = days;
    }
    if let Some(eps) = update.rate_limit_eps {
        tenant.rate_limit_eps = eps;
        tenant.burst = tenant.burst.max(eps);
    }
    if let Some(burst) = update.burst {
        tenant.burst = burst;
    }
    if let Some(currency) = update.currency {
        validate_currency(&currency)?;
        tenant.currency = currency;
    }
    validate_limits(tenant.retention_days, tenant.rate_limit_eps, tenant.burst)?;
    write_tenant(kafka, codec, topic, &tenant).await?;
    Ok(tenant)
}

/// Adds a new API key to a tenant (key rotation: add, switch clients, revoke the old one).
pub async fn add_key(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
    key_id: Option<&str>,
) -> Result<(Tenant, NewKey), CtlError> {
    let mut tenant = read_tenant(kafka, codec, topic, tenant_id).await?;
    if let Some(id) = key_id
        && tenant.api_keys.iter().any(|k| k.key_id == id)
    {
        return Err(CtlError::Exists(format!(
            "tenant {tenant_id} already has a key {id}"
        )));
    }
    let (key, stored) = generate_key(key_id)?;
    tenant.api_keys.push(stored);
    write_tenant(kafka, codec, topic, &tenant).await?;
    Ok((tenant, key))
}

/// Marks a key revoked; the hash stays so the record shows the key existed.
pub async fn revoke_key(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
    key_id: &str,
) -> Result<Tenant, CtlError> {
    let mut tenant = read_tenant(kafka, codec, topic, tenant_id).await?;
    let key = tenant
        .api_keys
        .iter_mut()
        .find(|k| k.key_id == key_id)
        .ok_or_else(|| CtlError::NotFound(format!("key {key_id} of tenant {tenant_id}")))?;
    key.revoked = true;
    write_tenant(kafka, codec, topic, &tenant).await?;
    Ok(tenant)
}

/// Removes a tenant (tombstone): its keys stop working everywhere the topic is followed.
pub async fn delete_tenant(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
) -> Result<(), CtlError> {
    let _ = read_tenant(kafka, codec, topic, tenant_id).await?;
    delete(kafka, topic, tenant_id).await
}

// ---------------------------------------------------------------------------------------------
// CMDB

/// Key of a CMDB host on `control.cmdb.v1`.
pub fn cmdb_key(tenant_id: &str, host: &str) -> String {
    format!("{tenant_id}/{host}")
}

/// Sets a host's tags (replacing them, or merged over the current ones with `merge`).
pub async fn set_cmdb_host(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
    host: &str,
    tags: BTreeMap<String, String>,
    merge: bool,
) -> Result<CmdbHost, CtlError> {
    validate_tenant_id(tenant_id)?;
    validate_id("host", host)?;
    let key = cmdb_key(tenant_id, host);
    let mut record = CmdbHost {
        host: host.to_owned(),
        tags: BTreeMap::new(),
    };
    if merge && let Some(current) = read_cmdb(kafka, codec, topic).await?.remove(&key) {
        record.tags = current.tags;
    }
    // The enricher writes these as `host.<key>` tags, and tag keys are lowercase everywhere.
    record.tags.extend(
        tags.into_iter()
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v)),
    );
    put(
        kafka,
        codec,
        topic,
        &key,
        tenant_id,
        Body::Cmdb(record.clone()),
    )
    .await?;
    Ok(record)
}

pub async fn delete_cmdb_host(
    kafka: &KafkaConfig,
    topic: &str,
    tenant_id: &str,
    host: &str,
) -> Result<(), CtlError> {
    delete(kafka, topic, &cmdb_key(tenant_id, host)).await
}

/// Parses `key=value` (the `--tag` flag).
pub fn parse_tag(text: &str) -> Result<(String, String), CtlError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(CtlError::Usage(format!("tag {text:?}: expected key=value"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Alert rules

/// Key of an alert rule on `control.rules.v1`.
pub fn rule_key(tenant_id: &str, rule_id: &str) -> String {
    format!("{tenant_id}/{rule_id}")
}

pub const RULE_KINDS: &[&str] = &["threshold", "rate", "absence"];
pub const RULE_OPERATORS: &[&str] = &[">", ">=", "<", "<=", "==", "!="];

/// Checks a rule the way the rules service will read it.
pub fn validate_rule(rule: &AlertRule) -> Result<(), CtlError> {
    validate_id("rule id", &rule.rule_id)?;
    if !RULE_KINDS.contains(&rule.kind.as_str()) {
        return Err(CtlError::Usage(format!(
            "rule kind {:?}: one of {}",
            rule.kind,
            RULE_KINDS.join(", ")
        )));
    }
    if !RULE_OPERATORS.contains(&rule.operator.as_str()) {
        return Err(CtlError::Usage(format!(
            "operator {:?}: one of {}",
            rule.operator,
            RULE_OPERATORS.join(" ")
        )));
    }
    if rule.kind == "threshold" && rule.metric.is_none() {
        return Err(CtlError::Usage("a threshold rule needs --metric".into()));
    }
    if rule.kind != "threshold" && rule.metric.is_none() && rule.event_match.is_none() {
        return Err(CtlError::Usage(format!(
            "a {} rule needs --metric or --event-match",
            rule.kind
        )));
    }
    if !rule.threshold.is_finite() {
        return Err(CtlError::Usage("threshold must be a finite number".into()));
    }
    if rule.for_seconds < 0 {
        return Err(CtlError::Usage("--for-seconds must not be negative".into()));
    }
    // The rules service refuses these: a zero-second window or silence means nothing.
    if rule.kind != "threshold" && rule.for_seconds == 0 {
        return Err(CtlError::Usage(format!(
            "a {} rule needs --for-seconds of at least 1",
            rule.kind
        )));
    }
    Ok(())
}

/// Creates or replaces a tenant's alert rule.
pub async fn set_rule(
    kafka: &KafkaConfig,
    codec: &Codec,
    topic: &str,
    tenant_id: &str,
    rule: AlertRule,
) -> Result<AlertRule, CtlError> {
    validate_tenant_id(tenant_id)?;
    validate_rule(&rule)?;
    put(
        kafka,
        codec,
        topic,
        &rule_key(tenant_id, &rule.rule_id),
        tenant_id,
        Body::Rule(rule.clone()),
    )
    .await?;
    Ok(rule)
}

pub async fn delete_rule(
    kafka: &KafkaConfig,
    topic: &str,
    tenant_id: &str,
    rule_id: &str,
) -> Result<(), CtlError> {
    delete(kafka, topic, &rule_key(tenant_id, rule_id)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_random_and_only_their_hash_is_kept() {
        let (a, stored_a) = generate_key(None).unwrap();
        let (b, _) = generate_key(Some("ci")).unwrap();
        assert_ne!(a.api_key.expose(), b.api_key.expose());
        assert_eq!(b.key_id, "ci");
        assert!(a.key_id.starts_with("k_") && a.key_id.len() == 10);
        let secret = a.api_key.expose();
        assert!(
            secret.starts_with("ve_") && secret.len() == 3 + 64,
            "{secret}"
        );
        assert_eq!(stored_a.sha256, key_sha256(secret));
        assert_eq!(stored_a.sha256.len(), 64);
        assert!(!stored_a.sha256.contains(&secret[3..]));
        assert!(
            !format!("{a:?}").contains(secret),
            "Debug must mask the key"
        );
    }

    #[test]
    fn sha256_is_lowercase_hex_of_the_key_string() {
        // echo -n abc | sha256sum
        assert_eq!(
            key_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_tenant_id("acme-2.eu_1").is_ok());
        for bad in ["", "a/b", "a b", "..", "é"] {
            assert!(validate_tenant_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id("host", "web-1.example.com").is_ok());
        assert!(validate_id("host", "web/1").is_err());
        assert!(validate_currency("EUR").is_ok());
        assert!(validate_currency("eur").is_err());
        assert!(validate_limits(1, 10, 10).is_ok());
        assert!(validate_limits(0, 10, 10).is_err());
        assert!(validate_limits(1, 10, 5).is_err());
    }

    #[test]
    fn tags_parse() {
        assert_eq!(
            parse_tag("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert_eq!(parse_tag("k=a=b").unwrap(), ("k".into(), "a=b".into()));
        assert_eq!(parse_tag("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(parse_tag("novalue").is_err());
        assert!(parse_tag("=x").is_err());
    }

    fn rule(kind: &str, metric: Option<&str>) -> AlertRule {
        AlertRule {
            rule_id: "r1".into(),
            name: "r1".into(),
            kind: kind.into(),
            metric: metric.map(Into::into),
            event_match: None,
            operator: ">".into(),
            threshold: 90.0,
            for_seconds: 60,
            group_by: vec!["host".into()],
            enabled: true,
        }
    }

    #[test]
    fn rules_are_checked() {
        assert!(validate_rule(&rule("threshold", Some("cpu_load"))).is_ok());
        assert!(validate_rule(&rule("threshold", None)).is_err());
        assert!(validate_rule(&rule("rate", None)).is_err());
        assert!(validate_rule(&rule("spike", Some("cpu"))).is_err());
        let mut r = rule("absence", Some("heartbeat"));
        r.operator = "=~".into();
        assert!(validate_rule(&r).is_err());
        let mut silent = rule("absence", Some("heartbeat"));
        silent.for_seconds = 0;
        assert!(validate_rule(&silent).is_err(), "zero seconds of silence");
        let mut at_once = rule("threshold", Some("cpu_load"));
        at_once.for_seconds = 0;
        assert!(
            validate_rule(&at_once).is_ok(),
            "a threshold may fire at once"
        );
    }

    #[test]
    fn plans_have_their_tiers() {
        assert_eq!(Plan::Free.default_retention_days(), 1);
        assert_eq!(Plan::Paid.default_retention_days(), 90);
        assert_eq!(Plan::Enterprise.as_str(), "enterprise");
    }
}
