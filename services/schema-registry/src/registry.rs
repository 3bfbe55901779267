//! [`Registry`]: the state fed from the log plus the leaderless write protocol on top of it.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use apache_avro::Schema;
use serde::Serialize;
use tokio::sync::watch;

use crate::avro::{self, AVRO, ParsedSchema, SchemaReference};
use crate::compat::{self, CompatibilityLevel, PreviousVersion};
use crate::error::RegistryError;
use crate::log::{CompatibilityValue, RecordKey, SchemaLog, SchemaValue, VersionStateValue};
use crate::state::{Outcome, State};

/// Tunables of a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Global compatibility level until a `PUT /config` sets one.
    pub default_compatibility: CompatibilityLevel,
    /// How long a write waits for the log consumer to apply up to a given offset.
    pub apply_timeout: Duration,
    /// Registration attempts before giving up when racing writers keep winning.
    pub max_write_attempts: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            default_compatibility: CompatibilityLevel::Backward,
            apply_timeout: Duration::from_secs(30),
            max_write_attempts: 10,
        }
    }
}

/// A schema as submitted for registration, lookup or a compatibility test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchema {
    /// Schema text.
    pub schema: String,
    /// `AVRO` when `None`.
    pub schema_type: Option<String>,
    /// Named types used by `schema` that are registered under other subjects.
    pub references: Vec<SchemaReference>,
}

impl NewSchema {
    /// An Avro schema without references.
    pub fn avro(schema: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            schema_type: None,
            references: Vec::new(),
        }
    }
}

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// The newest (live) version.
    Latest,
    /// A version number.
    Number(i32),
}

impl std::str::FromStr for VersionSpec {
    type Err = RegistryError;

    /// `latest`, `-1` (Confluent's alias for latest) or a number in `1..=2^31-1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        match s.parse::<i32>() {
            Ok(-1) => Ok(Self::Latest),
            Ok(v) if v >= 1 => Ok(Self::Number(v)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

impl fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(v) => write!(f, "{v}"),
        }
    }
}

/// A schema fetched by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaInfo {
    /// Schema text as first registered.
    pub schema: String,
    /// Omitted for AVRO, like Confluent.
    #[serde(skip_serializing_if = "is_avro")]
    pub schema_type: String,
    /// Omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<SchemaReference>,
}

/// A version of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectVersion {
    /// Subject name.
    pub subject: String,
    /// Version in the subject.
    pub version: i32,
    /// Global schema id.
    pub id: i32,
    /// Schema text as first registered.
    pub schema: String,
    /// Omitted for AVRO, like Confluent.
    #[serde(skip_serializing_if = "is_avro")]
    pub schema_type: String,
    /// Omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<SchemaReference>,
}

/// Subject and version using a schema id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersionRef {
    /// Subject name.
    pub subject: String,
    /// Version in the subject.
    pub version: i32,
}

fn is_avro(schema_type: &str) -> bool {
    schema_type == AVRO
}

/// The registry of one instance (replica).
///
/// Its state is fed by whoever tails the log: call [`Registry::apply`] for every record in
/// offset order from the beginning of the log, and [`Registry::advance`] with the consumer
/// position when it moved past offsets that carry no record (compaction gaps, control records).
/// Writes go to the [`SchemaLog`] and are visible once applied; see the crate docs for the
/// protocol.
pub struct Registry {
    log: Arc<dyn SchemaLog>,
    config: RegistryConfig,
    state: RwLock<State>,
    /// Offset of the last record applied; re-deliveries at or below it are skipped. Kept apart
    /// from `applied` so that an `advance` that overshoots can never make records be skipped.
    last_record: AtomicI64,
    /// Offset up to which the log counts as applied, for waiting writers.
    applied: watch::Sender<i64>,
    /// Serialises this instance's writers, so they never race each other.
    write_lock: tokio::sync::Mutex<()>,
    /// Parsed, self-contained schemas by (id, hash): compatibility checks re-read old versions
    /// on every registration.
    parsed: Mutex<HashMap<(i32, String), Arc<Schema>>>,
    nonce_counter: AtomicU64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry writing to `log`. It is empty until fed with [`Registry::apply`].
    pub fn new(log: Arc<dyn SchemaLog>, config: RegistryConfig) -> Arc<Self> {
        Arc::new(Self {
            log,
            state: RwLock::new(State::new(config.default_compatibility)),
            config,
            last_record: AtomicI64::new(-1),
            applied: watch::Sender::new(0),
            write_lock: tokio::sync::Mutex::new(()),
            parsed: Mutex::new(HashMap::new()),
            nonce_counter: AtomicU64::new(0),
        })
    }

