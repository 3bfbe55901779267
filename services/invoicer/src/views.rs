//! What the invoicer knows besides its own partitions: the latest published usage state of every
//! input partition (`billing.usage.v1`) and every invoice issued so far (`billing.invoice.v1`),
//! both read whole at start and followed live.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use ve_kafka::{KafkaConfig, KafkaError, Record, TailEvent, Watermarks, tail_topic};
use ve_schema::{Body, Codec, Envelope, Invoice, Map, RawPayload, Source};

use crate::pricing::Meter;
use crate::usage::PartitionState;

/// `RawPayload.kind` of a usage state record.
pub const STATE_KIND: &str = "usage_state";

/// The envelope of a partition's state (a JSON document in a `RawPayload`, so the envelope's
/// body union needs no new kind).
pub fn state_envelope(state: &PartitionState, service: &str, now: i64) -> Envelope {
    let payload = serde_json::to_vec(state).unwrap_or_default();
    let body = Body::Raw(RawPayload {
        kind: STATE_KIND.to_owned(),
        content_type: "application/json".to_owned(),
        channel: service.to_owned(),
        payload,
    });
    Envelope {
        event_id: format!("usage-p{}-{}", state.partition, state.next_offset),
        event_time: now,
        ingest_time: now,
        tenant_id: String::new(),
        source: Source {
            kind: "invoicer".to_owned(),
            id: service.to_owned(),
        },
        schema_name: body.schema_name().to_owned(),
        schema_version: 1,
        attributes: Map::new(),
        tags: Map::new(),
        body,
    }
}

fn state_of(envelope: Envelope) -> Result<PartitionState, String> {
    match envelope.body {
        Body::Raw(raw) if raw.kind == STATE_KIND => serde_json::from_slice(&raw.payload)
            .map_err(|e| format!("usage state is not valid JSON: {e}")),
        other => Err(format!("{} is not a usage state", other.schema_name())),
    }
}

/// Offsets read per partition of a followed topic, to wait until the view has caught up with
/// what the broker holds.
#[derive(Debug, Clone, Default)]
struct Progress {
    seen: Arc<RwLock<HashMap<i32, i64>>>,
    ready: Ready,
}

/// Set once a follower has read everything its topic held at start.
#[derive(Debug, Clone)]
struct Ready(Arc<watch::Sender<bool>>);

impl Default for Ready {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Ready {
    fn set(&self) {
        let _ = self.0.send_replace(true);
    }

    async fn wait(&self, timeout: Duration) -> bool {
        let mut ready = self.0.subscribe();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Progress {
    fn record(&self, record: &Record) {
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        let next = seen.entry(record.partition).or_default();
        *next = (*next).max(record.offset + 1);
    }

    fn next(&self, partition: i32) -> i64 {
        self.seen
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
            .unwrap_or_default()
    }
}

/// Latest usage state per input partition.
#[derive(Debug, Clone)]
pub struct UsageView {
    states: Arc<RwLock<BTreeMap<i32, Arc<PartitionState>>>>,
    progress: Progress,
    topic: String,
    watermarks: Watermarks,
}

impl UsageView {
    /// Keeps `state` unless a state further along the partition is already known: states are a
    /// function of the partition's prefix, so the one with the larger offset is the newer one,
    /// whatever order the follower and the stage's own writes arrive in.
    pub fn offer(&self, state: Arc<PartitionState>) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        let newer = states
            .get(&state.partition)
            .is_none_or(|current| current.next_offset <= state.next_offset);
        if newer {
            let _ = states.insert(state.partition, state);
        }
    }

    pub fn get(&self, partition: i32) -> Option<Arc<PartitionState>> {
        self.states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .cloned()
    }

    pub fn snapshot(&self) -> Vec<Arc<PartitionState>> {
        self.states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.progress.ready.wait(timeout).await
    }

    /// Waits until the follower has read what the state topic held when called (its single
    /// partition's high watermark), at most `timeout`; false when it did not get there.
    pub async fn sync(&self, timeout: Duration) -> Result<bool, KafkaError> {
        let high = self.watermarks.high(&self.topic, 0).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.progress.next(0) < high {
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(true)
    }
}

/// An invoice as issued: the record, its tenant and the envelope attributes (cuts, billed
/// quantities).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Issued {
    pub tenant_id: String,
    #[serde(flatten)]
    pub invoice: Invoice,
    pub attributes: Map,
}

/// Quantities billed so far per period and meter, for one tenant.
pub type Billed = BTreeMap<i64, BTreeMap<Meter, u64>>;

/// Attribute naming the cumulative quantity of `meter` billed for the period starting at `start`.
pub fn billed_attribute(start: i64, meter: Meter) -> String {
    format!("billed.{start}.{}", meter.name())
}

fn parse_billed(key: &str) -> Option<(i64, Meter)> {
    let rest = key.strip_prefix("billed.")?;
    let (start, meter) = rest.split_once('.')?;
    let meter = Meter::ALL.into_iter().find(|m| m.name() == meter)?;
    Some((start.parse().ok()?, meter))
}

/// Every invoice issued, by id.
#[derive(Debug, Clone, Default)]
pub struct InvoiceBook {
    by_id: Arc<RwLock<HashMap<String, Arc<Issued>>>>,
    /// (tenant, period start) pairs with an invoice, for counting late events cheaply.
    periods: Arc<RwLock<HashSet<(String, i64)>>>,
    ready: Ready,
}

impl InvoiceBook {
    pub fn insert(&self, issued: Issued) {
        let key = (issued.tenant_id.clone(), issued.invoice.period_start);
        let _ = self
            .periods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        let _ = self
            .by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(issued.invoice.invoice_id.clone())
            // The first one issued under an id is the invoice; a republished copy is identical.
            .or_insert_with(|| Arc::new(issued));
    }

    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.ready.wait(timeout).await
    }

