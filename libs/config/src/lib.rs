//! Layered configuration shared by every Value Engine service.
//!
//! Precedence, lowest first: the service's built-in `default.toml` (embedded in the binary, and the
//! reference for every key), then each TOML file given, then environment variables carrying the
//! service prefix (`VE_GATEWAY__KAFKA__BROKERS` sets `kafka.brokers` of the gateway).
//!
//! The environment is passed in as a map instead of being read globally, so tests never mutate the
//! process environment. Unknown keys are rejected and every problem is reported in one error, each
//! naming the key and where its value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A secret string: deserializes like a string, never shows in `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to the system that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `kafka.brokers`; empty for the document root.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Where the offending value came from (file, environment variable, defaults), when known.
    pub source: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() {
            "<root>"
        } else {
            &self.key
        };
        write!(f, "{key}: {}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Every problem found while loading a configuration, reported together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration for {service} ({} problem(s)):\n  {}", .problems.len(), join(.problems))]
    Invalid {
        service: String,
        problems: Vec<Problem>,
    },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The environment variable prefix of a service: `gateway` -> `VE_GATEWAY__`,
/// `clickhouse-sink` -> `VE_CLICKHOUSE_SINK__`.
pub fn env_prefix(service: &str) -> String {
    format!("VE_{}__", service.to_ascii_uppercase().replace('-', "_"))
}

/// What to load a service's configuration from.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    /// Service name, used for the environment prefix and in messages.
    pub service: &'a str,
    /// The embedded `default.toml`: every key with its default value.
    pub defaults: &'a str,
    /// TOML files applied in order over the defaults. Missing files are an error.
    pub files: Vec<PathBuf>,
    /// The process environment (or a test's map); only keys with the service prefix are read.
    pub env: BTreeMap<String, String>,
}

impl<'a> Sources<'a> {
    pub fn new(service: &'a str, defaults: &'a str) -> Self {
        Self {
            service,
            defaults,
            files: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    pub fn files_iter(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.files.extend(paths);
        self
    }

    pub fn env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Loads and validates `T`, collecting every problem before giving up.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let mut figment = Figment::from(Toml::string(self.defaults));
        for path in &self.files {
            // figment silently skips a missing file; a named config file that is absent is a
            // mistake the operator must hear about.
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let defaults: Value = Figment::from(Toml::string(self.defaults))
            .extract()
            .map_err(|e| ConfigError::Invalid {
                service: self.service.to_owned(),
                problems: vec![Problem {
                    key: String::new(),
                    message: format!("built-in defaults do not parse: {e}"),
                    source: None,
                }],
            })?;
        figment = figment.merge(EnvMap::new(self.service, &self.env, &defaults));
        collect(self.service, &figment, &defaults)
    }
}

/// Deserializes `T` from `figment`; on failure, drops an unknown key or resets a bad value to its
/// default and tries again, so one run reports all problems instead of the first one only.
fn collect<T: DeserializeOwned>(
    service: &str,
    figment: &Figment,
    defaults: &Value,
) -> Result<T, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        service: service.to_owned(),
        problems,
    };
    let mut merged: Value = match figment.extract() {
        Ok(value) => value,
        Err(errors) => {
            return Err(invalid(
                errors.into_iter().map(|e| problem(figment, &e)).collect(),
            ));
        }
    };
    let mut problems: Vec<Problem> = Vec::new();
    // Each round drops or resets at least one key, so this terminates; the cap guards against a
    // pathological document.
    for _ in 0..256 {
        let attempt = Figment::from(figment::providers::Serialized::defaults(&merged));
        let errors = match attempt.extract::<T>() {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => return Err(invalid(problems)),
            Err(errors) => errors,
        };
        let mut progressed = false;
        for error in errors {
            let found = problem(figment, &error);
            let replacement = match &error.kind {
                figment::error::Kind::UnknownField(..) => None,
                _ => lookup(defaults, &error.path).cloned(),
            };
            // Unchanged means the default itself failed: no point in another round for it.
            progressed |= set_path(&mut merged, &error.path, replacement);
            if !problems.contains(&found) {
                problems.push(found);
            }
        }
        if !progressed {
            return Err(invalid(problems));
        }
    }
    Err(invalid(problems))
}

