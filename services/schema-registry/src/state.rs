//! The registry state machine: a pure, deterministic function of the log records applied so far.
//!
//! Every replica applies the same records in the same order and so reaches the same state,
//! including the same accept/reject verdicts; nothing here reads clocks, randomness or config
//! other than the default compatibility level.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::avro::SchemaReference;
use crate::compat::CompatibilityLevel;
use crate::error::RegistryError;
use crate::log::{CompatibilityValue, RecordKey, SchemaValue, VersionStateValue};

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) id: i32,
    pub(crate) hash: String,
    /// Nonce of the record that won this slot; how a writer learns its record was accepted.
    pub(crate) nonce: String,
    pub(crate) deleted: bool,
    pub(crate) permanent: bool,
    /// Deleted flag carried by the registration record itself (false for our own records).
    registered_deleted: bool,
}

impl Slot {
    pub(crate) fn is_live(&self) -> bool {
        !self.deleted && !self.permanent
    }
}

/// A schema by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSchema {
    pub(crate) hash: String,
    pub(crate) schema: String,
    pub(crate) schema_type: String,
    pub(crate) references: Vec<SchemaReference>,
    /// Subject versions registered with this id.
    pub(crate) users: BTreeSet<(String, i32)>,
}

/// What applying one record did; for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    /// A registration that conflicts with applied state; its writer will retry.
    Rejected(String),
    /// Not ours, or nothing to do.
    Ignored(&'static str),
}

impl Outcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected(_) => "rejected",
            Self::Ignored(_) => "ignored",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    default_level: CompatibilityLevel,
    global_level: Option<CompatibilityLevel>,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
    subjects: BTreeMap<String, BTreeMap<i32, Slot>>,
    schemas: BTreeMap<i32, StoredSchema>,
    ids_by_hash: HashMap<String, i32>,
    /// Keys of rejected registration records that no tombstone has followed yet.
    rejected: BTreeSet<Vec<u8>>,
}

impl State {
    pub(crate) fn new(default_level: CompatibilityLevel) -> Self {
        Self {
            default_level,
            global_level: None,
            subject_levels: BTreeMap::new(),
            subjects: BTreeMap::new(),
            schemas: BTreeMap::new(),
            ids_by_hash: HashMap::new(),
            rejected: BTreeSet::new(),
        }
    }

    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Outcome {
        let Some(decoded) = RecordKey::decode(key) else {
            return Outcome::Ignored("foreign key");
        };
        match decoded {
            RecordKey::Schema {
                subject,
                version,
                hash,
                nonce,
            } => match value {
                Some(value) => {
                    let outcome = match serde_json::from_slice::<SchemaValue>(value) {
                        Ok(value) => self.register(&subject, version, &hash, &nonce, value),
                        Err(e) => Outcome::Rejected(format!("undecodable value: {e}")),
                    };
                    if matches!(outcome, Outcome::Rejected(_)) {
                        let _ = self.rejected.insert(key.to_vec());
                    }
                    outcome
                }
                None => self.tombstone_schema(key, &subject, version, &nonce),
            },
            // For last-value-wins keys the state must depend only on the last value, because
            // that is all compaction leaves; an undecodable value therefore clears like a
            // tombstone instead of being skipped.
            RecordKey::VersionState { subject, version } => {
                let marker =
                    value.and_then(|v| serde_json::from_slice::<VersionStateValue>(v).ok());
                self.set_version_state(&subject, version, marker.as_ref())
            }
            RecordKey::Compatibility { subject } => {
                let level = value
                    .and_then(|v| serde_json::from_slice::<CompatibilityValue>(v).ok())
                    .map(|v| v.compatibility_level);
                match (subject, level) {
                    (None, level) => self.global_level = level,
                    (Some(subject), Some(level)) => {
                        let _ = self.subject_levels.insert(subject, level);
                    }
                    (Some(subject), None) => {
                        let _ = self.subject_levels.remove(&subject);
                    }
                }
                Outcome::Accepted
            }
        }
    }

