//! The command line: flags, dispatch to the library, output. Results go to stdout (JSON with
//! `--json`), logs and errors to stderr.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use ve_config::Secret;
use ve_kafka::KafkaConfig;
use ve_schema::{AlertRule, Codec, RegistryConfig, Tenant, topics};

use crate::{CtlError, NewKey, Plan, TenantSpec, TenantUpdate};

/// Value Engine admin: tenants and API keys, CMDB host tags, alert rules.
#[derive(Debug, Parser)]
#[command(name = "ve-ctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control topics live, and output format; accepted before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct Global {
    /// Kafka bootstrap servers.
    #[arg(long, global = true, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Schema registry base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8081")]
    pub registry: String,
    /// Registry basic-auth user (none when empty).
    #[arg(long, global = true, default_value = "", hide_default_value = true)]
    pub registry_username: String,
    #[arg(long, global = true, default_value = "", hide_default_value = true)]
    pub registry_password: String,
    /// Extra librdkafka property, e.g. `-X security.protocol=sasl_ssl` (repeatable).
    #[arg(
        short = 'X',
        long = "kafka-option",
        global = true,
        value_name = "KEY=VALUE"
    )]
    pub kafka_options: Vec<String>,
    #[arg(long, global = true, default_value = topics::CONTROL_TENANTS)]
    pub tenants_topic: String,
    #[arg(long, global = true, default_value = topics::CONTROL_CMDB)]
    pub cmdb_topic: String,
    #[arg(long, global = true, default_value = topics::CONTROL_RULES)]
    pub rules_topic: String,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tenants and their API keys (control.tenants.v1).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// CMDB host tags, added to events as `host.<tag>` (control.cmdb.v1).
    #[command(subcommand)]
    Cmdb(CmdbCommand),
    /// Alert rules (control.rules.v1).
    #[command(subcommand)]
    Rule(RuleCommand),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its first API key (shown once, only its SHA-256 is stored).
    Create {
        #[arg(long)]
        id: String,
        /// Display name (defaults to the id).
        #[arg(long, default_value = "", hide_default_value = true)]
        name: String,
        #[arg(long, value_enum)]
        plan: Plan,
        /// Default: free 1, paid 90, enterprise 365.
        #[arg(long)]
        retention_days: Option<i32>,
        /// Default: free 100, paid 1000, enterprise 10000.
        #[arg(long)]
        rate_limit_eps: Option<i32>,
        /// Default: twice the plan's rate.
        #[arg(long)]
        burst: Option<i32>,
        /// ISO 4217 invoice currency.
        #[arg(long)]
        currency: Option<String>,
        /// Id of the first key (random when omitted).
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Change a tenant; a new plan without explicit limits takes the plan's defaults.
    Update {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum)]
        plan: Option<Plan>,
        #[arg(long)]
        retention_days: Option<i32>,
        #[arg(long)]
        rate_limit_eps: Option<i32>,
        #[arg(long)]
        burst: Option<i32>,
        #[arg(long)]
        currency: Option<String>,
    },
    /// Add an API key to a tenant and print it (shown once).
    AddKey {
        #[arg(long)]
        id: String,
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Revoke an API key.
    RevokeKey {
        #[arg(long)]
        id: String,
        #[arg(long)]
        key_id: String,
    },
    /// Print a tenant (key hashes, never keys).
    Show {
        #[arg(long)]
        id: String,
    },
    /// List tenants.
    List,
    /// Delete a tenant: its keys stop working.
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CmdbCommand {
    /// Set a host's tags (replaces them unless --merge).
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        host: String,
        /// key=value (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Keep the host's other tags.
        #[arg(long)]
        merge: bool,
    },
    /// Remove a host.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        host: String,
    },
    /// List hosts (of one tenant with --tenant).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Create or replace an alert rule.
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        /// Display name (defaults to the id).
        #[arg(long)]
        name: Option<String>,
        /// threshold, rate or absence.
        #[arg(long, default_value = "threshold")]
        kind: String,
        #[arg(long)]
        metric: Option<String>,
        /// Event name/type counted by rate and absence rules.
        #[arg(long)]
        event_match: Option<String>,
        /// > >= < <= == !=
        #[arg(long, default_value = ">", allow_hyphen_values = true)]
        operator: String,
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        threshold: f64,
        /// How long the condition must hold before the alert fires.
        #[arg(long, default_value_t = 60)]
        for_seconds: i64,
        /// Labels an alert series is kept per (repeatable; default: host).
        #[arg(long)]
        group_by: Vec<String>,
        /// Store the rule switched off.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete an alert rule.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// List rules (of one tenant with --tenant).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// The binary's `main`: parse, run, report.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .compact()
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ve-ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ve-ctl: {e}");
            if e.is_retryable() {
                eprintln!("ve-ctl: is the broker/registry reachable? (--brokers, --registry)");
            }
            ExitCode::from(match e {
                CtlError::Usage(_) => 2,
                _ => 1,
            })
        }
    }
}

