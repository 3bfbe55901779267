//! The enrichment stage: decode, look the tenant and host up in the followed control tables, add
//! tags, encode, and produce the whole batch (acknowledged) before the consumer loop commits.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use ve_kafka::{CompactedTable, OutRecord, Outcome, Producer, Record, Stage, StageError};
use ve_schema::{Body, Codec, Envelope, SchemaError};

use crate::EnricherError;
use crate::enrich::{HostTags, TenantTags, enrich, host_of, is_enrichable, user_agent_of};
use crate::ua::UaCache;

/// Tenants whose absence was already logged; bounded so a stream of bogus ids cannot grow it.
const MAX_WARNED_TENANTS: usize = 1000;

impl From<SchemaError> for EnricherError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Unavailable(reason) => Self::Retryable(reason),
            // The registry refusing our envelope schema for the output subject cannot heal by
            // retrying; every record would fail the same way.
            SchemaError::Rejected { .. } => Self::Fatal(e.to_string()),
            SchemaError::Decode(_) | SchemaError::Encode(_) => Self::Poison(e.to_string()),
        }
    }
}

/// Below this many records per worker a batch is enriched in place: spawning costs more than
/// it saves.
const MIN_RECORDS_PER_WORKER: usize = 64;

/// Enriches normalized events and metric samples into `output`.
///
/// Decoding and encoding (Avro) are most of the cost, so a large batch is split across
/// `workers` tasks that run on all cores; their outputs are reassembled in input order.
#[derive(Debug)]
pub struct Enricher {
    producer: Producer,
    /// Idle between batches; each is moved into its task and handed back with the results.
    workers: Vec<Worker>,
}

/// What one enrichment task owns: shared handles to the codec and tables, its own caches.
#[derive(Debug)]
struct Worker {
    codec: Codec,
    output: String,
    tenants: CompactedTable<Arc<TenantTags>>,
    hosts: CompactedTable<Arc<HostTags>>,
    unknown: Arc<TenantTags>,
    ua: UaCache,
    host_key: String,
    warned: HashSet<String>,
}

/// Shared state the enricher reads: tables followed live, the codec, the output topic.
#[derive(Debug, Clone)]
pub struct Lookups {
    pub codec: Codec,
    pub output: String,
    pub tenants: CompactedTable<Arc<TenantTags>>,
    pub hosts: CompactedTable<Arc<HostTags>>,
    /// Tags of events whose tenant is unknown.
    pub unknown: TenantTags,
}

impl Enricher {
    /// `workers` tasks per batch (at least one), each with a user-agent cache of
    /// `ua_cache_entries`.
    pub fn new(
        producer: Producer,
        lookups: Lookups,
        workers: usize,
        ua_cache_entries: usize,
    ) -> Self {
        let unknown = Arc::new(lookups.unknown);
        let workers = (0..workers.max(1))
            .map(|_| Worker {
                codec: lookups.codec.clone(),
                output: lookups.output.clone(),
                tenants: lookups.tenants.clone(),
                hosts: lookups.hosts.clone(),
                unknown: Arc::clone(&unknown),
                ua: UaCache::new(ua_cache_entries),
                host_key: String::new(),
                warned: HashSet::new(),
            })
            .collect();
        Self { producer, workers }
    }

    /// One result per record, in order.
    async fn enrich_all(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<Result<OutRecord, EnricherError>>, StageError> {
        let parallel = (batch.len() / MIN_RECORDS_PER_WORKER).min(self.workers.len());
        if parallel <= 1 {
            let worker = &mut self.workers[0];
            let mut results = Vec::with_capacity(batch.len());
            for record in batch {
                results.push(worker.enrich_record(record).await);
            }
            return Ok(results);
        }
        let chunk = batch.len().div_ceil(parallel);
        let mut tasks = Vec::with_capacity(parallel);
        for records in batch.chunks(chunk) {
            let Some(worker) = self.workers.pop() else {
                break;
            };
            // Tasks must own their input; a copy of the records is cheap next to Avro work.
            tasks.push(tokio::spawn(worker.run(records.to_vec())));
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut lost = None;
        for task in tasks {
            match task.await {
                Ok((worker, chunk_results)) => {
                    self.workers.push(worker);
                    results.extend(chunk_results);
                }
                Err(e) => lost = Some(e.to_string()),
            }
        }
        match lost {
            // A panicked task is a bug; its worker is gone, so stop rather than limp on.
            Some(reason) => Err(StageError::Fatal(format!(
                "enrichment task failed: {reason}"
            ))),
            None => Ok(results),
        }
    }
}

impl Worker {
    async fn run(mut self, records: Vec<Record>) -> (Self, Vec<Result<OutRecord, EnricherError>>) {
        let mut results = Vec::with_capacity(records.len());
        for record in &records {
            results.push(self.enrich_record(record).await);
        }
        (self, results)
    }

    async fn enrich_record(&mut self, record: &Record) -> Result<OutRecord, EnricherError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| EnricherError::Poison("record without a payload".into()))?;
        let mut envelope: Envelope = self.codec.decode(payload).await?;
        if !is_enrichable(&envelope.body) {
            return Err(EnricherError::Poison(format!(
                "{} is not a normalized event kind",
                envelope.body.schema_name()
            )));
        }
        let tenant = self.tenants.get(&envelope.tenant_id);
        if tenant.is_none() {
            self.warn_unknown(&envelope.tenant_id);
        }
        let host = match host_of(&envelope) {
            Some(host) => {
                self.host_key.clear();
                let _ = write!(self.host_key, "{}/{host}", envelope.tenant_id);
                self.hosts.get(&self.host_key)
            }
            None => None,
        };
        let ua = user_agent_of(&envelope).map(|ua| self.ua.get(ua));
        enrich(
            &mut envelope,
            tenant.as_deref(),
            &self.unknown,
            host.as_deref(),
            ua.as_deref(),
        );
        let bytes = self.codec.encode(&self.output, &envelope).await?;
        Ok(OutRecord {
            topic: self.output.clone(),
            key: record.key.clone(),
            payload: Some(bytes),
            headers: Vec::new(),
        }
        .with_trace(record.trace_context().as_ref()))
    }

