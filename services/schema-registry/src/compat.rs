//! Compatibility levels and the Avro compatibility check behind them.
//!
//! Direction follows Confluent: BACKWARD means consumers using the *new* schema can read data
//! written with the old one (new = reader, old = writer); FORWARD means consumers still on the
//! old schema can read data written with the new one (old = reader, new = writer); FULL is both.
//! The `_TRANSITIVE` variants check against every live earlier version instead of the latest.

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// Confluent compatibility level of a subject (or the global default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No checks.
    None,
    /// New schema can read data written with the latest version.
    Backward,
    /// New schema can read data written with every earlier version.
    BackwardTransitive,
    /// Latest version can read data written with the new schema.
    Forward,
    /// Every earlier version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// The Confluent spelling, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    /// Case-insensitive, like Confluent's registry.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "NONE" => Ok(Self::None),
            "BACKWARD" => Ok(Self::Backward),
            "BACKWARD_TRANSITIVE" => Ok(Self::BackwardTransitive),
            "FORWARD" => Ok(Self::Forward),
            "FORWARD_TRANSITIVE" => Ok(Self::ForwardTransitive),
            "FULL" => Ok(Self::Full),
            "FULL_TRANSITIVE" => Ok(Self::FullTransitive),
            _ => Err(RegistryError::InvalidCompatibilityLevel(s.to_owned())),
        }
    }
}

/// An earlier version to check a candidate against.
#[derive(Debug, Clone, Copy)]
pub struct PreviousVersion<'a> {
    /// Its version number in the subject.
    pub version: i32,
    /// Its schema, self-contained (references inlined).
    pub schema: &'a Schema,
}

/// Checks `candidate` against `previous` (ordered oldest to newest) under `level`.
///
/// Returns Confluent-style detail messages; empty means compatible.
pub fn check(
    level: CompatibilityLevel,
    candidate: &Schema,
    previous: &[PreviousVersion<'_>],
) -> Vec<String> {
    let against: &[PreviousVersion<'_>] = if level.is_transitive() {
        previous
    } else {
        match previous.split_last() {
            Some((last, _)) => std::slice::from_ref(last),
            None => &[],
        }
    };
    let mut messages = Vec::new();
    // Newest first, so the most relevant conflict is reported first.
    for prev in against.iter().rev() {
        let mut problems = Vec::new();
        if level.checks_backward()
            && let Err(problem) = can_read(prev.schema, candidate)
        {
            problems.push(format!(
                "{{errorType:'{}', description:'The new schema cannot read data written with the old one: {}', additionalInfo:'{}'}}",
                problem.error_type, problem.description, problem.location
            ));
        }
        if level.checks_forward()
            && let Err(problem) = can_read(candidate, prev.schema)
        {
            problems.push(format!(
                "{{errorType:'{}', description:'The old schema cannot read data written with the new one: {}', additionalInfo:'{}'}}",
                problem.error_type, problem.description, problem.location
            ));
        }
        if !problems.is_empty() {
            messages.extend(problems);
            messages.push(format!("{{oldSchemaVersion: {}}}", prev.version));
            messages.push(format!("{{oldSchema: '{}'}}", prev.schema.canonical_form()));
            messages.push(format!("{{compatibility: '{level}'}}"));
        }
    }
    messages
}

/// One reason a reader cannot read a writer's data, named like Confluent's `errorType`s.
#[derive(Debug)]
struct Problem {
    error_type: &'static str,
    description: String,
    location: String,
}

fn can_read(writer: &Schema, reader: &Schema) -> Result<(), Problem> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        // Partial means some writer values (enum symbols, union branches) have no reader
        // counterpart and would fail at decode time; Confluent rejects those, so do we.
        Ok(Compatibility::Partial) => Err(Problem {
            error_type: "MISSING_UNION_BRANCH_OR_ENUM_SYMBOL",
            description:
                "the reader lacks some enum symbols or union branches the writer can produce"
                    .to_owned(),
            location: "/".to_owned(),
        }),
        Err(err) => Err(describe(&err, String::new())),
    }
}