fn clients(global: &Global) -> Result<(KafkaConfig, Codec), CtlError> {
    let mut kafka = crate::kafka_config(&global.brokers);
    for option in &global.kafka_options {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| CtlError::Usage(format!("-X {option:?}: expected key=value")))?;
        let _ = kafka.extra.insert(key.to_owned(), value.to_owned());
    }
    let codec = Codec::new(&RegistryConfig {
        url: global.registry.clone(),
        username: global.registry_username.clone(),
        password: Secret::new(global.registry_password.clone()),
        timeout_ms: 10_000,
    })?;
    Ok((kafka, codec))
}

/// Runs one command and returns what to print.
pub async fn run(cli: Cli) -> Result<String, CtlError> {
    let (kafka, codec) = clients(&cli.global)?;
    let g = &cli.global;
    match cli.command {
        Command::Tenant(command) => tenant(&kafka, &codec, g, command).await,
        Command::Cmdb(command) => cmdb(&kafka, &codec, g, command).await,
        Command::Rule(command) => rule(&kafka, &codec, g, command).await,
    }
}

fn new_key_output(g: &Global, tenant: &Tenant, key: &NewKey) -> String {
    if g.json {
        return format!(
            "{}\n",
            json!({
                "tenant_id": tenant.tenant_id,
                "plan": tenant.plan,
                "key_id": key.key_id,
                "api_key": key.api_key.expose(),
                "authorization": key.authorization(&tenant.tenant_id),
            })
        );
    }
    format!(
        "tenant:  {}\nplan:    {}\nkey_id:  {}\napi_key: {}\n\nClients send:  Authorization: {}\nStore the API key now: it is not shown again (only its SHA-256 is kept).\n",
        tenant.tenant_id,
        tenant.plan,
        key.key_id,
        key.api_key.expose(),
        key.authorization(&tenant.tenant_id)
    )
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).map_or_else(|e| format!("{e}\n"), |s| format!("{s}\n"))
}

fn tenant_line(t: &Tenant) -> String {
    let active = t.api_keys.iter().filter(|k| !k.revoked).count();
    format!(
        "{}\t{}\t{}\tretention={}d\trate={}/s burst={}\tkeys={}/{}\t{}\n",
        t.tenant_id,
        t.name,
        t.plan,
        t.retention_days,
        t.rate_limit_eps,
        t.burst,
        active,
        t.api_keys.len(),
        t.currency
    )
}

async fn tenant(
    kafka: &KafkaConfig,
    codec: &Codec,
    g: &Global,
    command: TenantCommand,
) -> Result<String, CtlError> {
    let topic = g.tenants_topic.as_str();
    match command {
        TenantCommand::Create {
            id,
            name,
            plan,
            retention_days,
            rate_limit_eps,
            burst,
            currency,
            key_id,
        } => {
            let spec = TenantSpec {
                tenant_id: id,
                name,
                plan,
                retention_days,
                rate_limit_eps,
                burst,
                currency,
                key_id,
            };
            let (tenant, key) = crate::create_tenant(kafka, codec, topic, spec).await?;
            Ok(new_key_output(g, &tenant, &key))
        }
        TenantCommand::Update {
            id,
            name,
            plan,
            retention_days,
            rate_limit_eps,
            burst,
            currency,
        } => {
            let update = TenantUpdate {
                name,
                plan,
                retention_days,
                rate_limit_eps,
                burst,
                currency,
            };
            let tenant = crate::update_tenant(kafka, codec, topic, &id, update).await?;
            Ok(to_json(&tenant))
        }
        TenantCommand::AddKey { id, key_id } => {
            let (tenant, key) = crate::add_key(kafka, codec, topic, &id, key_id.as_deref()).await?;
            Ok(new_key_output(g, &tenant, &key))
        }
        TenantCommand::RevokeKey { id, key_id } => {
            let tenant = crate::revoke_key(kafka, codec, topic, &id, &key_id).await?;
            Ok(if g.json {
                to_json(&tenant)
            } else {
                format!("key {key_id} of tenant {id} revoked\n")
            })
        }
        TenantCommand::Show { id } => Ok(to_json(
            &crate::read_tenant(kafka, codec, topic, &id).await?,
        )),
        TenantCommand::List => {
            let tenants = crate::read_tenants(kafka, codec, topic).await?;
            Ok(if g.json {
                to_json(&tenants.values().collect::<Vec<_>>())
            } else {
                tenants.values().map(tenant_line).collect()
            })
        }
        TenantCommand::Delete { id } => {
            crate::delete_tenant(kafka, codec, topic, &id).await?;
            Ok(format!("tenant {id} deleted\n"))
        }
    }
}

