//! Closing a period: from the latest published usage state of every input partition (the cut),
//! one invoice per tenant with usage in the period or usage of earlier periods not billed yet
//! (adjustment lines). The invoice id depends on tenant and period only, and an issued invoice is
//! never issued again: closing twice returns the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use ve_kafka::{CompactedTable, OutRecord, Producer};
use ve_schema::{Body, Codec, Envelope, Invoice, Map, Source, Tenant};

use crate::period::{Period, rfc3339};
use crate::pricing::{Meter, Plan, PriceBook};
use crate::usage::{PartitionState, Usage};
use crate::views::{Billed, InvoiceBook, Issued, UsageView, billed_attribute};

#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The request names no period start, or a period not yet started.
    #[error("{0}")]
    BadRequest(String),
    /// The broker or registry did not answer: try again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Usage of every tenant and period summed over partitions, and the cut it was read at.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub usage: BTreeMap<String, BTreeMap<i64, Usage>>,
    /// Input partition -> next offset: every record before it is in these totals.
    pub cut: BTreeMap<i32, i64>,
}

impl Totals {
    pub fn of(states: &[Arc<PartitionState>]) -> Self {
        let mut totals = Self::default();
        for state in states {
            let _ = totals.cut.insert(state.partition, state.next_offset);
            for (tenant, periods) in &state.usage {
                let tenant = totals.usage.entry(tenant.clone()).or_default();
                for (start, usage) in periods {
                    tenant.entry(*start).or_default().merge(usage);
                }
            }
        }
        totals
    }

    /// Tenants that an invoice for `period_start` would have lines for.
    pub fn tenants_to_bill(
        &self,
        period_start: i64,
        billed: impl Fn(&str) -> Billed,
    ) -> Vec<String> {
        self.usage
            .iter()
            .filter(|(tenant, periods)| {
                let billed = billed(tenant);
                periods
                    .range(..=period_start)
                    .any(|(start, usage)| unbilled(usage, billed.get(start)))
            })
            .map(|(tenant, _)| tenant.clone())
            .collect()
    }
}

fn unbilled(usage: &Usage, billed: Option<&BTreeMap<Meter, u64>>) -> bool {
    Meter::ALL
        .iter()
        .any(|m| usage.quantity(*m) > billed.and_then(|b| b.get(m)).copied().unwrap_or_default())
}

/// The invoice id of a tenant's period: stable, so closing again names the same invoice.
pub fn invoice_id(tenant: &str, period: Period, period_start: i64) -> String {
    format!("inv-{tenant}-{}", period.label(period_start))
}

/// Everything one invoice is computed from.
#[derive(Debug)]
pub struct InvoiceInput<'a> {
    pub tenant: &'a str,
    pub plan_name: &'a str,
    pub plan: &'a Plan,
    pub currency: &'a str,
    pub period: Period,
    pub period_start: i64,
    pub usage: &'a BTreeMap<i64, Usage>,
    pub billed: &'a Billed,
    pub cut: &'a BTreeMap<i32, i64>,
    pub issued_at: i64,
}

/// The tenant's invoice for the period, `None` when it would have no line. Usage of the period
/// itself is priced band by band; what earlier periods (or this one, when a later invoice already
/// billed part of it) gained since they were billed becomes adjustment lines. The attributes
/// record the cut (`cut.p{partition}`) and, per period touched, the cumulative quantities now
/// billed (`billed.{period_start}.{meter}`): the next close subtracts them.
pub fn build_invoice(input: &InvoiceInput<'_>) -> Option<(Invoice, Map)> {
    let mut lines = Vec::new();
    let mut attributes = Map::new();
    for (start, usage) in input.usage.range(..=input.period_start) {
        let billed = input.billed.get(start);
        if !unbilled(usage, billed) {
            continue;
        }
        for meter in Meter::ALL {
            let now = usage.quantity(meter);
            let before = billed
                .and_then(|b| b.get(&meter))
                .copied()
                .unwrap_or_default();
            let price = input.plan.price(meter);
            if *start == input.period_start && billed.is_none() {
                lines.extend(price.lines(meter, now));
            } else {
                lines.extend(price.adjustment(meter, &rfc3339(*start), before, now));
            }
            let _ = attributes.insert(billed_attribute(*start, meter), now.max(before).to_string());
        }
    }
    if lines.is_empty() {
        return None;
    }
    for (partition, offset) in input.cut {
        let _ = attributes.insert(format!("cut.p{partition}"), offset.to_string());
    }
    let _ = attributes.insert("period".into(), input.period.to_string());
    let subtotal: i64 = lines.iter().map(|l| l.amount_micros).sum();
    let invoice = Invoice {
        invoice_id: invoice_id(input.tenant, input.period, input.period_start),
        period_start: input.period_start,
        period_end: input.period.end_of(input.period_start),
        plan: input.plan_name.to_owned(),
        currency: input.currency.to_owned(),
        lines,
        subtotal_micros: subtotal,
        total_micros: subtotal,
        issued_at: input.issued_at,
    };
    Some((invoice, attributes))
}

