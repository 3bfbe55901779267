//! Confluent-compatible schema registry whose only state is a compacted Kafka topic
//! (`_schemas`), so any number of stateless instances can serve it side by side.
//!
//! It implements the part of Confluent's REST API that serializers use (`schema_registry_converter`,
//! the Java and Python Confluent serdes): registering and looking up schemas, fetching by id and
//! by subject version, soft and permanent deletes, compatibility configuration and tests. Only
//! AVRO schemas are supported; compatibility is checked for real with apache-avro.
//!
//! # Wiring
//!
//! ```text
//! let registry = Registry::new(log, RegistryConfig::default());  // log: Arc<dyn SchemaLog>
//! // a task consuming the topic from the beginning, forever:
//! //     for each record: registry.apply(offset, key, value)
//! //     on reaching the end / skipping gaps: registry.advance(consumer_position)
//! registry.sync().await?;                                          // ready once caught up
//! serve(api::router(registry));
//! ```
//!
//! [`MemoryLog`] implements both halves in memory (tests, single-instance development).
//!
//! # Log records
//!
//! Keys and values are JSON. Keys carry a `keytype` prefixed with `VE_`, so records written by
//! Confluent's or Redpanda's registry into the same topic are ignored rather than misread.
//!
//! - `VE_SCHEMA {subject, version, hash, nonce}` → `{subject, version, id, schema, schemaType,
//!   references, deleted}`: one registration *attempt*. `hash` is the SHA-256 of the schema's
//!   identity (see [`avro`](crate::avro) — defaults and docs count, formatting does not); the
//!   per-attempt `nonce` makes every attempt's key unique, so compaction never merges two
//!   different racing records and never moves an accepted one.
//! - `VE_VERSION_STATE {subject, version}` → `{subject, version, id, hash, deleted, permanent}`:
//!   soft or permanent deletion of a version. Last value wins.
//! - `VE_COMPATIBILITY {subject | null}` → `{compatibilityLevel}`: subject or global level; a
//!   tombstone removes it. Last value wins.
//!
//! # Leaderless write protocol
//!
//! Replicas never talk to each other; the log's total order decides. Every replica applies every
//! record with the same deterministic rules, so all reach the same state and the same verdicts.
//!
//! A writer (serialised per instance by a mutex):
//!
//! 1. waits until its state has applied everything up to the log's current end offset (and
//!    tombstones registration attempts that were rejected, so they do not pile up);
//! 2. decides on that state: returns the existing id if the same schema is a live version of
//!    the subject; checks compatibility against the subject's live versions; takes the next
//!    version (highest ever used + 1) and the schema's existing id if it was registered under
//!    any subject, else the highest id + 1;
//! 3. appends the `VE_SCHEMA` record with a fresh nonce;
//! 4. waits until that offset is applied and checks whether the slot `(subject, version)` holds
//!    its nonce. If another replica's record got there first, the writer starts over at 1
//!    (bounded by [`RegistryConfig::max_write_attempts`]).
//!
//! Applying a `VE_SCHEMA` record rejects it when the version is already taken (by any other
//! attempt, even of the same schema), when the id already belongs to a different schema, or when
//! the schema already has a different id. Otherwise it is accepted. Accepted registrations are
//! never removed again — a permanent delete only marks the version — so version numbers and ids
//! are never reused (data in topics still carries old ids), and a record rejected once is
//! rejected again on every replay, of the full or of the compacted log. Deletes and config
//! changes are last-value-wins records whose effect depends only on the latest value of their
//! key, which is exactly what compaction keeps.
//!
//! Requirements on the log: one partition (total order), no duplicated appends (idempotent
//! producer), and nobody tombstones `VE_SCHEMA` records other than this crate.
//!
//! Reads do not wait for the log; a read that finds nothing catches up once and retries, so a
//! client that registered through one replica can immediately read through another.

pub mod api;
pub mod avro;
pub mod compat;
mod error;
pub mod kafka_log;
mod log;
mod registry;
pub mod service;
mod state;

pub use api::router;
pub use avro::SchemaReference;
pub use compat::CompatibilityLevel;
pub use error::{LogError, RegistryError};
pub use log::{LogRecord, MemoryLog, SchemaLog};
pub use registry::{
    NewSchema, Registry, RegistryConfig, SchemaInfo, SubjectVersion, SubjectVersionRef, VersionSpec,
};