fn describe(err: &CompatibilityError, path: String) -> Problem {
    let location = if path.is_empty() {
        "/".to_owned()
    } else {
        path.clone()
    };
    let (error_type, description) = match err {
        CompatibilityError::FieldTypeMismatch(field, inner) => {
            return describe(inner, format!("{path}/fields/{field}"));
        }
        CompatibilityError::MissingDefaultValue(field) => (
            "READER_FIELD_MISSING_DEFAULT_VALUE",
            format!(
                "the field '{field}' is missing in the writer schema and has no default value in the reader schema"
            ),
        ),
        CompatibilityError::NameMismatch {
            writer_name,
            reader_name,
        } => (
            "NAME_MISMATCH",
            format!(
                "the writer type is named '{writer_name}' but the reader type is named '{reader_name}'"
            ),
        ),
        CompatibilityError::MissingSymbols => (
            "MISSING_ENUM_SYMBOLS",
            "the reader enum contains none of the writer's symbols".to_owned(),
        ),
        CompatibilityError::MissingUnionElements
        | CompatibilityError::SchemaMismatchAllUnionElements => (
            "MISSING_UNION_BRANCH",
            "no branch of the reader can read a branch of the writer union".to_owned(),
        ),
        CompatibilityError::FixedMismatch => (
            "FIXED_SIZE_MISMATCH",
            "the fixed sizes of reader and writer differ".to_owned(),
        ),
        CompatibilityError::DecimalMismatch { .. } => ("TYPE_MISMATCH", err.to_string()),
        // The upstream messages of these embed a full Debug dump of both schemas.
        CompatibilityError::WrongType { .. } | CompatibilityError::TypeExpected { .. } => (
            "TYPE_MISMATCH",
            "the reader type cannot be resolved from the writer type".to_owned(),
        ),
        CompatibilityError::Inconclusive(what) => (
            "TYPE_MISMATCH",
            format!("compatibility of '{what}' could not be determined"),
        ),
    };
    Problem {
        error_type,
        description: description.replace('\'', "\""),
        location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).expect("valid test schema")
    }

    fn record(fields: &str) -> Schema {
        parse(&format!(
            r#"{{"type":"record","name":"User","namespace":"ve.test","fields":[{fields}]}}"#
        ))
    }

    fn ok(level: CompatibilityLevel, candidate: &Schema, previous: &[&Schema]) -> bool {
        let prev: Vec<_> = previous
            .iter()
            .zip(1..)
            .map(|(schema, version)| PreviousVersion { version, schema })
            .collect();
        check(level, candidate, &prev).is_empty()
    }

    const ID: &str = r#"{"name":"id","type":"long"}"#;
    const NAME: &str = r#"{"name":"name","type":"string"}"#;
    const NAME_DEFAULT: &str = r#"{"name":"name","type":"string","default":""}"#;

    #[test]
    fn adding_field_with_default_is_backward_and_forward_compatible() {
        let v1 = record(ID);
        let v2 = record(&format!("{ID},{NAME_DEFAULT}"));
        assert!(ok(CompatibilityLevel::Backward, &v2, &[&v1]));
        // Old readers ignore the new field.
        assert!(ok(CompatibilityLevel::Forward, &v2, &[&v1]));
        assert!(ok(CompatibilityLevel::Full, &v2, &[&v1]));
    }

    #[test]
    fn adding_field_without_default_is_not_backward_compatible() {
        let v1 = record(ID);
        let v2 = record(&format!("{ID},{NAME}"));
        let messages = check(
            CompatibilityLevel::Backward,
            &v2,
            &[PreviousVersion {
                version: 1,
                schema: &v1,
            }],
        );
        assert!(
            messages[0].contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
            "{messages:?}"
        );
        assert!(messages.iter().any(|m| m == "{oldSchemaVersion: 1}"));
        assert!(ok(CompatibilityLevel::Forward, &v2, &[&v1]));
        assert!(!ok(CompatibilityLevel::Full, &v2, &[&v1]));
        assert!(ok(CompatibilityLevel::None, &v2, &[&v1]));
    }

    #[test]
    fn removing_field_without_default_breaks_forward() {
        let v1 = record(&format!("{ID},{NAME}"));
        let v2 = record(ID);
        // New readers just skip the removed field.
        assert!(ok(CompatibilityLevel::Backward, &v2, &[&v1]));
        // Old readers need a value for `name` that new data no longer carries.
        assert!(!ok(CompatibilityLevel::Forward, &v2, &[&v1]));
        assert!(!ok(CompatibilityLevel::Full, &v2, &[&v1]));
    }

    #[test]
    fn removing_field_with_default_is_fully_compatible() {
        let v1 = record(&format!("{ID},{NAME_DEFAULT}"));
        let v2 = record(ID);
        assert!(ok(CompatibilityLevel::Full, &v2, &[&v1]));
    }

    #[test]
    fn int_to_long_promotion_is_backward_only() {
        let v1 = record(r#"{"name":"n","type":"int"}"#);
        let v2 = record(r#"{"name":"n","type":"long"}"#);
        assert!(ok(CompatibilityLevel::Backward, &v2, &[&v1]));
        assert!(!ok(CompatibilityLevel::Forward, &v2, &[&v1]));
        let messages = check(
            CompatibilityLevel::Forward,
            &v2,
            &[PreviousVersion {
                version: 1,
                schema: &v1,
            }],
        );
        assert!(messages[0].contains("TYPE_MISMATCH"), "{messages:?}");
        assert!(messages[0].contains("/fields/n"), "{messages:?}");
    }

    #[test]
    fn changing_type_is_incompatible_both_ways() {
        let v1 = record(r#"{"name":"n","type":"int"}"#);
        let v2 = record(r#"{"name":"n","type":"boolean"}"#);
        assert!(!ok(CompatibilityLevel::Backward, &v2, &[&v1]));
        assert!(!ok(CompatibilityLevel::Forward, &v2, &[&v1]));
    }

    #[test]
    fn enum_symbols_and_union_branches() {
        let e1 = parse(r#"{"type":"enum","name":"Color","symbols":["RED","GREEN"]}"#);
        let e2 = parse(r#"{"type":"enum","name":"Color","symbols":["RED","GREEN","BLUE"]}"#);
        // New reader knows every old symbol; old reader would choke on BLUE.
        assert!(ok(CompatibilityLevel::Backward, &e2, &[&e1]));
        assert!(!ok(CompatibilityLevel::Forward, &e2, &[&e1]));
        let u1 = parse(r#"["null","string"]"#);
        let u2 = parse(r#"["null","string","long"]"#);
        assert!(ok(CompatibilityLevel::Backward, &u2, &[&u1]));
        assert!(!ok(CompatibilityLevel::Forward, &u2, &[&u1]));
    }

    #[test]
    fn renaming_record_is_incompatible() {
        let v1 = parse(r#"{"type":"record","name":"A","fields":[]}"#);
        let v2 = parse(r#"{"type":"record","name":"B","fields":[]}"#);
        let messages = check(
            CompatibilityLevel::Backward,
            &v2,
            &[PreviousVersion {
                version: 1,
                schema: &v1,
            }],
        );
        assert!(messages[0].contains("NAME_MISMATCH"), "{messages:?}");
    }

    #[test]
    fn transitive_levels_check_all_previous_versions() {
        let v1 = record(ID);
        let v2 = record(&format!("{ID},{NAME_DEFAULT}"));
        // Drops the default: fine against v2 (which always writes `name`), not against v1.
        let v3 = record(&format!("{ID},{NAME}"));
        assert!(ok(CompatibilityLevel::Backward, &v3, &[&v1, &v2]));
        assert!(!ok(
            CompatibilityLevel::BackwardTransitive,
            &v3,
            &[&v1, &v2]
        ));
        assert!(ok(CompatibilityLevel::Full, &v3, &[&v1, &v2]));
        assert!(!ok(CompatibilityLevel::FullTransitive, &v3, &[&v1, &v2]));

        // Forward: v3 removes `name` (no default in v1/v2 readers only in v1).
        let f1 = record(&format!("{ID},{NAME}"));
        let f2 = record(&format!("{ID},{NAME_DEFAULT}"));
        let f3 = record(ID);
        assert!(ok(CompatibilityLevel::Forward, &f3, &[&f1, &f2]));
        assert!(!ok(CompatibilityLevel::ForwardTransitive, &f3, &[&f1, &f2]));
    }

    #[test]
    fn first_version_is_always_compatible() {
        let v1 = record(ID);
        assert!(ok(CompatibilityLevel::FullTransitive, &v1, &[]));
    }

    #[test]
    fn level_parsing() {
        assert_eq!(
            "backward_transitive".parse::<CompatibilityLevel>().ok(),
            Some(CompatibilityLevel::BackwardTransitive)
        );
        assert_eq!(
            "FULL".parse::<CompatibilityLevel>().ok(),
            Some(CompatibilityLevel::Full)
        );
        assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
        assert_eq!(
            serde_json::to_string(&CompatibilityLevel::ForwardTransitive).ok(),
            Some("\"FORWARD_TRANSITIVE\"".to_owned())
        );
    }
}