/// `[billing]` settings the closer uses.
#[derive(Debug, Clone)]
pub struct CloseSettings {
    pub service: &'static str,
    pub invoice_topic: String,
    pub period: Period,
    pub close_after_micros: i64,
    pub plans: PriceBook,
    pub default_plan: String,
    pub default_currency: String,
}

/// Closes periods and publishes their invoices; one close at a time.
#[derive(Debug, Clone)]
pub struct Closer {
    pub settings: Arc<CloseSettings>,
    pub codec: Codec,
    pub producer: Producer,
    pub usage: UsageView,
    pub invoices: InvoiceBook,
    pub tenants: CompactedTable<Tenant>,
    lock: Arc<Mutex<()>>,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Closer {
    pub fn new(
        settings: CloseSettings,
        codec: Codec,
        producer: Producer,
        usage: UsageView,
        invoices: InvoiceBook,
        tenants: CompactedTable<Tenant>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            codec,
            producer,
            usage,
            invoices,
            tenants,
            lock: Arc::default(),
        }
    }

    /// The tenant's plan (name, prices) and currency; unknown tenants and plans the price book
    /// lacks get the default plan.
    fn plan_of(&self, tenant: &str) -> (String, &Plan, String) {
        let record = self.tenants.get(tenant);
        let settings = &self.settings;
        let named = record
            .as_ref()
            .map(|t| t.plan.clone())
            .filter(|p| settings.plans.contains_key(p));
        let name = named.unwrap_or_else(|| settings.default_plan.clone());
        let currency = record
            .map(|t| t.currency)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| settings.default_currency.clone());
        // The default plan's presence is checked when the configuration is loaded.
        let plan = settings
            .plans
            .get(&name)
            .or_else(|| settings.plans.values().next())
            .expect("the price book has the default plan");
        (name, plan, currency)
    }

    /// Closes the period starting at `period_start`: returns every invoice of that period, the
    /// ones issued now and the ones issued before (unchanged).
    pub async fn close(&self, period_start: i64) -> Result<Vec<Arc<Issued>>, CloseError> {
        let settings = &self.settings;
        if !settings.period.is_start(period_start) {
            return Err(CloseError::BadRequest(format!(
                "{} is not the start of a {} billing period (that would be {})",
                rfc3339(period_start),
                settings.period,
                rfc3339(settings.period.start_of(period_start))
            )));
        }
        if period_start > now_micros() {
            return Err(CloseError::BadRequest(format!(
                "the period starting {} has not started",
                rfc3339(period_start)
            )));
        }
        let _guard = self.lock.lock().await;
        let started = Instant::now();
        // A stale view only moves usage to the next invoice as adjustments, so a slow state
        // topic delays billing, it does not stop it.
        if !self
            .usage
            .sync(Duration::from_secs(5))
            .await
            .map_err(|e| CloseError::Unavailable(e.to_string()))?
        {
            tracing::warn!(
                "usage view not caught up with the state topic; closing with what it has"
            );
        }
        let totals = Totals::of(&self.usage.snapshot());
        let issued_at = now_micros();
        let mut result = Vec::new();
        let mut fresh = Vec::new();
        let mut records = Vec::new();
        let mut tenants: BTreeSet<String> = totals
            .tenants_to_bill(period_start, |t| self.invoices.billed(t))
            .into_iter()
            .collect();
        tenants.extend(
            self.invoices
                .list(None)
                .iter()
                .filter(|i| i.invoice.period_start == period_start)
                .map(|i| i.tenant_id.clone()),
        );
        for tenant in tenants {
            let id = invoice_id(&tenant, settings.period, period_start);
            if let Some(existing) = self.invoices.get(&id) {
                result.push(existing);
                continue;
            }
            let (plan_name, plan, currency) = self.plan_of(&tenant);
            let billed = self.invoices.billed(&tenant);
            let empty = BTreeMap::new();
            let input = InvoiceInput {
                tenant: &tenant,
                plan_name: &plan_name,
                plan,
                currency: &currency,
                period: settings.period,
                period_start,
                usage: totals.usage.get(&tenant).unwrap_or(&empty),
                billed: &billed,
                cut: &totals.cut,
                issued_at,
            };
            let Some((invoice, attributes)) = build_invoice(&input) else {
                continue;
            };
            let envelope = invoice_envelope(&tenant, &invoice, &attributes, settings.service);
            let payload = self
                .codec
                .encode(&settings.invoice_topic, &envelope)
                .await
                .map_err(|e| CloseError::Unavailable(e.to_string()))?;
            records.push(
                OutRecord::new(
                    settings.invoice_topic.clone(),
                    invoice.invoice_id.clone(),
                    payload,
                )
                .with_trace(None),
            );
            fresh.push(Issued {
                tenant_id: tenant,
                invoice,
                attributes,
            });
        }
        let _ = self
            .producer
            .send_all(&records)
            .await
            .map_err(|e| CloseError::Unavailable(e.to_string()))?;
        metrics::counter!("invoicer_invoices_issued_total").increment(fresh.len() as u64);
        for issued in fresh {
            tracing::info!(invoice = %issued.invoice.invoice_id, total_micros = issued.invoice.total_micros, lines = issued.invoice.lines.len(), "invoice issued");
            let id = issued.invoice.invoice_id.clone();
            self.invoices.insert(issued);
            result.extend(self.invoices.get(&id));
        }
        metrics::histogram!("invoicer_period_close_seconds")
            .record(started.elapsed().as_secs_f64());
        result.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(result)
    }

    /// The scheduled close: every period whose end plus the grace delay has passed and that has
    /// something to bill, oldest first. Returns how many invoices were issued.
    pub async fn close_due(&self, now: i64) -> Result<usize, CloseError> {
        let settings = &self.settings;
        let latest_due = {
            let current = settings.period.start_of(now - settings.close_after_micros);
            settings.period.previous(current)
        };
        let totals = Totals::of(&self.usage.snapshot());
        let mut candidates: BTreeSet<i64> = totals
            .usage
            .values()
            .flat_map(|periods| periods.keys().copied())
            .filter(|start| *start <= latest_due)
            .collect();
        let _ = candidates.insert(latest_due);
        let mut issued = 0;
        for start in candidates {
            let pending = totals
                .tenants_to_bill(start, |t| self.invoices.billed(t))
                .into_iter()
                .any(|t| !self.invoices.is_invoiced(&t, start));
            if pending {
                let before = self.invoices.list(None).len();
                let _ = self.close(start).await?;
                issued += self.invoices.list(None).len() - before;
            }
        }
        Ok(issued)
    }
}

