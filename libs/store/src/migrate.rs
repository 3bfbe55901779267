//! Forward-only ClickHouse migrations, applied at start. Each is recorded in
//! `schema_migrations`; statements are written to be idempotent (`IF NOT EXISTS`) so two
//! instances starting together cannot break each other.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::{ClickHouseConfig, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    /// Statements run in order; ClickHouse's HTTP interface takes one statement per request.
    pub statements: &'static [&'static str],
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct Applied {
    version: u32,
    name: String,
}

/// Applies the migrations not yet recorded, in version order. Returns how many ran.
pub async fn migrate(
    config: &ClickHouseConfig,
    migrations: &[Migration],
) -> Result<usize, StoreError> {
    config.ensure_database().await?;
    let client = config.client()?;
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, \
             applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) \
             ENGINE = ReplacingMergeTree ORDER BY version",
        )
        .execute()
        .await
        .map_err(|e| config.error(e))?;
    let done: Vec<u32> = client
        .query("SELECT version FROM schema_migrations FINAL")
        .fetch_all()
        .await
        .map_err(|e| config.error(e))?;
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by_key(|m| m.version);
    let mut ran = 0;
    for migration in sorted.into_iter().filter(|m| !done.contains(&m.version)) {
        for statement in migration.statements {
            client
                .query(statement)
                .execute()
                .await
                .map_err(|e| StoreError::Migration {
                    name: format!("{:04}_{}", migration.version, migration.name),
                    reason: e.to_string(),
                })?;
        }
        let mut insert = client
            .insert::<Applied>("schema_migrations")
            .await
            .map_err(|e| config.error(e))?;
        insert
            .write(&Applied {
                version: migration.version,
                name: migration.name.to_owned(),
            })
            .await
            .map_err(|e| config.error(e))?;
        insert.end().await.map_err(|e| config.error(e))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        ran += 1;
    }
    Ok(ran)
}