    /// The deterministic conflict rules. Everything they look at (slots, id ownership) is only
    /// ever added by accepted registrations and never removed by our writers, so a record that
    /// is rejected once is rejected on every replay, also of the compacted log.
    fn register(
        &mut self,
        subject: &str,
        version: i32,
        hash: &str,
        nonce: &str,
        value: SchemaValue,
    ) -> Outcome {
        if value.subject != subject || value.version != version || version < 1 || value.id < 1 {
            return Outcome::Rejected("value does not match key".to_owned());
        }
        if let Some(slot) = self.subjects.get(subject).and_then(|s| s.get(&version)) {
            return if slot.nonce == nonce && slot.hash == hash {
                Outcome::Ignored("duplicate record")
            } else {
                Outcome::Rejected(format!("version {version} of {subject} is already taken"))
            };
        }
        if let Some(&existing) = self.ids_by_hash.get(hash)
            && existing != value.id
        {
            return Outcome::Rejected(format!("schema already has id {existing}"));
        }
        if let Some(stored) = self.schemas.get(&value.id)
            && stored.hash != hash
        {
            return Outcome::Rejected(format!("id {} belongs to another schema", value.id));
        }
        let stored = self
            .schemas
            .entry(value.id)
            .or_insert_with(|| StoredSchema {
                hash: hash.to_owned(),
                schema: value.schema,
                schema_type: value.schema_type,
                references: value.references,
                users: BTreeSet::new(),
            });
        let _ = stored.users.insert((subject.to_owned(), version));
        let _ = self.ids_by_hash.insert(hash.to_owned(), value.id);
        let _ = self.subjects.entry(subject.to_owned()).or_default().insert(
            version,
            Slot {
                id: value.id,
                hash: hash.to_owned(),
                nonce: nonce.to_owned(),
                deleted: value.deleted,
                permanent: false,
                registered_deleted: value.deleted,
            },
        );
        Outcome::Accepted
    }

    fn tombstone_schema(
        &mut self,
        key: &[u8],
        subject: &str,
        version: i32,
        nonce: &str,
    ) -> Outcome {
        if self.rejected.remove(key) {
            return Outcome::Accepted;
        }
        let Some(versions) = self.subjects.get_mut(subject) else {
            return Outcome::Ignored("tombstone for unknown record");
        };
        if versions
            .get(&version)
            .is_none_or(|slot| slot.nonce != nonce)
        {
            return Outcome::Ignored("tombstone for unknown record");
        }
        // Only an operator does this (our writers tombstone rejected records only). Follow it
        // anyway: compaction will physically remove the record, and replicas must agree.
        tracing::warn!(
            subject,
            version,
            "accepted schema record was tombstoned; removing it"
        );
        let Some(slot) = versions.remove(&version) else {
            return Outcome::Ignored("tombstone for unknown record");
        };
        if versions.is_empty() {
            let _ = self.subjects.remove(subject);
        }
        if let Some(stored) = self.schemas.get_mut(&slot.id) {
            let _ = stored.users.remove(&(subject.to_owned(), version));
            if stored.users.is_empty() {
                let _ = self.schemas.remove(&slot.id);
                let _ = self.ids_by_hash.remove(&slot.hash);
            }
        }
        Outcome::Accepted
    }

    fn set_version_state(
        &mut self,
        subject: &str,
        version: i32,
        marker: Option<&VersionStateValue>,
    ) -> Outcome {
        let Some(slot) = self
            .subjects
            .get_mut(subject)
            .and_then(|s| s.get_mut(&version))
        else {
            return Outcome::Ignored("state of unknown version");
        };
        match marker {
            Some(m) if m.id == slot.id && m.hash == slot.hash => {
                slot.deleted = m.deleted || m.permanent;
                slot.permanent = m.permanent;
                Outcome::Accepted
            }
            Some(_) => Outcome::Ignored("state of another registration"),
            None => {
                slot.deleted = slot.registered_deleted;
                slot.permanent = false;
                Outcome::Accepted
            }
        }
    }

    // ---- queries ----