    // ---- feeding ----

    /// Applies the log record at `offset`. Records must come in offset order; offsets at or
    /// below the last applied record are skipped, so re-delivery after a consumer restart is
    /// harmless.
    pub fn apply(&self, offset: i64, key: &[u8], value: Option<&[u8]>) {
        let outcome = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            if offset <= self.last_record.load(Ordering::Acquire) {
                return;
            }
            let outcome = state.apply(key, value);
            self.last_record.store(offset, Ordering::Release);
            outcome
        };
        metrics::counter!("schema_registry_records_applied_total", "outcome" => outcome.label())
            .increment(1);
        match &outcome {
            Outcome::Rejected(reason) => {
                tracing::debug!(
                    offset,
                    reason = reason.as_str(),
                    "rejected conflicting registration record"
                );
            }
            Outcome::Ignored(reason) => {
                tracing::trace!(offset, reason, "ignored schema log record");
            }
            Outcome::Accepted => {}
        }
        self.advance(offset + 1);
    }

    /// Records that the consumer's position reached `next_offset` without (more) records to
    /// apply, e.g. at the end of a compacted topic. Writers wait on this position, so pass the
    /// consumer's real position: a larger value does not lose records, but lets writers decide
    /// before they see them (they then retry, at the cost of extra attempts).
    pub fn advance(&self, next_offset: i64) {
        let _ = self.applied.send_if_modified(|applied| {
            if next_offset > *applied {
                *applied = next_offset;
                true
            } else {
                false
            }
        });
    }

    /// Offset of the next record to apply.
    pub fn applied_offset(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Watches [`Registry::applied_offset`].
    pub fn subscribe_applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Waits until everything durable in the log right now has been applied. Use it as the
    /// readiness condition after startup.
    pub async fn sync(&self) -> Result<(), RegistryError> {
        let end = self.log.end_offset().await?;
        self.wait_applied(end).await
    }

    async fn wait_applied(&self, next_offset: i64) -> Result<(), RegistryError> {
        let mut rx = self.applied.subscribe();
        match tokio::time::timeout(
            self.config.apply_timeout,
            rx.wait_for(|a| *a >= next_offset),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `self`, so it cannot be gone; treat it like a stall.
            Ok(Err(_)) | Err(_) => Err(RegistryError::Timeout(format!(
                "schema log not applied up to offset {next_offset} within {:?} (applied up to {})",
                self.config.apply_timeout,
                self.applied_offset()
            ))),
        }
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a read; if it finds nothing, catches up with the log and tries once more, so a
    /// client that just wrote through another replica still reads its write.
    async fn read<T>(
        &self,
        f: impl Fn(&State) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let first = f(&self.state());
        match first {
            Err(e) if e.is_not_found() => {
                if let Err(sync_err) = self.sync().await {
                    tracing::warn!(error = %sync_err, "could not catch up with the schema log for a read");
                    return Err(e);
                }
                f(&self.state())
            }
            other => other,
        }
    }

    // ---- writing ----

    fn nonce(&self) -> String {
        // Unique per attempt across replicas: OS-seeded random bits (std's RandomState) plus a
        // per-instance counter.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.nonce_counter.fetch_add(1, Ordering::Relaxed));
        format!("{:016x}", hasher.finish())
    }

    async fn append(
        &self,
        key: &RecordKey,
        value: Option<&impl Serialize>,
    ) -> Result<i64, RegistryError> {
        let value = value
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| RegistryError::Store(crate::LogError::backend(e)))?;
        Ok(self.log.append(key.encode(), value).await?)
    }

    async fn append_and_apply(
        &self,
        key: &RecordKey,
        value: Option<&impl Serialize>,
    ) -> Result<(), RegistryError> {
        let offset = self.append(key, value).await?;
        self.wait_applied(offset + 1).await
    }

    /// Step 1 of the protocol: catch up with the log. Also tombstones rejected attempts (ours
    /// or a crashed writer's) so they do not pile up in the topic; correctness does not depend
    /// on it, since a rejected record stays rejected on every replay.
    async fn prepare_write(&self) -> Result<(), RegistryError> {
        self.sync().await?;
        let rejected = self.state().rejected_keys();
        for key in rejected {
            let _ = self.log.append(key, None).await?;
        }
        Ok(())
    }

    fn parse_new(
        &self,
        state: &State,
        new: &NewSchema,
    ) -> Result<(ParsedSchema, NewSchema), RegistryError> {
        let schema_type = new
            .schema_type
            .as_deref()
            .map_or_else(|| AVRO.to_owned(), str::to_ascii_uppercase);
        let references = state.pin_references(&new.references)?;
        let referenced = state.resolve_references(&references)?;
        let parsed = avro::parse(&new.schema, &schema_type, &references, &referenced)?;
        Ok((
            parsed,
            NewSchema {
                schema: new.schema.clone(),
                schema_type: Some(schema_type),
                references,
            },
        ))
    }

    /// Self-contained schema of an already registered id, cached.
    fn parsed_schema(&self, state: &State, id: i32) -> Result<Arc<Schema>, RegistryError> {
        let stored = state
            .schema(id)
            .ok_or(RegistryError::SchemaIdNotFound(id))?;
        let cache_key = (id, stored.hash.clone());
        if let Some(schema) = self
            .parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key)
        {
            return Ok(Arc::clone(schema));
        }
        let referenced = state.resolve_references(&stored.references)?;
        let parsed = avro::parse(
            &stored.schema,
            &stored.schema_type,
            &stored.references,
            &referenced,
        )
        .map_err(|e| {
            RegistryError::Store(crate::LogError::message(format!(
                "registered schema {id} no longer parses: {e}"
            )))
        })?;
        let schema = Arc::new(parsed.schema);
        let _ = self
            .parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cache_key, Arc::clone(&schema));
        Ok(schema)
    }

    /// Live versions of `subject` (oldest first) as parsed schemas.
    fn previous_schemas(
        &self,
        state: &State,
        subject: &str,
    ) -> Result<Vec<(i32, Arc<Schema>)>, RegistryError> {
        state
            .versions(subject, false)
            .into_iter()
            .map(|(version, slot)| Ok((version, self.parsed_schema(state, slot.id)?)))
            .collect()
    }

    /// Registers `new` under `subject` and returns its id; an identical live version returns
    /// the existing id without writing.
    pub async fn register(&self, subject: &str, new: NewSchema) -> Result<i32, RegistryError> {
        validate_subject(subject)?;
        {
            // Fast path: producers re-register their schema at every start.
            let state = self.state();
            let (parsed, _) = self.parse_new(&state, &new)?;
            if let Some((_, slot)) = state.find_in_subject(subject, &parsed.hash, false) {
                return Ok(slot.id);
            }
        }
        let _guard = self.write_lock.lock().await;
        for attempt in 1..=self.config.max_write_attempts {
            self.prepare_write().await?;
            let (key, value, nonce) = {
                let state = self.state();
                let (parsed, new) = self.parse_new(&state, &new)?;
                if let Some((_, slot)) = state.find_in_subject(subject, &parsed.hash, false) {
                    return Ok(slot.id);
                }
                let level = state.effective_level(subject);
                let previous = self.previous_schemas(&state, subject)?;
                let previous: Vec<_> = previous
                    .iter()
                    .map(|(version, schema)| PreviousVersion {
                        version: *version,
                        schema,
                    })
                    .collect();
                let messages = compat::check(level, &parsed.schema, &previous);
                if !messages.is_empty() {
                    return Err(RegistryError::Incompatible {
                        subject: subject.to_owned(),
                        messages,
                    });
                }
                let version = state.next_version(subject);
                let id = state
                    .id_for_hash(&parsed.hash)
                    .unwrap_or_else(|| state.next_id());
                let nonce = self.nonce();
                let key = RecordKey::Schema {
                    subject: subject.to_owned(),
                    version,
                    hash: parsed.hash,
                    nonce: nonce.clone(),
                };
                let value = SchemaValue {
                    subject: subject.to_owned(),
                    version,
                    id,
                    schema: new.schema,
                    schema_type: new.schema_type.unwrap_or_else(|| AVRO.to_owned()),
                    references: new.references,
                    deleted: false,
                };
                (key, value, nonce)
            };
            self.append_and_apply(&key, Some(&value)).await?;
            let won = self
                .state()
                .slot(subject, value.version)
                .is_some_and(|slot| slot.nonce == nonce);
            if won {
                tracing::info!(
                    subject,
                    version = value.version,
                    id = value.id,
                    "registered schema"
                );
                return Ok(value.id);
            }
            metrics::counter!("schema_registry_write_conflicts_total").increment(1);
            tracing::info!(
                subject,
                attempt,
                "registration lost a race with another replica; retrying"
            );
        }
        Err(RegistryError::Timeout(format!(
            "registration under {subject} kept conflicting with concurrent writers ({} attempts)",
            self.config.max_write_attempts
        )))
    }

    /// Finds `new` among the versions of `subject` (Confluent's `POST /subjects/{subject}`).
    pub async fn lookup(
        &self,
        subject: &str,
        new: NewSchema,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        self.read(|state| {
            let (parsed, _) = self.parse_new(state, &new)?;
            if state.versions(subject, include_deleted).is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            }
            let (version, _) = state
                .find_in_subject(subject, &parsed.hash, include_deleted)
                .ok_or(RegistryError::SchemaNotFound)?;
            subject_version(state, subject, version)
        })
        .await
    }

    /// Schema by global id. Soft-deleted versions keep their schema readable by id (old data
    /// still carries the id); permanently deleted ones only with `include_deleted`.
    pub async fn schema_by_id(
        &self,
        id: i32,
        include_deleted: bool,
    ) -> Result<SchemaInfo, RegistryError> {
        self.read(|state| {
            if !state.id_visible(id, include_deleted) {
                return Err(RegistryError::SchemaIdNotFound(id));
            }
            let stored = state
                .schema(id)
                .ok_or(RegistryError::SchemaIdNotFound(id))?;
            Ok(SchemaInfo {
                schema: stored.schema.clone(),
                schema_type: stored.schema_type.clone(),
                references: stored.references.clone(),
            })
        })
        .await
    }

    /// Subject versions registered with schema `id`.
    pub async fn id_versions(
        &self,
        id: i32,
        include_deleted: bool,
    ) -> Result<Vec<SubjectVersionRef>, RegistryError> {
        self.read(|state| {
            let stored = state
                .schema(id)
                .ok_or(RegistryError::SchemaIdNotFound(id))?;
            let users: Vec<_> = stored
                .users
                .iter()
                .filter(|(s, v)| {
                    state
                        .slot(s, *v)
                        .is_some_and(|slot| slot.is_live() || (include_deleted && !slot.permanent))
                })
                .map(|(subject, version)| SubjectVersionRef {
                    subject: subject.clone(),
                    version: *version,
                })
                .collect();
            if users.is_empty() {
                return Err(RegistryError::SchemaIdNotFound(id));
            }
            Ok(users)
        })
        .await
    }

    /// All subjects with at least one live (or, with `include_deleted`, soft-deleted) version.
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.state().subjects(include_deleted)
    }

    /// Version numbers of `subject`.
    pub async fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        self.read(|state| {
            let versions: Vec<i32> = state
                .versions(subject, include_deleted)
                .into_iter()
                .map(|(v, _)| v)
                .collect();
            if versions.is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            }
            Ok(versions)
        })
        .await
    }

    /// One version of `subject`.
    pub async fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        self.read(|state| {
            let version = resolve_version(state, subject, spec, include_deleted)?;
            subject_version(state, subject, version)
        })
        .await
    }

    /// Ids of live schemas that reference `subject` `version`.
    pub async fn referenced_by(
        &self,
        subject: &str,
        spec: VersionSpec,
    ) -> Result<Vec<i32>, RegistryError> {
        self.read(|state| {
            let version = resolve_version(state, subject, spec, false)?;
            Ok(state.referenced_by(subject, version))
        })
        .await
    }

    /// Deletes all versions of `subject`: soft, or — once soft-deleted — `permanent`.
    /// Returns the deleted version numbers.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let _guard = self.write_lock.lock().await;
        self.prepare_write().await?;
        let (markers, had_level) = {
            let state = self.state();
            let live = state.versions(subject, false);
            let soft = state.versions(subject, true);
            if soft.is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            }
            let targets = if permanent {
                if !live.is_empty() {
                    return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
                }
                soft
            } else {
                if live.is_empty() {
                    return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
                }
                live
            };
            let mut markers = Vec::with_capacity(targets.len());
            for (version, slot) in targets {
                check_not_referenced(&state, subject, version)?;
                markers.push(VersionStateValue {
                    subject: subject.to_owned(),
                    version,
                    id: slot.id,
                    hash: slot.hash.clone(),
                    deleted: true,
                    permanent,
                });
            }
            (markers, state.subject_level(subject).is_some())
        };
        // One record per version: each is idempotent, so a retry after a partial failure
        // finishes the job.
        let mut last = None;
        for marker in &markers {
            let key = RecordKey::VersionState {
                subject: subject.to_owned(),
                version: marker.version,
            };
            last = Some(self.append(&key, Some(marker)).await?);
        }
        if permanent && had_level {
            let key = RecordKey::Compatibility {
                subject: Some(subject.to_owned()),
            };
            last = Some(self.append(&key, None::<&CompatibilityValue>).await?);
        }
        if let Some(offset) = last {
            self.wait_applied(offset + 1).await?;
        }
        tracing::info!(
            subject,
            permanent,
            versions = markers.len(),
            "deleted subject"
        );
        Ok(markers.iter().map(|m| m.version).collect())
    }

    /// Deletes one version of `subject`: soft, or — once soft-deleted — `permanent`.
    pub async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<i32, RegistryError> {
        let _guard = self.write_lock.lock().await;
        self.prepare_write().await?;
        let marker = {
            let state = self.state();
            // A numbered version may already be soft-deleted (that is what 40406/40407 report);
            // `latest` means the newest live one, or for a permanent delete the newest
            // soft-deleted one.
            let include_deleted = permanent || matches!(spec, VersionSpec::Number(_));
            let version = resolve_version(&state, subject, spec, include_deleted)?;
            let slot = state
                .slot(subject, version)
                .ok_or_else(|| RegistryError::VersionNotFound(spec.to_string()))?;
            if permanent && !slot.deleted {
                return Err(RegistryError::VersionNotSoftDeleted(
                    subject.to_owned(),
                    version,
                ));
            }
            if !permanent && slot.deleted {
                return Err(RegistryError::VersionSoftDeleted(
                    subject.to_owned(),
                    version,
                ));
            }
            check_not_referenced(&state, subject, version)?;
            VersionStateValue {
                subject: subject.to_owned(),
                version,
                id: slot.id,
                hash: slot.hash.clone(),
                deleted: true,
                permanent,
            }
        };
        let key = RecordKey::VersionState {
            subject: subject.to_owned(),
            version: marker.version,
        };
        self.append_and_apply(&key, Some(&marker)).await?;
        tracing::info!(
            subject,
            version = marker.version,
            permanent,
            "deleted subject version"
        );
        Ok(marker.version)
    }

    /// Global compatibility level.
    pub fn global_level(&self) -> CompatibilityLevel {
        self.state().global_level()
    }

    /// Sets the global compatibility level.
    pub async fn set_global_level(&self, level: CompatibilityLevel) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock().await;
        let key = RecordKey::Compatibility { subject: None };
        self.append_and_apply(
            &key,
            Some(&CompatibilityValue {
                compatibility_level: level,
            }),
        )
        .await
    }

    /// Resets the global level to the configured default; returns the level it had.
    pub async fn delete_global_level(&self) -> Result<CompatibilityLevel, RegistryError> {
        let _guard = self.write_lock.lock().await;
        self.sync().await?;
        let previous = self.state().global_level();
        if self.state().has_global_level() {
            let key = RecordKey::Compatibility { subject: None };
            self.append_and_apply(&key, None::<&CompatibilityValue>)
                .await?;
        }
        Ok(previous)
    }

    /// Subject-level compatibility, if one is set.
    pub async fn subject_level(&self, subject: &str) -> Result<CompatibilityLevel, RegistryError> {
        self.read(|state| {
            state
                .subject_level(subject)
                .ok_or_else(|| RegistryError::SubjectCompatibilityNotConfigured(subject.to_owned()))
        })
        .await
    }

    /// Level that applies to `subject`: its own, else the global one.
    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.state().effective_level(subject)
    }

    /// Sets the compatibility level of `subject` (which need not exist yet).
    pub async fn set_subject_level(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        validate_subject(subject)?;
        let _guard = self.write_lock.lock().await;
        let key = RecordKey::Compatibility {
            subject: Some(subject.to_owned()),
        };
        self.append_and_apply(
            &key,
            Some(&CompatibilityValue {
                compatibility_level: level,
            }),
        )
        .await
    }

    /// Removes the subject-level compatibility; returns the level it had.
    pub async fn delete_subject_level(
        &self,
        subject: &str,
    ) -> Result<CompatibilityLevel, RegistryError> {
        let _guard = self.write_lock.lock().await;
        self.sync().await?;
        let previous = {
            let state = self.state();
            match state.subject_level(subject) {
                Some(level) => level,
                None if state.versions(subject, true).is_empty() => {
                    return Err(RegistryError::SubjectNotFound(subject.to_owned()));
                }
                None => {
                    return Err(RegistryError::SubjectCompatibilityNotConfigured(
                        subject.to_owned(),
                    ));
                }
            }
        };
        let key = RecordKey::Compatibility {
            subject: Some(subject.to_owned()),
        };
        self.append_and_apply(&key, None::<&CompatibilityValue>)
            .await?;
        Ok(previous)
    }

    /// Tests `new` against `subject` under its compatibility level. Without `version` (and for
    /// `latest`) this is exactly the check registration does; a version number checks against
    /// that version only. Returns the incompatibility messages (empty = compatible).
    pub async fn test_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSpec>,
        new: NewSchema,
    ) -> Result<Vec<String>, RegistryError> {
        self.read(|state| {
            let (parsed, _) = self.parse_new(state, &new)?;
            let level = state.effective_level(subject);
            let previous = match version {
                None => self.previous_schemas(state, subject)?,
                Some(VersionSpec::Latest) => {
                    if state.versions(subject, false).is_empty() {
                        return Err(RegistryError::SubjectNotFound(subject.to_owned()));
                    }
                    self.previous_schemas(state, subject)?
                }
                Some(spec @ VersionSpec::Number(_)) => {
                    let version = resolve_version(state, subject, spec, false)?;
                    let slot = state
                        .slot(subject, version)
                        .ok_or_else(|| RegistryError::VersionNotFound(spec.to_string()))?;
                    vec![(version, self.parsed_schema(state, slot.id)?)]
                }
            };
            let previous: Vec<_> = previous
                .iter()
                .map(|(version, schema)| PreviousVersion {
                    version: *version,
                    schema,
                })
                .collect();
            Ok(compat::check(level, &parsed.schema, &previous))
        })
        .await
    }
}