fn for_tenant(key: &str, tenant: Option<&str>) -> bool {
    tenant.is_none_or(|t| key.split_once('/').is_some_and(|(owner, _)| owner == t))
}

async fn cmdb(
    kafka: &KafkaConfig,
    codec: &Codec,
    g: &Global,
    command: CmdbCommand,
) -> Result<String, CtlError> {
    let topic = g.cmdb_topic.as_str();
    match command {
        CmdbCommand::Set {
            tenant,
            host,
            tags,
            merge,
        } => {
            let tags = tags
                .iter()
                .map(|t| crate::parse_tag(t))
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            let record =
                crate::set_cmdb_host(kafka, codec, topic, &tenant, &host, tags, merge).await?;
            Ok(to_json(&record))
        }
        CmdbCommand::Delete { tenant, host } => {
            crate::delete_cmdb_host(kafka, topic, &tenant, &host).await?;
            Ok(format!("host {host} of tenant {tenant} deleted\n"))
        }
        CmdbCommand::List { tenant } => {
            let hosts: BTreeMap<_, _> = crate::read_cmdb(kafka, codec, topic)
                .await?
                .into_iter()
                .filter(|(key, _)| for_tenant(key, tenant.as_deref()))
                .collect();
            Ok(to_json(&hosts))
        }
    }
}

async fn rule(
    kafka: &KafkaConfig,
    codec: &Codec,
    g: &Global,
    command: RuleCommand,
) -> Result<String, CtlError> {
    let topic = g.rules_topic.as_str();
    match command {
        RuleCommand::Set {
            tenant,
            id,
            name,
            kind,
            metric,
            event_match,
            operator,
            threshold,
            for_seconds,
            group_by,
            disabled,
        } => {
            let rule = AlertRule {
                name: name.unwrap_or_else(|| id.clone()),
                rule_id: id,
                kind,
                metric,
                event_match,
                operator,
                threshold,
                for_seconds,
                group_by: if group_by.is_empty() {
                    vec!["host".to_owned()]
                } else {
                    group_by
                },
                enabled: !disabled,
            };
            let rule = crate::set_rule(kafka, codec, topic, &tenant, rule).await?;
            Ok(to_json(&rule))
        }
        RuleCommand::Delete { tenant, id } => {
            crate::delete_rule(kafka, topic, &tenant, &id).await?;
            Ok(format!("rule {id} of tenant {tenant} deleted\n"))
        }
        RuleCommand::List { tenant } => {
            let rules: BTreeMap<_, _> = crate::read_rules(kafka, codec, topic)
                .await?
                .into_iter()
                .filter(|(key, _)| for_tenant(key, tenant.as_deref()))
                .collect();
            Ok(to_json(&rules))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let cli = Cli::try_parse_from([
            "ve-ctl",
            "tenant",
            "create",
            "--id",
            "acme",
            "--name",
            "Acme",
            "--plan",
            "paid",
            "--rate-limit-eps",
            "500",
            "--burst",
            "900",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Tenant(TenantCommand::Create {
                plan: Plan::Paid,
                rate_limit_eps: Some(500),
                ..
            })
        ));
        let cli = Cli::try_parse_from([
            "ve-ctl", "cmdb", "set", "--tenant", "acme", "--host", "web-1", "--tag", "env=prod",
            "--tag", "team=x",
        ])
        .unwrap();
        let Command::Cmdb(CmdbCommand::Set { tags, .. }) = cli.command else {
            panic!()
        };
        assert_eq!(tags, ["env=prod", "team=x"]);
        let cli = Cli::try_parse_from([
            "ve-ctl",
            "rule",
            "set",
            "--tenant",
            "acme",
            "--id",
            "cold",
            "--metric",
            "temp",
            "--operator",
            "<",
            "--threshold",
            "-5",
            "--brokers",
            "b:1",
        ])
        .unwrap();
        assert_eq!(cli.global.brokers, "b:1");
        assert!(matches!(
            cli.command,
            Command::Rule(RuleCommand::Set { threshold, .. }) if threshold == -5.0
        ));
        assert!(Cli::try_parse_from(["ve-ctl", "tenant", "create", "--id", "x"]).is_err());
    }

    #[test]
    fn tenant_filter() {
        assert!(for_tenant("acme/web-1", Some("acme")));
        assert!(!for_tenant("acme2/web-1", Some("acme")));
        assert!(for_tenant("x/y", None));
    }
}
