//! The price book: per plan and meter, a free allowance, a price per unit and optional volume
//! tiers. Amounts are integers in micros of the invoice currency.
//!
//! Rounding: each line's amount is `quantity × price / per`, rounded half up to a whole micro,
//! once per line; the subtotal is the sum of the lines, so lines always add up to the total.

use std::collections::BTreeMap;

use serde::Deserialize;
use ve_schema::InvoiceLine;

/// How tiers apply to a quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierMode {
    /// Each tier prices the units that fall in it (a tax-bracket schedule).
    #[default]
    Graduated,
    /// The tier the total falls in prices every billable unit.
    Volume,
}

/// One tier: units up to `up_to` (of the period's total, allowance included) cost
/// `unit_price_micros` per `per` units. The last tier has no `up_to`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(default)]
    pub up_to: Option<u64>,
    pub unit_price_micros: i64,
}

/// The price of one meter in one plan.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterPrice {
    /// Units free in every period.
    #[serde(default)]
    pub included: u64,
    /// Prices are per this many units (e.g. 1000 events, 1000000 bytes).
    #[serde(default = "one")]
    pub per: u64,
    /// Price per `per` units beyond the allowance, when there are no tiers.
    #[serde(default)]
    pub unit_price_micros: i64,
    #[serde(default)]
    pub mode: TierMode,
    /// When not empty, replaces `unit_price_micros`.
    #[serde(default)]
    pub tiers: Vec<Tier>,
}

fn one() -> u64 {
    1
}

/// A plan's prices, one per meter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub events: MeterPrice,
    pub ingest_bytes: MeterPrice,
    pub spans: MeterPrice,
    pub metric_series: MeterPrice,
}

impl Plan {
    pub fn price(&self, meter: Meter) -> &MeterPrice {
        match meter {
            Meter::Events => &self.events,
            Meter::IngestBytes => &self.ingest_bytes,
            Meter::Spans => &self.spans,
            Meter::MetricSeries => &self.metric_series,
        }
    }

    pub fn validate(&self, name: &str) -> Result<(), String> {
        Meter::ALL.iter().try_for_each(|m| {
            self.price(*m)
                .validate()
                .map_err(|e| format!("billing.plans.{name}.{}: {e}", m.name()))
        })
    }
}

/// What is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Meter {
    /// Every event except spans and metric samples (priced by their own meters).
    Events,
    /// Size of every event as the gateway accepted it.
    IngestBytes,
    Spans,
    /// Distinct metric series (`host/metric`) that sent at least one sample in the period.
    MetricSeries,
}

impl Meter {
    pub const ALL: [Self; 4] = [
        Self::Events,
        Self::IngestBytes,
        Self::Spans,
        Self::MetricSeries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::IngestBytes => "ingest_bytes",
            Self::Spans => "spans",
            Self::MetricSeries => "metric_series",
        }
    }
}

/// A run of units priced alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    /// First unit of the band (1-based) and the last one.
    pub first: u64,
    pub last: u64,
    pub unit_price_micros: i64,
    pub amount_micros: i64,
    pub included: bool,
}

impl Band {
    pub fn quantity(&self) -> u64 {
        self.last + 1 - self.first
    }
}

/// `quantity × price / per`, rounded half up.
pub fn amount(quantity: u64, unit_price_micros: i64, per: u64) -> i64 {
    let numerator = i128::from(quantity) * i128::from(unit_price_micros);
    let per = i128::from(per.max(1));
    numerator
        .checked_mul(2)
        .and_then(|n| n.checked_add(per))
        .map_or(i64::MAX, |n| {
            i64::try_from(n.div_euclid(2 * per)).unwrap_or(i64::MAX)
        })
}