fn problem(figment: &Figment, error: &figment::Error) -> Problem {
    use figment::error::Kind;
    let key = error.path.join(".");
    let message = match &error.kind {
        Kind::UnknownField(_, expected) if !expected.is_empty() => {
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::UnknownField(..) => "unknown key".to_owned(),
        kind => kind.to_string(),
    };
    let source = figment
        .find_metadata(&key)
        .map(|m| describe_source(m, &error.path));
    Problem {
        key,
        message,
        source,
    }
}

fn describe_source(metadata: &Metadata, path: &[String]) -> String {
    if let Some(source) = &metadata.source {
        return source.to_string();
    }
    let keys: Vec<&str> = path.iter().map(String::as_str).collect();
    if metadata.name.contains("environment") {
        format!(
            "environment variable {}",
            metadata.interpolate(&Profile::Default, &keys)
        )
    } else {
        metadata.name.to_string()
    }
}

fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| match v {
        Value::Dict(_, dict) => dict.get(key),
        _ => None,
    })
}

/// Sets (or with `None`, removes) the value at `path`; returns whether anything changed.
fn set_path(value: &mut Value, path: &[String], replacement: Option<Value>) -> bool {
    let Value::Dict(_, dict) = value else {
        return false;
    };
    match path {
        [] => false,
        [last] => match replacement {
            Some(new) if dict.get(last) == Some(&new) => false,
            Some(new) => {
                let _ = dict.insert(last.clone(), new);
                true
            }
            None => dict.remove(last).is_some(),
        },
        [first, rest @ ..] => dict
            .get_mut(first)
            .is_some_and(|child| set_path(child, rest, replacement)),
    }
}

/// Environment variables as a figment provider, read from a map rather than the process.
struct EnvMap {
    prefix: String,
    vars: Vec<(String, Value)>,
}

impl EnvMap {
    /// Values are typed by the default they replace: a key whose default is a string stays a
    /// string (a password of `123456` or `true` is text), others are parsed (`9`, `true`,
    /// `[a, b]`). Keys without a default (map entries such as `kafka.extra.*`) are strings.
    fn new(service: &str, env: &BTreeMap<String, String>, defaults: &Value) -> Self {
        let prefix = env_prefix(service);
        let vars = env
            .iter()
            .filter_map(|(k, raw)| {
                let rest = k.strip_prefix(&prefix).filter(|r| !r.is_empty())?;
                let key = rest.to_ascii_lowercase().replace("__", ".");
                let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                let value = match lookup(defaults, &path) {
                    Some(Value::String(..)) | None => Value::from(raw.clone()),
                    Some(_) => raw.parse().unwrap_or_else(|_| Value::from(raw.clone())),
                };
                Some((key, value))
            })
            .collect();
        Self { prefix, vars }
    }
}