    pub fn get(&self, invoice_id: &str) -> Option<Arc<Issued>> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(invoice_id)
            .cloned()
    }

    pub fn is_invoiced(&self, tenant: &str, period_start: i64) -> bool {
        self.periods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(tenant.to_owned(), period_start))
    }

    /// A tenant's invoices (all tenants' when `None`), oldest period first.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Arc<Issued>> {
        let mut list: Vec<Arc<Issued>> = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|i| tenant.is_none_or(|t| i.tenant_id == t))
            .cloned()
            .collect();
        list.sort_by(|a, b| {
            (a.invoice.period_start, &a.tenant_id).cmp(&(b.invoice.period_start, &b.tenant_id))
        });
        list
    }

    /// What the tenant's invoices billed per period and meter: the largest cumulative quantity
    /// any of them records (quantities only grow, so the largest is the latest).
    pub fn billed(&self, tenant: &str) -> Billed {
        let mut billed = Billed::new();
        for issued in self.list(Some(tenant)) {
            for (key, value) in &issued.attributes {
                let (Some((start, meter)), Ok(quantity)) =
                    (parse_billed(key), value.parse::<u64>())
                else {
                    continue;
                };
                let slot = billed.entry(start).or_default().entry(meter).or_default();
                *slot = (*slot).max(quantity);
            }
        }
        billed
    }
}

/// A follower task, to spawn under the service's supervisor.
pub type FollowTask = std::pin::Pin<Box<dyn Future<Output = Result<(), KafkaError>> + Send>>;

/// The two followed views and the tasks that fill them.
pub struct Followed {
    pub usage: UsageView,
    pub invoices: InvoiceBook,
    /// (name, task) of each follower.
    pub tasks: Vec<(&'static str, FollowTask)>,
}

impl std::fmt::Debug for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followed")
            .field("usage", &self.usage)
            .field("invoices", &self.invoices)
            .finish_non_exhaustive()
    }
}

/// A view filled from a topic.
trait Followable: Clone + Send + Sync + 'static {
    fn ready(&self) -> &Ready;
    fn apply(&self, record: Record, decoded: Result<Envelope, ve_schema::SchemaError>);
}

impl Followable for UsageView {
    fn ready(&self) -> &Ready {
        &self.progress.ready
    }

    fn apply(&self, record: Record, decoded: Result<Envelope, ve_schema::SchemaError>) {
        self.progress.record(&record);
        match decoded.map_err(|e| e.to_string()).and_then(state_of) {
            Ok(state) => self.offer(Arc::new(state)),
            Err(reason) => {
                metrics::counter!("invoicer_state_records_rejected_total").increment(1);
                tracing::error!(offset = record.offset, reason = %reason, "usage state record rejected");
            }
        }
    }
}

impl Followable for InvoiceBook {
    fn ready(&self) -> &Ready {
        &self.ready
    }

    fn apply(&self, record: Record, decoded: Result<Envelope, ve_schema::SchemaError>) {
        match decoded {
            Ok(Envelope {
                tenant_id,
                attributes,
                body: Body::Invoice(invoice),
                ..
            }) => self.insert(Issued {
                tenant_id,
                invoice,
                attributes,
            }),
            Ok(other) => tracing::warn!(
                kind = other.body.schema_name(),
                "non-invoice record on the invoice topic skipped"
            ),
            Err(e) => {
                tracing::warn!(offset = record.offset, error = %e, "undecodable invoice record skipped")
            }
        }
    }
}

/// The task reading `topic` whole, then live, into `view`.
fn follower<V: Followable>(
    kafka: &KafkaConfig,
    service: &str,
    topic: &str,
    codec: &Codec,
    view: V,
    shutdown: &CancellationToken,
) -> FollowTask {
    let (kafka, service, topic, codec, shutdown) = (
        kafka.clone(),
        service.to_owned(),
        topic.to_owned(),
        codec.clone(),
        shutdown.clone(),
    );
    Box::pin(async move {
        tail_topic(
            &kafka,
            &service,
            &topic,
            |event| {
                let (codec, view) = (codec.clone(), view.clone());
                async move {
                    match event {
                        TailEvent::CaughtUp => view.ready().set(),
                        // A tombstone carries nothing to apply.
                        TailEvent::Record(record) => {
                            if let Some(payload) = &record.payload {
                                let decoded = codec.decode(payload).await;
                                view.apply(record, decoded);
                            }
                        }
                    }
                }
            },
            shutdown,
        )
        .await
    })
}

/// Starts following the usage state and invoice topics.
pub fn follow(
    kafka: &KafkaConfig,
    service: &str,
    codec: &Codec,
    usage_topic: &str,
    invoice_topic: &str,
    shutdown: &CancellationToken,
) -> Result<Followed, KafkaError> {
    let usage = UsageView {
        states: Arc::default(),
        progress: Progress::default(),
        topic: usage_topic.to_owned(),
        watermarks: Watermarks::new(kafka, service)?,
    };
    let book = InvoiceBook::default();
    let follow_usage = follower(kafka, service, usage_topic, codec, usage.clone(), shutdown);
    let follow_invoices = follower(kafka, service, invoice_topic, codec, book.clone(), shutdown);
    Ok(Followed {
        usage,
        invoices: book,
        tasks: vec![
            ("follow-usage", follow_usage),
            ("follow-invoices", follow_invoices),
        ],
    })
}
