//! Topic names: the contract between services (ARCHITECTURE.md). Changing one is a migration.

pub const INGEST_RAW: &str = "ingest.raw.v1";
pub const EVENTS_NORMALIZED: &str = "events.normalized.v1";
pub const SIGNALS_METRIC: &str = "signals.metric.v1";
pub const EVENTS_ENRICHED: &str = "events.enriched.v1";
pub const OPS_ALERT: &str = "ops.alert.v1";
pub const BILLING_INVOICE: &str = "billing.invoice.v1";
pub const CONTROL_TENANTS: &str = "control.tenants.v1";
pub const CONTROL_CMDB: &str = "control.cmdb.v1";
pub const CONTROL_RULES: &str = "control.rules.v1";
/// The invoicer's metering state, one record per input partition keyed `p{partition}`: usage
/// derived from that partition up to the offset the record names (services/invoicer/README.md).
pub const BILLING_USAGE: &str = "billing.usage.v1";

/// Compacted topics: the latest record per key is the state.
pub const COMPACTED: &[&str] = &[
    OPS_ALERT,
    CONTROL_TENANTS,
    CONTROL_CMDB,
    CONTROL_RULES,
    BILLING_USAGE,
];

/// Every topic carrying envelopes, for registering their subjects.
pub const ALL: &[&str] = &[
    INGEST_RAW,
    EVENTS_NORMALIZED,
    SIGNALS_METRIC,
    EVENTS_ENRICHED,
    OPS_ALERT,
    BILLING_INVOICE,
    BILLING_USAGE,
    CONTROL_TENANTS,
    CONTROL_CMDB,
    CONTROL_RULES,
];