    fn warn_unknown(&mut self, tenant: &str) {
        if self.warned.len() < MAX_WARNED_TENANTS && self.warned.insert(tenant.to_owned()) {
            tracing::warn!(
                tenant,
                plan = %self.unknown.plan,
                "tenant not in the control topic; events tagged with the unknown plan"
            );
        }
    }
}

impl Stage for Enricher {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        for result in self.enrich_all(batch).await? {
            match result {
                Ok(enriched) => {
                    out.push(enriched);
                    outcomes.push(Outcome::Done);
                }
                Err(EnricherError::Poison(reason)) => outcomes.push(Outcome::Poison(reason)),
                Err(EnricherError::Retryable(reason)) => return Err(StageError::Retryable(reason)),
                Err(EnricherError::Fatal(reason)) => return Err(StageError::Fatal(reason)),
            }
        }
        // A partly delivered batch is retried whole; the duplicates it produces are absorbed by
        // the idempotent sinks (event ids), never lost.
        let _ = self
            .producer
            .send_all(&out)
            .await
            .map_err(|e| StageError::Retryable(e.to_string()))?;
        Ok(outcomes)
    }
}

/// What [`control_decoder`] returns per record.
pub type DecodeFuture<V> = std::pin::Pin<Box<dyn Future<Output = Result<V, String>> + Send>>;

/// Decoder for a control table: the envelope's body as `V`, waiting out a registry outage (a
/// skipped control record would leave stale state until its next change).
pub fn control_decoder<V, F>(
    codec: Codec,
    shutdown: CancellationToken,
    extract: F,
) -> impl Fn(Vec<u8>) -> DecodeFuture<V> + Send + Sync + 'static
where
    V: Send + 'static,
    F: Fn(Body) -> Result<V, String> + Send + Sync + Copy + 'static,
{
    move |bytes: Vec<u8>| {
        let codec = codec.clone();
        let shutdown = shutdown.clone();
        Box::pin(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match codec.decode(&bytes).await {
                    Ok(envelope) => return extract(envelope.body),
                    Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "control record undecodable for now, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Err(e.to_string()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
    }
}

/// Body of a `control.tenants.v1` record.
pub fn tenant_tags(body: Body) -> Result<Arc<TenantTags>, String> {
    match body {
        Body::Tenant(tenant) => Ok(TenantTags::from_tenant(&tenant)),
        other => Err(format!("expected a Tenant, got {}", other.schema_name())),
    }
}

/// Body of a `control.cmdb.v1` record.
pub fn host_tags(body: Body) -> Result<Arc<HostTags>, String> {
    match body {
        Body::Cmdb(host) => Ok(HostTags::from_cmdb(&host)),
        other => Err(format!("expected a CmdbHost, got {}", other.schema_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_errors_are_classified() {
        assert!(matches!(
            EnricherError::from(SchemaError::Decode("x".into())),
            EnricherError::Poison(_)
        ));
        assert!(matches!(
            EnricherError::from(SchemaError::Unavailable("x".into())),
            EnricherError::Retryable(_)
        ));
        assert!(matches!(
            EnricherError::from(SchemaError::Rejected {
                subject: "s".into(),
                reason: "409".into()
            }),
            EnricherError::Fatal(_)
        ));
    }

    #[test]
    fn control_bodies_must_be_the_right_kind() {
        let body = crate::enrich::tests::metric("h");
        assert!(tenant_tags(body.clone()).is_err());
        assert!(host_tags(body).is_err());
    }
}
