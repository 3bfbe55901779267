//! Tenant API keys, shared by every service that takes requests (gateway, query API):
//! `Authorization: Bearer <tenant_id>:<secret>`, checked against the SHA-256 hashes of the
//! tenant's non-revoked keys from the compacted tenants topic. Every way of failing (no header,
//! bad syntax, unknown tenant, wrong or revoked key) looks the same to the caller, and the
//! comparison takes the same time whether or not the tenant exists.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use ve_kafka::{CompactedTable, KafkaConfig, TopicSpec};
use ve_schema::{Body, Codec, Tenant};
use ve_service::{Harness, ServiceError};

/// The one way authentication fails. Deliberately without detail: missing header, bad syntax,
/// unknown tenant, wrong or revoked key all look the same to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid or missing API key")]
    Unauthorized,
}

/// A tenant as a request handler needs it: its record plus the decoded hashes of its usable keys.
#[derive(Debug, Clone)]
pub struct TenantAuth {
    pub tenant: Tenant,
    keys: Vec<[u8; 32]>,
}

impl TenantAuth {
    pub fn new(tenant: Tenant) -> Self {
        let keys = tenant
            .api_keys
            .iter()
            .filter(|k| !k.revoked)
            .filter_map(|k| {
                let decoded = hex::decode(k.sha256.trim()).ok()?;
                let hash: Option<[u8; 32]> = decoded.try_into().ok();
                if hash.is_none() {
                    tracing::warn!(tenant = %tenant.tenant_id, key_id = %k.key_id, "api key hash is not 64 hex digits, ignored");
                }
                hash
            })
            .collect();
        Self { tenant, keys }
    }

    fn accepts(&self, digest: &[u8; 32]) -> Choice {
        // Every key is compared, so the time does not say which one (if any) matched.
        self.keys
            .iter()
            .fold(Choice::from(0), |found, key| found | key.ct_eq(digest))
    }
}

/// Hex SHA-256 of an API key secret: what a tenant record stores.
pub fn hash_api_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Where tenants come from: the live compacted topic, or a fixed set (tests, tools).
#[derive(Debug, Clone)]
pub enum Tenants {
    Live(CompactedTable<Arc<TenantAuth>>),
    Fixed(Arc<HashMap<String, Arc<TenantAuth>>>),
}

impl Tenants {
    pub fn live(table: CompactedTable<Arc<TenantAuth>>) -> Self {
        Self::Live(table)
    }

    pub fn fixed(tenants: impl IntoIterator<Item = Tenant>) -> Self {
        Self::Fixed(Arc::new(
            tenants
                .into_iter()
                .map(|t| (t.tenant_id.clone(), Arc::new(TenantAuth::new(t))))
                .collect(),
        ))
    }