impl Provider for EnvMap {
    fn metadata(&self) -> Metadata {
        let prefix = self.prefix.clone();
        Metadata::named("environment variable(s)").interpolater(move |_, keys| {
            format!("{prefix}{}", keys.join("__").to_ascii_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.vars {
            if let Value::Dict(_, nested) = figment::util::nest(key, value.clone()) {
                dict = merge(dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn merge(mut into: Dict, from: Dict) -> Dict {
    for (key, value) in from {
        let merged = match (into.remove(&key), value) {
            (Some(Value::Dict(tag, a)), Value::Dict(_, b)) => Value::Dict(tag, merge(a, b)),
            (_, value) => value,
        };
        let _ = into.insert(key, merged);
    }
    into
}

/// Convenience for `main`: the process environment as a map.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

/// Convenience for `main`: config files named by `--config PATH` arguments or `VE_CONFIG`.
pub fn files_from_args(
    args: impl IntoIterator<Item = String>,
    env: &BTreeMap<String, String>,
) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(path) = env.get("VE_CONFIG").filter(|p| !p.is_empty()) {
        files.push(PathBuf::from(path));
    }
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            if let Some(path) = args.next() {
                files.push(PathBuf::from(path));
            }
        } else if let Some(path) = arg.strip_prefix("--config=") {
            files.push(Path::new(path).to_path_buf());
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Kafka {
        brokers: String,
        linger_ms: u64,
        password: Secret,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Admin {
        listen: String,
        enabled: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        kafka: Kafka,
        admin: Admin,
    }

    const DEFAULTS: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        linger_ms = 5
        password = ""
        [admin]
        listen = "127.0.0.1:9100"
        enabled = true
    "#;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ve-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("conf.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_then_file_then_env() {
        let file = write(
            "layers",
            "[kafka]\nbrokers = \"file:9092\"\nlinger_ms = 7\n",
        );
        let conf: Conf = Sources::new("clickhouse-sink", DEFAULTS)
            .file(&file)
            .env([
                ("VE_CLICKHOUSE_SINK__KAFKA__LINGER_MS", "9"),
                ("VE_GATEWAY__ADMIN__LISTEN", "x"),
            ])
            .load()
            .unwrap();
        assert_eq!(conf.kafka.brokers, "file:9092");
        assert_eq!(conf.kafka.linger_ms, 9, "environment wins over the file");
        assert_eq!(
            conf.admin.listen, "127.0.0.1:9100",
            "another service's prefix is ignored"
        );
    }

    #[test]
    fn all_problems_reported_at_once_with_their_sources() {
        let file = write(
            "bad",
            "[kafka]\nbrokerz = \"typo\"\n[admin]\nenabled = \"maybe\"\n",
        );
        let err = Sources::new("gateway", DEFAULTS)
            .file(&file)
            .env([
                ("VE_GATEWAY__KAFKA__LINGER_MS", "soon"),
                ("VE_GATEWAY__NOPE", "1"),
            ])
            .load::<Conf>()
            .unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in ["kafka.brokerz", "admin.enabled", "kafka.linger_ms", "nope"] {
            assert!(keys.contains(&expected), "missing {expected} in {err}");
        }
        let text = err.to_string();
        assert!(text.contains("VE_GATEWAY__KAFKA__LINGER_MS"), "{text}");
        assert!(text.contains("conf.toml"), "{text}");
        assert!(text.contains("expected one of"), "{text}");
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let conf: Conf = Sources::new("gateway", DEFAULTS)
            .env([("VE_GATEWAY__KAFKA__PASSWORD", "hunter2")])
            .load()
            .unwrap();
        assert_eq!(conf.kafka.password.expose(), "hunter2");
        let debug = format!("{conf:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[test]
    fn string_keys_stay_strings_whatever_they_look_like() {
        let conf: Conf = Sources::new("gateway", DEFAULTS)
            .env([
                ("VE_GATEWAY__KAFKA__PASSWORD", "123456"),
                ("VE_GATEWAY__KAFKA__BROKERS", "true"),
                ("VE_GATEWAY__KAFKA__LINGER_MS", "12"),
            ])
            .load()
            .unwrap();
        assert_eq!(conf.kafka.password.expose(), "123456");
        assert_eq!(conf.kafka.brokers, "true");
        assert_eq!(conf.kafka.linger_ms, 12);
    }

    #[test]
    fn missing_file_is_named() {
        let err = Sources::new("gateway", DEFAULTS)
            .file("/nonexistent/ve.toml")
            .load::<Conf>()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ve.toml"), "{err}");
    }

    #[test]
    fn prefix_is_derived_from_service_name() {
        assert_eq!(env_prefix("clickhouse-sink"), "VE_CLICKHOUSE_SINK__");
    }
}