impl MeterPrice {
    fn validate(&self) -> Result<(), String> {
        if self.per == 0 {
            return Err("per must be at least 1".into());
        }
        if self.unit_price_micros < 0 || self.tiers.iter().any(|t| t.unit_price_micros < 0) {
            return Err("prices cannot be negative".into());
        }
        let mut previous = 0;
        for (i, tier) in self.tiers.iter().enumerate() {
            match tier.up_to {
                Some(up_to) if up_to <= previous => {
                    return Err(format!("tier {i}: up_to must grow from tier to tier"));
                }
                Some(up_to) => previous = up_to,
                None if i + 1 != self.tiers.len() => {
                    return Err(format!("tier {i}: only the last tier may omit up_to"));
                }
                None => {}
            }
        }
        if self.tiers.last().is_some_and(|t| t.up_to.is_some()) {
            return Err(
                "the last tier must omit up_to (units above it would have no price)".into(),
            );
        }
        Ok(())
    }

    /// The schedule: (last unit covered or unbounded, price), allowance first at price 0.
    fn schedule(&self) -> Vec<(Option<u64>, i64)> {
        let mut schedule = Vec::new();
        if self.included > 0 {
            schedule.push((Some(self.included), 0));
        }
        if self.tiers.is_empty() {
            schedule.push((None, self.unit_price_micros));
        } else {
            schedule.extend(
                self.tiers
                    .iter()
                    .filter(|t| t.up_to.is_none_or(|u| u > self.included))
                    .map(|t| (t.up_to, t.unit_price_micros)),
            );
        }
        schedule
    }

    /// How `quantity` units are priced, band by band (empty for 0 units).
    pub fn bands(&self, quantity: u64) -> Vec<Band> {
        let mut bands = Vec::new();
        let mut below = 0;
        let schedule = self.schedule();
        for (i, (up_to, price)) in schedule.iter().enumerate() {
            if below >= quantity {
                break;
            }
            let top = up_to.map_or(quantity, |u| u.min(quantity));
            let is_allowance = self.included > 0 && i == 0;
            if self.mode == TierMode::Volume && !is_allowance {
                // The tier holding the last unit prices every billable unit.
                let price = schedule[i..]
                    .iter()
                    .find(|(u, _)| u.is_none_or(|u| u >= quantity))
                    .map_or(*price, |(_, p)| *p);
                bands.push(self.band(below + 1, quantity, price, false));
                break;
            }
            bands.push(self.band(below + 1, top, *price, is_allowance));
            below = top;
        }
        bands
    }

    fn band(&self, first: u64, last: u64, price: i64, included: bool) -> Band {
        Band {
            first,
            last,
            unit_price_micros: price,
            amount_micros: amount(last + 1 - first, price, self.per),
            included,
        }
    }

    /// What `quantity` units cost in one period.
    pub fn charge(&self, quantity: u64) -> i64 {
        self.bands(quantity).iter().map(|b| b.amount_micros).sum()
    }

    /// The invoice lines of `quantity` units of `meter`.
    pub fn lines(&self, meter: Meter, quantity: u64) -> Vec<InvoiceLine> {
        self.bands(quantity)
            .into_iter()
            .map(|band| InvoiceLine {
                kind: meter.name().to_owned(),
                description: if band.included {
                    format!(
                        "{} {}-{} included in the plan",
                        meter.name(),
                        band.first,
                        band.last
                    )
                } else {
                    format!(
                        "{} {}-{} at {} micros per {}",
                        meter.name(),
                        band.first,
                        band.last,
                        band.unit_price_micros,
                        self.per
                    )
                },
                quantity: i64::try_from(band.quantity()).unwrap_or(i64::MAX),
                unit_price_micros: band.unit_price_micros,
                amount_micros: band.amount_micros,
            })
            .collect()
    }

