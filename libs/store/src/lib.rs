//! Storage clients shared by the sinks and the query API: ClickHouse (through the `clickhouse`
//! crate) and the object store (through `object_store`), each with a readiness check.

mod migrate;

pub use migrate::{Migration, migrate};

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use serde::Deserialize;
use ve_config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("clickhouse at {url}: {reason}")]
    ClickHouse { url: String, reason: String },
    #[error("object store {url}: {reason}")]
    Object { url: String, reason: String },
    #[error("migration {name} failed: {reason}")]
    Migration { name: String, reason: String },
}

/// `[clickhouse]` section. The default URL is the local engine; any configured URL (a real
/// ClickHouse server or cluster) replaces it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// `lz4` (ClickHouse's native wire compression) or `none` (required by the local engine).
    pub compression: String,
}

impl ClickHouseConfig {
    /// A client bound to the configured database.
    pub fn client(&self) -> Result<clickhouse::Client, StoreError> {
        Ok(self.server_client()?.with_database(&self.database))
    }

    /// A client without a default database, for creating it.
    pub fn server_client(&self) -> Result<clickhouse::Client, StoreError> {
        let compression = match self.compression.as_str() {
            "none" => clickhouse::Compression::None,
            "lz4" => clickhouse::Compression::Lz4,
            other => {
                return Err(StoreError::Config(format!(
                    "clickhouse.compression {other:?}: expected lz4 or none"
                )));
            }
        };
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_compression(compression);
        if !self.user.is_empty() {
            client = client.with_user(&self.user);
        }
        if !self.password.is_empty() {
            client = client.with_password(self.password.expose());
        }
        Ok(client)
    }

    pub fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::ClickHouse {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Readiness: the server answers `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let one: u8 = self
            .server_client()?
            .query("SELECT 1")
            .fetch_one()
            .await
            .map_err(|e| self.error(e))?;
        if one == 1 {
            Ok(())
        } else {
            Err(self.error("SELECT 1 did not return 1"))
        }
    }

    /// Creates the configured database if it does not exist.
    pub async fn ensure_database(&self) -> Result<(), StoreError> {
        self.server_client()?
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                self.database.replace('`', "")
            ))
            .execute()
            .await
            .map_err(|e| self.error(e))
    }
}

/// `[object_store]` section: `file:///var/lib/ve/archive` (local directory) or
/// `s3://bucket/prefix` with an endpoint for MinIO or any S3-compatible store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    pub url: String,
    /// S3 endpoint override (MinIO, Ceph, ...); empty for AWS.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Allow `http://` endpoints (local MinIO).
    pub allow_http: bool,
}

/// An object store and the prefix inside it that belongs to us.
#[derive(Debug, Clone)]
pub struct Archive {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: StorePath,
    pub url: String,
}

impl ObjectStoreConfig {
    pub fn open(&self) -> Result<Archive, StoreError> {
        let parsed = url::Url::parse(&self.url)
            .map_err(|e| StoreError::Config(format!("object_store.url {:?}: {e}", self.url)))?;
        if parsed.scheme() == "file" {
            // The local store refuses a missing root; creating it is what a user expects.
            std::fs::create_dir_all(parsed.path()).map_err(|e| StoreError::Object {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        }
        let mut options: Vec<(&str, String)> = Vec::new();
        if !self.endpoint.is_empty() {
            options.push(("aws_endpoint", self.endpoint.clone()));
        }
        if !self.region.is_empty() {
            options.push(("aws_region", self.region.clone()));
        }
        if !self.access_key_id.is_empty() {
            options.push(("aws_access_key_id", self.access_key_id.clone()));
            options.push((
                "aws_secret_access_key",
                self.secret_access_key.expose().to_owned(),
            ));
        }
        if self.allow_http {
            options.push(("aws_allow_http", "true".to_owned()));
        }
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| StoreError::Object {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Archive {
            store: Arc::from(store),
            prefix,
            url: self.url.clone(),
        })
    }
}

impl Archive {
    /// Readiness: listing our prefix succeeds.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Object {
                url: self.url.clone(),
                reason: e.to_string(),
            })
    }

    /// `key` under our prefix.
    pub fn path(&self, key: &str) -> StorePath {
        StorePath::from_iter(self.prefix.parts().chain(StorePath::from(key).parts()))
    }
}