fn validate_subject(subject: &str) -> Result<(), RegistryError> {
    if subject.trim().is_empty() || subject.chars().any(char::is_control) {
        return Err(RegistryError::InvalidSubject(subject.to_owned()));
    }
    Ok(())
}

fn check_not_referenced(state: &State, subject: &str, version: i32) -> Result<(), RegistryError> {
    let users = state.referenced_by(subject, version);
    if users.is_empty() {
        return Ok(());
    }
    Err(RegistryError::ReferenceExists(format!(
        "One or more references exist to the schema {{subject={subject}, version={version}}}: schema ids {users:?}"
    )))
}

/// `include_deleted` also admits soft-deleted versions; permanently deleted ones never resolve.
fn resolve_version(
    state: &State,
    subject: &str,
    spec: VersionSpec,
    include_deleted: bool,
) -> Result<i32, RegistryError> {
    let versions = state.versions(subject, include_deleted);
    if versions.is_empty() {
        return Err(RegistryError::SubjectNotFound(subject.to_owned()));
    }
    match spec {
        VersionSpec::Latest => versions
            .last()
            .map(|(v, _)| *v)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned())),
        VersionSpec::Number(wanted) => versions
            .iter()
            .find(|(v, _)| *v == wanted)
            .map(|(v, _)| *v)
            .ok_or_else(|| RegistryError::VersionNotFound(wanted.to_string())),
    }
}

fn subject_version(
    state: &State,
    subject: &str,
    version: i32,
) -> Result<SubjectVersion, RegistryError> {
    let slot = state
        .slot(subject, version)
        .ok_or_else(|| RegistryError::VersionNotFound(version.to_string()))?;
    let stored = state
        .schema(slot.id)
        .ok_or(RegistryError::SchemaIdNotFound(slot.id))?;
    Ok(SubjectVersion {
        subject: subject.to_owned(),
        version,
        id: slot.id,
        schema: stored.schema.clone(),
        schema_type: stored.schema_type.clone(),
        references: stored.references.clone(),
    })
}
