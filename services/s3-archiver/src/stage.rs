//! The archiving stage: decode each record, work out its object key, PUT the objects of a batch
//! concurrently (bounded), and return only once every PUT has completed, so the consumer loop
//! commits nothing that is not in the store.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, stream};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use ve_kafka::{Outcome, Record, Stage, StageError};
use ve_schema::{Body, Codec, SchemaError};

use crate::ArchiverError;
use crate::layout::{InvoiceDocument, invoice_key, object_path, raw_key};

impl From<SchemaError> for ArchiverError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Unavailable(reason) => Self::Retryable(reason),
            other => Self::Poison(other.to_string()),
        }
    }
}

/// Writes raw events and invoices to the object store.
#[derive(Debug)]
pub struct Archiver {
    codec: Codec,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    max_in_flight: usize,
    written: metrics::Counter,
}

impl Archiver {
    /// `written` counts completed PUTs (`s3_archiver_objects_written_total`).
    pub fn new(
        codec: Codec,
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        max_in_flight: usize,
        written: metrics::Counter,
    ) -> Self {
        Self {
            codec,
            store,
            prefix,
            max_in_flight: max_in_flight.max(1),
            written,
        }
    }

    /// The object a record becomes: its path and its bytes.
    async fn object_for(&self, record: &Record) -> Result<(Path, Bytes), ArchiverError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| ArchiverError::Poison("record without a payload".into()))?;
        let envelope = self.codec.decode(payload).await?;
        match envelope.body {
            Body::Raw(raw) => {
                let key = raw_key(
                    &envelope.tenant_id,
                    &raw,
                    envelope.event_time,
                    &envelope.event_id,
                )
                .map_err(ArchiverError::Poison)?;
                // The payload moves into the object: no copy of the event's bytes.
                Ok((object_path(&self.prefix, &key), Bytes::from(raw.payload)))
            }
            Body::Invoice(invoice) => {
                let key = invoice_key(&envelope.tenant_id, &invoice);
                let document = serde_json::to_vec(&InvoiceDocument {
                    tenant_id: &envelope.tenant_id,
                    invoice: &invoice,
                })
                .map_err(|e| ArchiverError::Poison(format!("invoice as JSON: {e}")))?;
                Ok((object_path(&self.prefix, &key), Bytes::from(document)))
            }
            other => Err(ArchiverError::Poison(format!(
                "{} is neither a raw event nor an invoice",
                other.schema_name()
            ))),
        }
    }
}

impl Stage for Archiver {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        // Keyed by path: a record delivered twice in one batch is written once.
        let mut objects: HashMap<Path, Bytes> = HashMap::with_capacity(batch.len());
        for record in batch {
            match self.object_for(record).await {
                Ok((path, bytes)) => {
                    let _ = objects.insert(path, bytes);
                    outcomes.push(Outcome::Done);
                }
                Err(ArchiverError::Poison(reason)) => outcomes.push(Outcome::Poison(reason)),
                Err(ArchiverError::Retryable(reason)) => return Err(StageError::Retryable(reason)),
                Err(ArchiverError::Fatal(reason)) => return Err(StageError::Fatal(reason)),
            }
        }
        let store = &self.store;
        let results: Vec<Result<(), String>> = stream::iter(objects)
            .map(|(path, bytes)| async move {
                store
                    .put(&path, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{path}: {e}"))
            })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;
        let written = results.iter().filter(|r| r.is_ok()).count();
        self.written.increment(written as u64);
        // Any failed PUT retries the whole batch: rewriting an object with the same bytes under
        // the same key is harmless, skipping one is loss.
        if let Some(Err(reason)) = results.into_iter().find(Result::is_err) {
            return Err(StageError::Retryable(format!("object store: {reason}")));
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_registry_is_retried() {
        assert!(matches!(
            ArchiverError::from(SchemaError::Unavailable("down".into())),
            ArchiverError::Retryable(_)
        ));
        assert!(matches!(
            ArchiverError::from(SchemaError::Decode("bad".into())),
            ArchiverError::Poison(_)
        ));
    }
}