    pub fn get(&self, tenant_id: &str) -> Option<Arc<TenantAuth>> {
        match self {
            Self::Live(table) => table.get(tenant_id),
            Self::Fixed(map) => map.get(tenant_id).cloned(),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Arc<TenantAuth>, AuthError> {
        let (tenant_id, secret) = header
            .and_then(parse_bearer)
            .ok_or(AuthError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let tenant = self.get(tenant_id);
        let matched = match &tenant {
            // The record key is the tenant id; a record whose body disagrees is not trusted.
            Some(t) if t.tenant.tenant_id == tenant_id => t.accepts(&digest),
            _ => {
                let _ = [0u8; 32].ct_eq(&digest);
                Choice::from(0)
            }
        };
        match tenant {
            Some(t) if bool::from(matched) => Ok(t),
            _ => Err(AuthError::Unauthorized),
        }
    }
}

/// `Bearer <tenant_id>:<secret>` (scheme case-insensitive) -> (tenant_id, secret).
fn parse_bearer(value: &str) -> Option<(&str, &str)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (tenant, secret) = token.trim().split_once(':')?;
    (!tenant.is_empty() && !secret.is_empty()).then_some((tenant, secret))
}

type Decoded = Pin<Box<dyn Future<Output = Result<Arc<TenantAuth>, String>> + Send>>;

/// Decodes a tenants-topic record (an envelope with a `Tenant` body) for the compacted table.
pub fn tenant_decoder(codec: Codec) -> impl Fn(Vec<u8>) -> Decoded + Send + Sync + 'static {
    move |bytes: Vec<u8>| {
        let codec = codec.clone();
        Box::pin(async move {
            let envelope = codec.decode(&bytes).await.map_err(|e| e.to_string())?;
            match envelope.body {
                Body::Tenant(tenant) => Ok(Arc::new(TenantAuth::new(tenant))),
                other => Err(format!(
                    "expected a Tenant body, got {}",
                    other.schema_name()
                )),
            }
        })
    }
}

/// Ensures the compacted tenants `topic` exists, follows it live under `harness` (with a
/// readiness check "tenants" that passes once the topic has been read), and waits up to `timeout`
/// for the first full read. `Ok(None)`: shutdown was requested while waiting.
pub async fn follow_tenants(
    harness: &mut Harness,
    kafka: &KafkaConfig,
    service: &str,
    topic: &str,
    codec: Codec,
    timeout: Duration,
) -> Result<Option<Tenants>, ServiceError> {
    let ensured = harness
        .until_shutdown(ve_kafka::ensure_topics(
            kafka,
            &[TopicSpec::compacted(topic.to_owned())],
        ))
        .await;
    match ensured {
        None => return Ok(None),
        Some(ensured) => ensured.map_err(|e| ServiceError::startup("tenants topic", e))?,
    }
    let (table, follow) = CompactedTable::follow(
        kafka.clone(),
        service.to_owned(),
        topic.to_owned(),
        tenant_decoder(codec),
        harness.token(),
    );
    harness.spawn("tenants", follow);
    {
        let table = table.clone();
        harness.check("tenants", move || {
            let loaded = table.is_ready();
            async move {
                if loaded {
                    Ok(())
                } else {
                    Err("tenants topic not loaded yet")
                }
            }
        });
    }
    match harness.until_shutdown(table.wait_ready(timeout)).await {
        None => Ok(None),
        Some(false) => Err(ServiceError::Startup(format!(
            "tenants topic {topic} not loaded within {timeout:?}"
        ))),
        Some(true) => {
            tracing::info!(tenants = table.len(), "tenants loaded");
            Ok(Some(Tenants::live(table)))
        }
    }
}

#[cfg(test)]
mod tests {
    use ve_schema::ApiKey;

    use super::*;

    fn tenant(id: &str, keys: &[(&str, bool)]) -> Tenant {
        Tenant {
            tenant_id: id.into(),
            name: id.into(),
            plan: "paid".into(),
            retention_days: 90,
            rate_limit_eps: 1000,
            burst: 1000,
            api_keys: keys
                .iter()
                .enumerate()
                .map(|(i, (secret, revoked))| ApiKey {
                    key_id: format!("k{i}"),
                    sha256: hash_api_key(secret),
                    revoked: *revoked,
                })
                .collect(),
            currency: "USD".into(),
        }
    }

    #[test]
    fn good_key_passes_everything_else_is_the_same_error() {
        let tenants = Tenants::fixed([tenant("t1", &[("old", true), ("s3cret", false)])]);
        assert_eq!(
            tenants
                .authenticate(Some("Bearer t1:s3cret"))
                .unwrap()
                .tenant
                .tenant_id,
            "t1"
        );
        assert!(tenants.authenticate(Some("bearer t1:s3cret")).is_ok());
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer t1"),
            Some("Bearer t1:"),
            Some("Bearer :s3cret"),
            Some("Basic t1:s3cret"),
            Some("Bearer t1:wrong"),
            Some("Bearer t1:old"),
            Some("Bearer t2:s3cret"),
        ] {
            let err = tenants.authenticate(bad).unwrap_err();
            assert!(matches!(err, AuthError::Unauthorized), "{bad:?}");
        }
    }

    #[test]
    fn secrets_may_contain_colons() {
        let tenants = Tenants::fixed([tenant("t1", &[("a:b:c", false)])]);
        assert!(tenants.authenticate(Some("Bearer t1:a:b:c")).is_ok());
    }

    #[test]
    fn malformed_hashes_are_ignored() {
        let mut t = tenant("t1", &[("x", false)]);
        t.api_keys[0].sha256 = "zz".into();
        assert!(TenantAuth::new(t).keys.is_empty());
    }
}