    /// The line for `billed → now` units of `meter` of an already invoiced period: the difference
    /// between what the period costs now and what was charged, so allowance and tiers apply as if
    /// the late units had been on the first invoice. Its unit price is the one of the band the
    /// new total ends in (informative; the amount is authoritative). May be negative in volume
    /// mode when the late units move the period into a cheaper tier.
    pub fn adjustment(
        &self,
        meter: Meter,
        period: &str,
        billed: u64,
        now: u64,
    ) -> Option<InvoiceLine> {
        if now <= billed {
            return None;
        }
        let unit_price_micros = self.bands(now).last().map_or(0, |b| b.unit_price_micros);
        Some(InvoiceLine {
            kind: format!("adjustment.{}", meter.name()),
            description: format!(
                "adjustment for period {period}: {} {} metered after its invoice (billed {billed}, now {now})",
                now - billed,
                meter.name()
            ),
            quantity: i64::try_from(now - billed).unwrap_or(i64::MAX),
            unit_price_micros,
            amount_micros: self.charge(now) - self.charge(billed),
        })
    }
}

/// The price book: plans by name, as the tenant record's `plan` names them.
pub type PriceBook = BTreeMap<String, Plan>;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tiered(mode: TierMode) -> MeterPrice {
        MeterPrice {
            included: 1000,
            per: 1000,
            unit_price_micros: 0,
            mode,
            tiers: vec![
                Tier {
                    up_to: Some(10_000),
                    unit_price_micros: 500_000,
                },
                Tier {
                    up_to: Some(100_000),
                    unit_price_micros: 200_000,
                },
                Tier {
                    up_to: None,
                    unit_price_micros: 100_000,
                },
            ],
        }
    }

    #[test]
    fn rounding_is_half_up_per_line() {
        assert_eq!(amount(1, 1, 2), 1, "0.5 rounds up");
        assert_eq!(amount(1, 1, 3), 0, "0.33 rounds down");
        assert_eq!(amount(2, 1, 3), 1, "0.67 rounds up");
        assert_eq!(amount(3, 333_333, 1), 999_999);
        assert_eq!(amount(u64::MAX, i64::MAX, 1), i64::MAX, "saturates");
    }

    #[test]
    fn allowance_is_free_then_the_unit_price_applies() {
        let price = MeterPrice {
            included: 100,
            per: 1,
            unit_price_micros: 250,
            mode: TierMode::Graduated,
            tiers: Vec::new(),
        };
        assert_eq!(price.charge(0), 0);
        assert!(price.bands(0).is_empty());
        assert_eq!(price.charge(100), 0);
        assert_eq!(price.charge(101), 250);
        let lines = price.lines(Meter::Events, 150);
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].quantity, lines[0].amount_micros), (100, 0));
        assert_eq!((lines[1].quantity, lines[1].amount_micros), (50, 12_500));
        assert_eq!(lines[1].description, "events 101-150 at 250 micros per 1");
    }

    #[test]
    fn graduated_tiers_price_each_band() {
        let price = tiered(TierMode::Graduated);
        // 1000 free, 9000 at 0.5/1000, 90000 at 0.2/1000, 50000 at 0.1/1000
        let bands = price.bands(150_000);
        let got: Vec<(u64, u64, i64)> = bands
            .iter()
            .map(|b| (b.first, b.last, b.amount_micros))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1000, 0),
                (1001, 10_000, 4_500_000),
                (10_001, 100_000, 18_000_000),
                (100_001, 150_000, 5_000_000)
            ]
        );
        assert_eq!(price.charge(150_000), 27_500_000);
    }

    #[test]
    fn volume_tiers_price_every_billable_unit_at_the_reached_tier() {
        let price = tiered(TierMode::Volume);
        assert_eq!(price.charge(1000), 0);
        // 149000 billable units, all at the last tier's 0.1 per 1000.
        assert_eq!(price.charge(150_000), 14_900_000);
        assert_eq!(
            price.charge(10_000),
            4_500_000,
            "the boundary unit is in tier 1"
        );
        assert_eq!(price.charge(10_001), 1_800_200);
    }

    #[test]
    fn late_units_are_charged_as_the_difference() {
        let price = tiered(TierMode::Graduated);
        let line = price
            .adjustment(Meter::Events, "2026-11-01T00:00:00Z", 9_000, 11_000)
            .expect("a line");
        assert_eq!(line.kind, "adjustment.events");
        assert_eq!(line.quantity, 2000);
        // 1000 units at 0.5 + 1000 at 0.2 per 1000.
        assert_eq!(line.amount_micros, 700_000);
        assert!(price.adjustment(Meter::Events, "p", 5, 5).is_none());
        // Late units still within the allowance: an adjustment line of 0.
        let free = price
            .adjustment(Meter::Events, "p", 10, 20)
            .expect("a line");
        assert_eq!(free.amount_micros, 0);
    }

    #[test]
    fn bad_price_books_are_refused() {
        let mut price = tiered(TierMode::Graduated);
        assert!(price.validate().is_ok());
        price.tiers[1].up_to = Some(5);
        assert!(price.validate().unwrap_err().contains("grow"));
        let mut price = tiered(TierMode::Graduated);
        price.tiers[2].up_to = Some(1_000_000);
        assert!(price.validate().unwrap_err().contains("last tier"));
        let mut price = tiered(TierMode::Graduated);
        price.per = 0;
        assert!(price.validate().is_err());
        price.per = 1;
        price.unit_price_micros = -1;
        assert!(price.validate().is_err());
    }

    fn any_price() -> impl Strategy<Value = MeterPrice> {
        (
            0u64..5000,
            1u64..2000,
            0i64..1_000_000,
            prop::collection::vec((1u64..50_000, 0i64..1_000_000), 0..4),
            any::<bool>(),
        )
            .prop_map(|(included, per, unit_price_micros, steps, volume)| {
                let mut up_to = 0;
                let mut tiers: Vec<Tier> = steps
                    .into_iter()
                    .map(|(step, unit_price_micros)| {
                        up_to += step;
                        Tier {
                            up_to: Some(up_to),
                            unit_price_micros,
                        }
                    })
                    .collect();
                if let Some(last) = tiers.last_mut() {
                    last.up_to = None;
                }
                MeterPrice {
                    included,
                    per,
                    unit_price_micros,
                    mode: if volume {
                        TierMode::Volume
                    } else {
                        TierMode::Graduated
                    },
                    tiers,
                }
            })
    }

    proptest! {
        #[test]
        fn bands_cover_every_unit_once_and_lines_add_up(price in any_price(), quantity in 0u64..300_000) {
            prop_assert!(price.validate().is_ok());
            let bands = price.bands(quantity);
            let mut next = 1;
            for band in &bands {
                prop_assert_eq!(band.first, next);
                prop_assert!(band.last >= band.first);
                next = band.last + 1;
            }
            prop_assert_eq!(next - 1, quantity);
            let lines = price.lines(Meter::Events, quantity);
            let total: i64 = lines.iter().map(|l| l.amount_micros).sum();
            prop_assert_eq!(total, price.charge(quantity));
            let units: i64 = lines.iter().map(|l| l.quantity).sum();
            prop_assert_eq!(units, quantity as i64);
        }

        #[test]
        fn the_allowance_is_free(price in any_price(), quantity in 0u64..5000) {
            if quantity <= price.included {
                prop_assert_eq!(price.charge(quantity), 0);
            }
        }

        #[test]
        fn graduated_charges_never_shrink_and_adjustments_make_up_the_difference(
            mut price in any_price(), billed in 0u64..200_000, late in 0u64..100_000,
        ) {
            price.mode = TierMode::Graduated;
            let now = billed + late;
            prop_assert!(price.charge(now) >= price.charge(billed));
            let adjusted = price.charge(billed)
                + price.adjustment(Meter::Spans, "p", billed, now).map_or(0, |l| l.amount_micros);
            prop_assert_eq!(adjusted, price.charge(now));
        }
    }
}