    pub(crate) fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or(self.default_level)
    }

    pub(crate) fn has_global_level(&self) -> bool {
        self.global_level.is_some()
    }

    pub(crate) fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    pub(crate) fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// Versions of `subject` that the API still shows: live ones, plus soft-deleted ones when
    /// `include_deleted`. Permanently deleted versions stay in the state only so that their
    /// version numbers and ids are never handed out again.
    pub(crate) fn versions(&self, subject: &str, include_deleted: bool) -> Vec<(i32, &Slot)> {
        self.subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|(_, slot)| slot.is_live() || (include_deleted && !slot.permanent))
                    .map(|(v, slot)| (*v, slot))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn slot(&self, subject: &str, version: i32) -> Option<&Slot> {
        self.subjects.get(subject).and_then(|s| s.get(&version))
    }

    pub(crate) fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.subjects
            .keys()
            .filter(|s| !self.versions(s, include_deleted).is_empty())
            .cloned()
            .collect()
    }

    pub(crate) fn next_version(&self, subject: &str) -> i32 {
        self.subjects
            .get(subject)
            .and_then(|s| s.keys().next_back())
            .map_or(1, |v| v.saturating_add(1))
    }

    pub(crate) fn id_for_hash(&self, hash: &str) -> Option<i32> {
        self.ids_by_hash.get(hash).copied()
    }

    pub(crate) fn next_id(&self) -> i32 {
        self.schemas
            .keys()
            .next_back()
            .map_or(1, |id| id.saturating_add(1))
    }

    pub(crate) fn schema(&self, id: i32) -> Option<&StoredSchema> {
        self.schemas.get(&id)
    }

    /// Whether any subject version still exposes schema `id` (`include_deleted`: also
    /// soft-deleted and permanently deleted ones; the text is still in the log).
    pub(crate) fn id_visible(&self, id: i32, include_deleted: bool) -> bool {
        self.schemas.get(&id).is_some_and(|stored| {
            include_deleted
                || stored
                    .users
                    .iter()
                    .any(|(s, v)| self.slot(s, *v).is_some_and(|slot| !slot.permanent))
        })
    }

    /// Latest version of `subject` registered with schema `hash`.
    pub(crate) fn find_in_subject(
        &self,
        subject: &str,
        hash: &str,
        include_deleted: bool,
    ) -> Option<(i32, &Slot)> {
        self.versions(subject, include_deleted)
            .into_iter()
            .rev()
            .find(|(_, slot)| slot.hash == hash)
    }

    /// Ids of schemas with a live version that reference `subject` `version`.
    pub(crate) fn referenced_by(&self, subject: &str, version: i32) -> Vec<i32> {
        self.schemas
            .iter()
            .filter(|(_, stored)| {
                stored
                    .references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
                    && stored
                        .users
                        .iter()
                        .any(|(s, v)| self.slot(s, *v).is_some_and(Slot::is_live))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Pins references to `latest` (version -1, as Confluent clients may send) to the current
    /// latest version, so identity and replay do not depend on when they are resolved.
    pub(crate) fn pin_references(
        &self,
        references: &[SchemaReference],
    ) -> Result<Vec<SchemaReference>, RegistryError> {
        references
            .iter()
            .map(|r| {
                if r.version != -1 {
                    return Ok(r.clone());
                }
                let latest = self.versions(&r.subject, false).last().map(|(v, _)| *v);
                match latest {
                    Some(version) => Ok(SchemaReference {
                        version,
                        ..r.clone()
                    }),
                    None => Err(missing_reference(r)),
                }
            })
            .collect()
    }

    /// Texts of every schema reachable through `references`.
    pub(crate) fn resolve_references(
        &self,
        references: &[SchemaReference],
    ) -> Result<Vec<String>, RegistryError> {
        let mut texts = Vec::new();
        let mut seen: HashSet<(String, i32)> = HashSet::new();
        let mut queue: VecDeque<SchemaReference> = references.iter().cloned().collect();
        while let Some(reference) = queue.pop_front() {
            if !seen.insert((reference.subject.clone(), reference.version)) {
                continue;
            }
            let stored = self
                .slot(&reference.subject, reference.version)
                .and_then(|slot| self.schemas.get(&slot.id))
                .ok_or_else(|| missing_reference(&reference))?;
            texts.push(stored.schema.clone());
            queue.extend(stored.references.iter().cloned());
        }
        Ok(texts)
    }

    pub(crate) fn rejected_keys(&self) -> Vec<Vec<u8>> {
        self.rejected.iter().cloned().collect()
    }
}

fn missing_reference(reference: &SchemaReference) -> RegistryError {
    RegistryError::InvalidSchema(format!(
        "reference {} (subject {}, version {}) not found",
        reference.name, reference.subject, reference.version
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_record(
        subject: &str,
        version: i32,
        hash: &str,
        nonce: &str,
        id: i32,
    ) -> (Vec<u8>, Vec<u8>) {
        let key = RecordKey::Schema {
            subject: subject.into(),
            version,
            hash: hash.into(),
            nonce: nonce.into(),
        };
        let value = SchemaValue {
            subject: subject.into(),
            version,
            id,
            schema: format!("\"{hash}\""),
            schema_type: "AVRO".into(),
            references: vec![],
            deleted: false,
        };
        (key.encode(), serde_json::to_vec(&value).unwrap_or_default())
    }

    fn apply(state: &mut State, record: &(Vec<u8>, Vec<u8>)) -> Outcome {
        state.apply(&record.0, Some(&record.1))
    }

    #[test]
    fn conflicting_registrations_are_rejected() {
        let mut state = State::new(CompatibilityLevel::Backward);
        assert_eq!(
            apply(&mut state, &schema_record("s", 1, "h1", "n1", 1)),
            Outcome::Accepted
        );
        // Same slot, other schema.
        assert!(matches!(
            apply(&mut state, &schema_record("s", 1, "h2", "n2", 2)),
            Outcome::Rejected(_)
        ));
        // Same slot, same schema, another attempt.
        assert!(matches!(
            apply(&mut state, &schema_record("s", 1, "h1", "n3", 1)),
            Outcome::Rejected(_)
        ));
        // Id taken by another schema.
        assert!(matches!(
            apply(&mut state, &schema_record("t", 1, "h2", "n4", 1)),
            Outcome::Rejected(_)
        ));
        // Schema already has another id.
        assert!(matches!(
            apply(&mut state, &schema_record("t", 1, "h1", "n5", 7)),
            Outcome::Rejected(_)
        ));
        // Same schema in another subject shares the id.
        assert_eq!(
            apply(&mut state, &schema_record("t", 1, "h1", "n6", 1)),
            Outcome::Accepted
        );
        // Redelivery of an accepted record changes nothing.
        assert_eq!(
            apply(&mut state, &schema_record("t", 1, "h1", "n6", 1)),
            Outcome::Ignored("duplicate record")
        );
        assert_eq!(state.rejected_keys().len(), 4);
        assert_eq!(state.next_id(), 2);
        assert_eq!(state.next_version("s"), 2);
    }

    #[test]
    fn tombstones_clean_up_rejected_records_only() {
        let mut state = State::new(CompatibilityLevel::Backward);
        let winner = schema_record("s", 1, "h1", "n1", 1);
        let loser = schema_record("s", 1, "h2", "n2", 2);
        let _ = apply(&mut state, &winner);
        let _ = apply(&mut state, &loser);
        assert_eq!(state.rejected_keys(), vec![loser.0.clone()]);
        let _ = state.apply(&loser.0, None);
        assert!(state.rejected_keys().is_empty());
        assert_eq!(state.slot("s", 1).map(|s| s.id), Some(1));
    }

    #[test]
    fn compacted_replay_reaches_the_same_state() {
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let some = |r: (Vec<u8>, Vec<u8>)| (r.0, Some(r.1));
        records.push(some(schema_record("s", 1, "h1", "n1", 1)));
        records.push(some(schema_record("s", 1, "h2", "n2", 2))); // loses the race
        records.push(some(schema_record("s", 2, "h2", "n3", 2))); // its retry
        let marker = |deleted, permanent| {
            serde_json::to_vec(&VersionStateValue {
                subject: "s".into(),
                version: 1,
                id: 1,
                hash: "h1".into(),
                deleted,
                permanent,
            })
            .ok()
        };
        let state_key = RecordKey::VersionState {
            subject: "s".into(),
            version: 1,
        }
        .encode();
        records.push((state_key.clone(), marker(true, false)));
        // The writer of the next record cleans up the rejected attempt first.
        let rejected_key = records[1].0.clone();
        records.push((rejected_key, None));
        records.push((state_key, marker(true, true)));
        records.push(some(schema_record("s", 3, "h3", "n4", 3)));

        let mut live = State::new(CompatibilityLevel::Backward);
        for (k, v) in &records {
            let _ = live.apply(k, v.as_deref());
        }
        let mut latest: HashMap<&[u8], usize> = HashMap::new();
        for (i, (k, _)) in records.iter().enumerate() {
            let _ = latest.insert(k, i);
        }
        let mut replayed = State::new(CompatibilityLevel::Backward);
        for (i, (k, v)) in records.iter().enumerate() {
            if v.is_some() && latest.get(k.as_slice()) == Some(&i) {
                let _ = replayed.apply(k, v.as_deref());
            }
        }
        assert_eq!(live, replayed);
        assert!(live.slot("s", 1).is_some_and(|s| s.permanent));
        assert_eq!(live.next_id(), 4);
        assert_eq!(live.versions("s", true).len(), 2);
    }

    #[test]
    fn config_records_follow_the_last_value() {
        let mut state = State::new(CompatibilityLevel::Backward);
        let global = RecordKey::Compatibility { subject: None }.encode();
        let subject = RecordKey::Compatibility {
            subject: Some("s".into()),
        }
        .encode();
        let full = br#"{"compatibilityLevel":"FULL"}"#;
        let _ = state.apply(&global, Some(full));
        let _ = state.apply(&subject, Some(br#"{"compatibilityLevel":"NONE"}"#));
        assert_eq!(state.global_level(), CompatibilityLevel::Full);
        assert_eq!(state.effective_level("s"), CompatibilityLevel::None);
        assert_eq!(state.effective_level("t"), CompatibilityLevel::Full);
        let _ = state.apply(&subject, None);
        let _ = state.apply(&global, Some(b"garbage"));
        assert_eq!(state.effective_level("s"), CompatibilityLevel::Backward);
    }

    #[test]
    fn foreign_records_are_ignored() {
        let mut state = State::new(CompatibilityLevel::Backward);
        let outcome = state.apply(
            br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#,
            Some(br#"{"subject":"s","version":1,"id":1,"schema":"\"string\""}"#),
        );
        assert_eq!(outcome, Outcome::Ignored("foreign key"));
        assert!(state.subjects(true).is_empty());
    }
}