/// The envelope an invoice travels in: keyed and identified by the invoice id.
pub fn invoice_envelope(
    tenant: &str,
    invoice: &Invoice,
    attributes: &Map,
    service: &str,
) -> Envelope {
    let body = Body::Invoice(invoice.clone());
    Envelope {
        event_id: invoice.invoice_id.clone(),
        event_time: invoice.period_end,
        ingest_time: invoice.issued_at,
        tenant_id: tenant.to_owned(),
        source: Source {
            kind: "invoicer".to_owned(),
            id: service.to_owned(),
        },
        schema_name: body.schema_name().to_owned(),
        schema_version: 1,
        attributes: attributes.clone(),
        tags: Map::new(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{MeterPrice, TierMode};
    use crate::usage::Metered;

    const MINUTE: i64 = 60_000_000;

    fn price(included: u64, unit: i64) -> MeterPrice {
        MeterPrice {
            included,
            per: 1,
            unit_price_micros: unit,
            mode: TierMode::Graduated,
            tiers: Vec::new(),
        }
    }

    fn plan() -> Plan {
        Plan {
            events: price(10, 1000),
            ingest_bytes: price(0, 1),
            spans: price(0, 500),
            metric_series: price(1, 10_000),
        }
    }

    fn states() -> Vec<Arc<PartitionState>> {
        let mut p0 = PartitionState::new(0);
        let mut p1 = PartitionState::new(1);
        for _ in 0..8 {
            p0.add("acme", 0, &Metered::Event { bytes: 100 });
            p1.add("acme", 0, &Metered::Event { bytes: 100 });
        }
        p1.add("acme", 0, &Metered::Span { bytes: 50 });
        for series in ["h1/cpu", "h2/cpu"] {
            p0.add(
                "acme",
                0,
                &Metered::Sample {
                    bytes: 10,
                    series: series.into(),
                },
            );
            p1.add(
                "acme",
                0,
                &Metered::Sample {
                    bytes: 10,
                    series: series.into(),
                },
            );
        }
        p0.add("beta", MINUTE, &Metered::Event { bytes: 1 });
        p0.next_offset = 18;
        p1.next_offset = 19;
        vec![Arc::new(p0), Arc::new(p1)]
    }

    fn invoice(totals: &Totals, billed: &Billed, start: i64) -> Option<(Invoice, Map)> {
        let plan = plan();
        build_invoice(&InvoiceInput {
            tenant: "acme",
            plan_name: "paid",
            plan: &plan,
            currency: "EUR",
            period: Period::Fixed(MINUTE),
            period_start: start,
            usage: totals.usage.get("acme").expect("usage"),
            billed,
            cut: &totals.cut,
            issued_at: 5,
        })
    }

    #[test]
    fn totals_merge_partitions_and_record_the_cut() {
        let totals = Totals::of(&states());
        let acme = &totals.usage["acme"][&0];
        assert_eq!((acme.events, acme.spans, acme.ingest_bytes), (16, 1, 1690));
        assert_eq!(acme.series.len(), 2);
        assert_eq!(totals.cut, BTreeMap::from([(0, 18), (1, 19)]));
        assert_eq!(totals.tenants_to_bill(0, |_| Billed::new()), vec!["acme"]);
        assert_eq!(
            totals.tenants_to_bill(MINUTE, |_| Billed::new()),
            vec!["acme", "beta"]
        );
    }

    #[test]
    fn an_invoice_prices_the_period_and_records_what_it_billed() {
        let totals = Totals::of(&states());
        let (invoice, attributes) = invoice(&totals, &Billed::new(), 0).expect("an invoice");
        assert_eq!(invoice.invoice_id, "inv-acme-19700101T000000");
        assert_eq!((invoice.period_start, invoice.period_end), (0, MINUTE));
        assert_eq!(
            (invoice.plan.as_str(), invoice.currency.as_str()),
            ("paid", "EUR")
        );
        // events: 10 free + 6 × 1000; bytes: 1690 × 1; spans: 1 × 500; series: 1 free + 1 × 10000
        assert_eq!(invoice.total_micros, 6000 + 1690 + 500 + 10_000);
        assert_eq!(invoice.subtotal_micros, invoice.total_micros);
        let sum: i64 = invoice.lines.iter().map(|l| l.amount_micros).sum();
        assert_eq!(sum, invoice.total_micros);
        assert_eq!(attributes["cut.p0"], "18");
        assert_eq!(attributes["cut.p1"], "19");
        assert_eq!(attributes["billed.0.events"], "16");
        assert_eq!(attributes["billed.0.metric_series"], "2");
        assert_eq!(attributes["period"], "60s");
    }

    #[test]
    fn late_usage_becomes_adjustment_lines_on_the_next_invoice() {
        let mut states = states();
        let billed: Billed = BTreeMap::from([(
            0,
            Meter::ALL
                .into_iter()
                .map(|m| (m, Totals::of(&states).usage["acme"][&0].quantity(m)))
                .collect(),
        )]);
        let mut p0 = (*states[0]).clone();
        p0.add("acme", 0, &Metered::Event { bytes: 7 });
        p0.add("acme", 0, &Metered::Event { bytes: 7 });
        p0.add("acme", MINUTE, &Metered::Event { bytes: 3 });
        states[0] = Arc::new(p0);
        let totals = Totals::of(&states);
        // Closing the late period again yields nothing new for it: already billed up to the cut
        // of the first invoice, the rest is for the next one.
        let (next, attributes) = invoice(&totals, &billed, MINUTE).expect("next invoice");
        let kinds: Vec<&str> = next.lines.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "adjustment.events",
                "adjustment.ingest_bytes",
                "events",
                "ingest_bytes"
            ]
        );
        let late = &next.lines[0];
        assert_eq!((late.quantity, late.amount_micros), (2, 2000));
        assert!(
            late.description.contains("1970-01-01T00:00:00Z"),
            "{}",
            late.description
        );
        assert_eq!(next.lines[1].amount_micros, 14);
        assert_eq!(attributes["billed.0.events"], "18");
        assert_eq!(attributes["billed.60000000.events"], "1");
        // Once billed, the late events are not billed a third time.
        let mut billed = billed;
        let _ = billed
            .get_mut(&0)
            .expect("period 0")
            .insert(Meter::Events, 18);
        let _ = billed
            .get_mut(&0)
            .expect("period 0")
            .insert(Meter::IngestBytes, 1704);
        let (again, _) = invoice(&totals, &billed, MINUTE).expect("invoice");
        assert!(
            again
                .lines
                .iter()
                .all(|l| !l.kind.starts_with("adjustment"))
        );
    }

    #[test]
    fn nothing_to_bill_is_no_invoice() {
        let totals = Totals::of(&states());
        let billed: Billed =
            BTreeMap::from([(0, Meter::ALL.into_iter().map(|m| (m, 1_000_000)).collect())]);
        assert!(invoice(&totals, &billed, 0).is_none());
    }
}
