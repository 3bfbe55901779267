//! Rule evaluation: pure state machines, no IO. Events and clock ticks go in, alert transitions
//! (`firing` / `resolved`) come out. The caller owns the clock (`now`, wall-clock UTC micros), so
//! tests drive time by hand.
//!
//! Clocks: threshold rules and rate windows run on the events' own time (`event_time`), so a
//! replay evaluates exactly as the live stream did. Absence runs on the wall clock (arrival): a
//! silent source has no event time to look at. Rate windows are closed either by an event of a
//! later window of the same series, or by the wall-clock tick once the window's end and the
//! series' last arrival are both `rate_close_grace` in the past, so a backlog being replayed is
//! never cut into windows by the wall clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use ve_schema::{Alert, Body, Envelope};

use crate::rule::{Kind, MICROS, Rule, group_value};

pub const FIRING: &str = "firing";
pub const RESOLVED: &str = "resolved";

/// Drop reasons of `rules_events_dropped_total`.
pub const DROP_REASONS: [&str; 2] = ["late", "series_limit"];

/// Bounds on what the engine keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Series kept per rule (pending, firing, counting or watched for silence); events of new
    /// series beyond it are dropped and counted.
    pub max_series_per_rule: usize,
    /// How long after a rate window's end (and the series' last event) the tick closes it.
    pub rate_close_grace_micros: i64,
}

/// One alert state change, ready to publish on `ops.alert.v1` under `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub tenant: String,
    /// `{tenant}/{rule_id}/{series}`.
    pub key: String,
    pub alert: Alert,
}

impl Transition {
    /// The alert's event id: the same transition evaluated again (a replay after a crash) is the
    /// same event, so the compacted topic and the ClickHouse table see one alert, not two.
    pub fn event_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.key.as_bytes(),
            self.alert.state.as_bytes(),
            &self.alert.started_at.to_be_bytes(),
        ] {
            hasher.update(part);
            // Separators keep ("ab","c") and ("a","bc") apart.
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    /// The transition's own time: when it fired, or when it resolved (never before it fired, so
    /// the latest state also has the latest time).
    pub fn event_time(&self) -> i64 {
        self.alert
            .resolved_at
            .map_or(self.alert.started_at, |r| r.max(self.alert.started_at))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Firing {
    started_at: i64,
    /// The value that made it fire.
    value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: i64,
    count: u64,
}

#[derive(Debug, Default)]
struct Series {
    labels: Vec<(String, String)>,
    firing: Option<Firing>,
    /// Threshold: event time of the first sample of the current run satisfying the condition.
    pending_since: Option<i64>,
    /// Rate: the open window.
    window: Option<Window>,
    /// Wall-clock time of the latest matching event (0: none since start).
    last_arrival: i64,
}

#[derive(Debug)]
struct ActiveRule {
    tenant: String,
    rule: Arc<Rule>,
    series: HashMap<String, Series>,
    limit_warned: bool,
}

/// Everything the engine dropped, cumulative (also counted in `rules_events_dropped_total`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub late: u64,
    pub series_limit: u64,
}

/// Sizes for the gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub rules: usize,
    pub series: usize,
    pub firing: usize,
}

/// The state of every enabled rule of every tenant.
#[derive(Debug)]
pub struct Engine {
    limits: Limits,
    /// Enabled rules by `{tenant}/{rule_id}`.
    rules: BTreeMap<String, ActiveRule>,
    /// Rule keys per tenant, so an event only visits its tenant's rules.
    by_tenant: HashMap<String, Vec<String>>,
    dropped: Dropped,
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            rules: BTreeMap::new(),
            by_tenant: HashMap::new(),
            dropped: Dropped::default(),
        }
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    pub fn census(&self) -> Census {
        let mut census = Census {
            rules: self.rules.len(),
            ..Census::default()
        };
        for active in self.rules.values() {
            census.series += active.series.len();
            census.firing += active
                .series
                .values()
                .filter(|s| s.firing.is_some())
                .count();
        }
        census
    }

    /// Brings the rule set in line with `rules` (the whole control table, keyed
    /// `{tenant}/{rule_id}`): new rules start empty, deleted or disabled ones resolve what they
    /// had firing, a rule whose series no longer mean the same (kind, target, grouping changed)
    /// resolves and starts over, any other change keeps its state.
    pub fn sync(&mut self, rules: &[(String, Arc<Rule>)], now: i64, out: &mut Vec<Transition>) {
        let mut changed = false;
        let incoming: HashMap<&str, &Arc<Rule>> =
            rules.iter().map(|(k, r)| (k.as_str(), r)).collect();
        let gone: Vec<String> = self
            .rules
            .keys()
            .filter(|k| incoming.get(k.as_str()).is_none_or(|r| !r.enabled))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut active) = self.rules.remove(&key) {
                let reason = if incoming.contains_key(key.as_str()) {
                    "rule disabled"
                } else {
                    "rule deleted"
                };
                active.resolve_all(now, reason, out);
                changed = true;
            }
        }
        for (key, rule) in rules.iter().filter(|(_, r)| r.enabled) {
            match self.rules.get_mut(key) {
                Some(active) if Arc::ptr_eq(&active.rule, rule) => {}
                Some(active) => {
                    if !active.rule.same_series(rule) {
                        active.resolve_all(now, "rule changed", out);
                        active.series.clear();
                    }
                    active.rule = Arc::clone(rule);
                }
                None => {
                    let Some((tenant, _)) = key.split_once('/') else {
                        tracing::warn!(key = %key, "rule key is not {{tenant}}/{{rule_id}}; ignored");
                        continue;
                    };
                    let _ = self.rules.insert(
                        key.clone(),
                        ActiveRule {
                            tenant: tenant.to_owned(),
                            rule: Arc::clone(rule),
                            series: HashMap::new(),
                            limit_warned: false,
                        },
                    );
                    changed = true;
                }
            }
        }
        if changed {
            self.by_tenant.clear();
            for (key, active) in &self.rules {
                self.by_tenant
                    .entry(active.tenant.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
    }

    /// Takes back an alert read from `ops.alert.v1` at start (`key` = `{tenant}/{rule_id}/{series}`):
    /// a firing one of a rule that still exists in the same shape keeps firing with its
    /// `started_at`; one whose rule is gone, disabled or reshaped is resolved. Call after the
    /// first [`Engine::sync`].
    pub fn restore(&mut self, key: &str, alert: &Alert, now: i64, out: &mut Vec<Transition>) {
        if alert.state != FIRING {
            return;
        }
        let mut parts = key.splitn(3, '/');
        let (Some(tenant), Some(_), Some(series_key)) = (parts.next(), parts.next(), parts.next())
        else {
            tracing::warn!(
                key,
                "alert key is not {{tenant}}/{{rule_id}}/{{series}}; ignored"
            );
            return;
        };
        let rule_key = format!("{tenant}/{}", alert.rule_id);
        let reshaped = |active: &ActiveRule| {
            let labels = labels_from(&active.rule, |name| {
                alert.labels.get(name).map_or("", String::as_str)
            });
            let same = series_name(&labels) == series_key
                && alert.labels.get("kind").map(String::as_str) == Some(active.rule.kind.as_str());
            (!same).then_some(labels)
        };
        match self.rules.get_mut(&rule_key) {
            Some(active) if reshaped(active).is_none() => {
                let labels = labels_from(&active.rule, |name| {
                    alert.labels.get(name).map_or("", String::as_str)
                });
                let window = (active.rule.kind == Kind::Rate).then(|| Window {
                    start: window_start(now, active.rule.for_micros),
                    count: 0,
                });
                let _ = active.series.insert(
                    series_key.to_owned(),
                    Series {
                        labels,
                        firing: Some(Firing {
                            started_at: alert.started_at,
                            value: alert.value,
                        }),
                        pending_since: None,
                        window,
                        last_arrival: 0,
                    },
                );
            }
            found => {
                let reason = if found.is_some() {
                    "rule changed"
                } else {
                    "rule deleted or disabled"
                };
                let name = alert.labels.get("rule").unwrap_or(&alert.rule_id);
                let mut resolved = alert.clone();
                resolved.state = RESOLVED.into();
                resolved.resolved_at = Some(now.max(alert.started_at));
                resolved.message = format!("{name}: {reason}");
                out.push(Transition {
                    tenant: tenant.to_owned(),
                    key: key.to_owned(),
                    alert: resolved,
                });
            }
        }
    }

    /// Evaluates one event (arrived at wall-clock `now`) against its tenant's rules.
    pub fn observe(&mut self, envelope: &Envelope, now: i64, out: &mut Vec<Transition>) {
        let Some(keys) = self.by_tenant.get(&envelope.tenant_id) else {
            return;
        };
        for key in keys {
            let Some(active) = self.rules.get_mut(key) else {
                continue;
            };
            if active.rule.target.matches(envelope) {
                active.observe(envelope, now, self.limits, &mut self.dropped, out);
            }
        }
    }

    /// Wall-clock work: absence checks and closing idle rate windows.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Transition>) {
        for active in self.rules.values_mut() {
            match active.rule.kind {
                Kind::Threshold => {}
                Kind::Rate => active.tick_rate(now, self.limits.rate_close_grace_micros, out),
                Kind::Absence => active.tick_absence(now, out),
            }
        }
    }
}

/// Start of the `width`-wide window (aligned to the epoch) holding `t`.
fn window_start(t: i64, width: i64) -> i64 {
    t - t.rem_euclid(width.max(1))
}

fn labels_from<'a>(rule: &Rule, value: impl Fn(&str) -> &'a str) -> Vec<(String, String)> {
    rule.group_by
        .iter()
        .map(|name| (name.clone(), value(name).to_owned()))
        .collect()
}

/// `host=web-1,env=prod`; `all` for a rule without grouping.
fn series_name(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return "all".into();
    }
    let mut name = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        let _ = write!(name, "{k}={v}");
    }
    name
}

impl ActiveRule {
    fn observe(
        &mut self,
        envelope: &Envelope,
        now: i64,
        limits: Limits,
        dropped: &mut Dropped,
        out: &mut Vec<Transition>,
    ) {
        let labels = labels_from(&self.rule, |name| group_value(envelope, name));
        let series_key = series_name(&labels);
        let t = envelope.event_time;
        let rule = Arc::clone(&self.rule);
        match rule.kind {
            Kind::Threshold => {
                let value = match &envelope.body {
                    Body::Metric(sample) => sample.value,
                    _ => return,
                };
                let holds = rule.op.holds(value, rule.threshold);
                if !holds {
                    // Only pending or firing series are kept: a satisfied-then-cleared series
                    // needs no memory.
                    if let Some(series) = self.series.remove(&series_key)
                        && let Some(firing) = series.firing
                    {
                        let message = format!(
                            "{}: {} = {value}, no longer {} {} ({series_key})",
                            rule.name,
                            target_name(&rule),
                            rule.op.as_str(),
                            rule.threshold
                        );
                        out.push(self.resolved(&series_key, &series, firing, value, t, message));
                    }
                    return;
                }
                let Some(series) = self.admit(&series_key, labels, limits, dropped) else {
                    return;
                };
                if series.firing.is_some() {
                    return;
                }
                let since = *series.pending_since.get_or_insert(t);
                if t.saturating_sub(since) >= rule.for_micros {
                    series.firing = Some(Firing {
                        started_at: t,
                        value,
                    });
                    series.pending_since = None;
                    let message = format!(
                        "{}: {} = {value} {} {} for {}s ({series_key})",
                        rule.name,
                        target_name(&rule),
                        rule.op.as_str(),
                        rule.threshold,
                        rule.for_seconds()
                    );
                    let transition = self.fired(&series_key, value, t, message);
                    out.push(transition);
                }
            }
            Kind::Rate => {
                let width = rule.for_micros.max(1);
                let start = window_start(t, width);
                let Some(series) = self.admit(&series_key, labels, limits, dropped) else {
                    return;
                };
                series.last_arrival = now;
                let mut closed = Vec::new();
                match series.window {
                    None => series.window = Some(Window { start, count: 0 }),
                    Some(open) if start < open.start => {
                        dropped.late += 1;
                        metrics::counter!("rules_events_dropped_total", "reason" => "late")
                            .increment(1);
                        return;
                    }
                    Some(open) if start > open.start => {
                        closed.push(open);
                        if start > open.start + width {
                            // The windows in between saw nothing.
                            closed.push(Window {
                                start: open.start + width,
                                count: 0,
                            });
                        }
                        series.window = Some(Window { start, count: 0 });
                    }
                    Some(_) => {}
                }
                for window in closed {
                    self.close_window(&series_key, window, out);
                }
                let Some(series) = self.series.get_mut(&series_key) else {
                    return;
                };
                let Some(window) = series.window.as_mut() else {
                    return;
                };
                window.count += 1;
                let count = window.count as f64;
                if series.firing.is_none()
                    && rule.op.monotonic_up()
                    && rule.op.holds(count, rule.threshold)
                {
                    series.firing = Some(Firing {
                        started_at: t,
                        value: count,
                    });
                    let message = rate_message(&rule, count, &series_key, true);
                    let transition = self.fired(&series_key, count, t, message);
                    out.push(transition);
                }
            }
            Kind::Absence => {
                let Some(series) = self.admit(&series_key, labels, limits, dropped) else {
                    return;
                };
                series.last_arrival = now;
                if let Some(firing) = series.firing.take() {
                    let silent_since = firing.started_at - (firing.value * MICROS as f64) as i64;
                    let silence = (now - silent_since) as f64 / MICROS as f64;
                    let message = format!(
                        "{}: {} seen again after {silence:.0}s of silence ({series_key})",
                        rule.name,
                        target_name(&rule)
                    );
                    let resolved_at = now.max(firing.started_at);
                    if let Some(series) = self.series.get(&series_key) {
                        let transition = self.resolved(
                            &series_key,
                            series,
                            firing,
                            silence,
                            resolved_at,
                            message,
                        );
                        out.push(transition);
                    }
                }
            }
        }
    }

    /// The series, created if the rule has room for it.
    fn admit(
        &mut self,
        key: &str,
        labels: Vec<(String, String)>,
        limits: Limits,
        dropped: &mut Dropped,
    ) -> Option<&mut Series> {
        if !self.series.contains_key(key) {
            if self.series.len() >= limits.max_series_per_rule {
                dropped.series_limit += 1;
                metrics::counter!("rules_events_dropped_total", "reason" => "series_limit")
                    .increment(1);
                if !self.limit_warned {
                    self.limit_warned = true;
                    tracing::warn!(
                        tenant = %self.tenant,
                        rule = %self.rule.rule_id,
                        max = limits.max_series_per_rule,
                        "rule has reached its series limit; events of new series are dropped"
                    );
                }
                return None;
            }
            let _ = self.series.insert(
                key.to_owned(),
                Series {
                    labels,
                    ..Series::default()
                },
            );
        }
        self.series.get_mut(key)
    }

    fn close_window(&mut self, series_key: &str, window: Window, out: &mut Vec<Transition>) {
        let rule = Arc::clone(&self.rule);
        let Some(series) = self.series.get_mut(series_key) else {
            return;
        };
        let count = window.count as f64;
        let end = window.start + rule.for_micros.max(1);
        let holds = rule.op.holds(count, rule.threshold);
        match series.firing {
            None if holds => {
                series.firing = Some(Firing {
                    started_at: end,
                    value: count,
                });
                let message = rate_message(&rule, count, series_key, true);
                let transition = self.fired(series_key, count, end, message);
                out.push(transition);
            }
            Some(firing) if !holds => {
                series.firing = None;
                let message = rate_message(&rule, count, series_key, false);
                if let Some(series) = self.series.get(series_key) {
                    let transition = self.resolved(
                        series_key,
                        series,
                        firing,
                        count,
                        end.max(firing.started_at),
                        message,
                    );
                    out.push(transition);
                }
            }
            _ => {}
        }
    }

    fn tick_rate(&mut self, now: i64, grace: i64, out: &mut Vec<Transition>) {
        let rule = Arc::clone(&self.rule);
        let width = rule.for_micros.max(1);
        let keys: Vec<String> = self.series.keys().cloned().collect();
        for key in keys {
            while let Some(series) = self.series.get(&key) {
                let Some(window) = series.window else {
                    break;
                };
                let end = window.start + width;
                if end.saturating_add(grace) > now
                    || series.last_arrival.saturating_add(grace) > now
                {
                    break;
                }
                self.close_window(&key, window, out);
                let Some(series) = self.series.get_mut(&key) else {
                    break;
                };
                if window.count > 0 {
                    series.window = Some(Window {
                        start: end,
                        count: 0,
                    });
                    continue;
                }
                // An empty window closed: every later empty window would evaluate the same, so
                // either the series is done with, or it waits in the window of now.
                if series.firing.is_none() && !rule.op.holds(0.0, rule.threshold) {
                    let _ = self.series.remove(&key);
                } else {
                    series.window = Some(Window {
                        start: window_start(now - grace, width).max(end),
                        count: 0,
                    });
                }
                break;
            }
        }
    }

    fn tick_absence(&mut self, now: i64, out: &mut Vec<Transition>) {
        let rule = Arc::clone(&self.rule);
        let mut fired = Vec::new();
        for (key, series) in &mut self.series {
            // `last_arrival == 0`: restored at start and firing, or never seen in this process.
            if series.firing.is_some() || series.last_arrival == 0 {
                continue;
            }
            let silent = now - series.last_arrival;
            if silent >= rule.for_micros {
                let value = silent as f64 / MICROS as f64;
                series.firing = Some(Firing {
                    started_at: now,
                    value,
                });
                fired.push((key.clone(), value));
            }
        }
        for (key, value) in fired {
            let message = format!(
                "{}: no {} for {value:.0}s ({key})",
                rule.name,
                target_name(&rule)
            );
            let transition = self.fired(&key, value, now, message);
            out.push(transition);
        }
    }

    fn resolve_all(&mut self, now: i64, reason: &str, out: &mut Vec<Transition>) {
        let mut keys: Vec<&String> = self.series.keys().collect();
        keys.sort();
        for key in keys {
            let series = &self.series[key];
            if let Some(firing) = series.firing {
                let message = format!("{}: {reason}", self.rule.name);
                out.push(self.resolved(
                    key,
                    series,
                    firing,
                    firing.value,
                    now.max(firing.started_at),
                    message,
                ));
            }
        }
    }

    fn fired(&self, series_key: &str, value: f64, started_at: i64, message: String) -> Transition {
        let labels = self
            .series
            .get(series_key)
            .map(|s| s.labels.as_slice())
            .unwrap_or_default();
        self.transition(series_key, labels, FIRING, value, started_at, None, message)
    }

    fn resolved(
        &self,
        series_key: &str,
        series: &Series,
        firing: Firing,
        value: f64,
        resolved_at: i64,
        message: String,
    ) -> Transition {
        self.transition(
            series_key,
            &series.labels,
            RESOLVED,
            value,
            firing.started_at,
            Some(resolved_at),
            message,
        )
    }

    #[allow(clippy::too_many_arguments)] // one call per state; a struct would only rename them
    fn transition(
        &self,
        series_key: &str,
        series_labels: &[(String, String)],
        state: &str,
        value: f64,
        started_at: i64,
        resolved_at: Option<i64>,
        message: String,
    ) -> Transition {
        let rule = &self.rule;
        let mut labels: BTreeMap<String, String> = series_labels.iter().cloned().collect();
        let (target_kind, target) = rule.target.label();
        for (k, v) in [
            ("rule", rule.name.as_str()),
            ("rule_id", rule.rule_id.as_str()),
            ("kind", rule.kind.as_str()),
            (target_kind, target),
        ] {
            let _ = labels.insert(k.to_owned(), v.to_owned());
        }
        let threshold = match rule.kind {
            Kind::Absence => rule.for_seconds() as f64,
            Kind::Threshold | Kind::Rate => rule.threshold,
        };
        Transition {
            tenant: self.tenant.clone(),
            key: format!("{}/{}/{series_key}", self.tenant, rule.rule_id),
            alert: Alert {
                rule_id: rule.rule_id.clone(),
                series: series_key.to_owned(),
                state: state.to_owned(),
                value,
                threshold,
                started_at,
                resolved_at,
                message,
                labels,
            },
        }
    }
}

fn target_name(rule: &Rule) -> &str {
    rule.target.label().1
}

fn rate_message(rule: &Rule, count: f64, series_key: &str, firing: bool) -> String {
    let negation = if firing { "" } else { "no longer " };
    format!(
        "{}: {count} {} in {}s, {negation}{} {} ({series_key})",
        rule.name,
        target_name(rule),
        rule.for_seconds(),
        rule.op.as_str(),
        rule.threshold
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ve_schema::{AlertRule, AppEvent, MetricSample, Source};

    use super::*;
    use crate::rule::tests::alert_rule;

    const S: i64 = MICROS;
    const T0: i64 = 1_700_000_000 * MICROS;

    fn limits() -> Limits {
        Limits {
            max_series_per_rule: 100,
            rate_close_grace_micros: S,
        }
    }

    fn envelope(tenant: &str, time: i64, body: Body) -> Envelope {
        Envelope {
            event_id: "e".into(),
            event_time: time,
            ingest_time: time,
            tenant_id: tenant.into(),
            source: Source {
                kind: "agent".into(),
                id: "a".into(),
            },
            schema_name: body.schema_name().into(),
            schema_version: 1,
            attributes: BTreeMap::new(),
            tags: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
            body,
        }
    }

    fn sample(host: &str, time: i64, value: f64) -> Envelope {
        envelope(
            "acme",
            time,
            Body::Metric(MetricSample {
                host: host.into(),
                metric: "cpu_load".into(),
                value,
                unit: "percent".into(),
            }),
        )
    }

    fn app(time: i64, name: &str) -> Envelope {
        envelope(
            "acme",
            time,
            Body::App(AppEvent {
                app_id: "shop".into(),
                event_name: name.into(),
                user_id: "u".into(),
                properties: "{}".into(),
            }),
        )
    }

    fn rules(list: Vec<(&str, AlertRule)>) -> Vec<(String, Arc<Rule>)> {
        list.into_iter()
            .map(|(tenant, r)| {
                (
                    format!("{tenant}/{}", r.rule_id),
                    Arc::new(Rule::parse(&r).expect("valid rule")),
                )
            })
            .collect()
    }

    fn threshold(for_seconds: i64) -> AlertRule {
        AlertRule {
            for_seconds,
            ..alert_rule("threshold", Some("cpu_load"), ">", 90.0)
        }
    }

    fn engine_with(rule: AlertRule) -> (Engine, Vec<(String, Arc<Rule>)>) {
        let table = rules(vec![("acme", rule)]);
        let mut engine = Engine::new(limits());
        let mut out = Vec::new();
        engine.sync(&table, T0, &mut out);
        assert!(out.is_empty());
        (engine, table)
    }

    fn observe(engine: &mut Engine, event: &Envelope) -> Vec<Transition> {
        let mut out = Vec::new();
        engine.observe(event, event.event_time, &mut out);
        out
    }

    fn tick(engine: &mut Engine, now: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        engine.tick(now, &mut out);
        out
    }

    #[test]
    fn threshold_fires_at_once_without_a_duration_and_resolves_on_the_first_good_sample() {
        let (mut engine, _) = engine_with(threshold(0));
        assert!(observe(&mut engine, &sample("web-1", T0, 50.0)).is_empty());
        let fired = observe(&mut engine, &sample("web-1", T0 + S, 95.5));
        assert_eq!(fired.len(), 1);
        let t = &fired[0];
        assert_eq!(t.tenant, "acme");
        assert_eq!(t.key, "acme/r1/host=web-1");
        assert_eq!(t.alert.state, FIRING);
        assert_eq!(t.alert.value, 95.5);
        assert_eq!(t.alert.threshold, 90.0);
        assert_eq!(t.alert.started_at, T0 + S);
        assert_eq!(t.alert.resolved_at, None);
        assert_eq!(t.alert.labels["host"], "web-1");
        assert_eq!(t.alert.labels["rule"], "rule one");
        assert_eq!(t.alert.labels["kind"], "threshold");
        assert_eq!(t.alert.labels["metric"], "cpu_load");
        assert!(
            t.alert.message.contains("cpu_load = 95.5 > 90"),
            "{}",
            t.alert.message
        );

        assert!(
            observe(&mut engine, &sample("web-1", T0 + 2 * S, 99.0)).is_empty(),
            "no re-fire"
        );
        let resolved = observe(&mut engine, &sample("web-1", T0 + 3 * S, 10.0));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].key, t.key);
        assert_eq!(resolved[0].alert.state, RESOLVED);
        assert_eq!(resolved[0].alert.value, 10.0);
        assert_eq!(resolved[0].alert.started_at, T0 + S);
        assert_eq!(resolved[0].alert.resolved_at, Some(T0 + 3 * S));
        assert_eq!(engine.census().series, 0, "a cleared series is forgotten");
    }

    #[test]
    fn threshold_must_hold_for_its_duration_per_series() {
        // seed 003: cpu_load > 90 for 1 minute per host.
        let (mut engine, _) = engine_with(threshold(60));
        assert!(observe(&mut engine, &sample("a", T0, 95.0)).is_empty());
        assert!(observe(&mut engine, &sample("b", T0 + 10 * S, 95.0)).is_empty());
        assert!(observe(&mut engine, &sample("a", T0 + 30 * S, 95.0)).is_empty());
        // A dip restarts b's run.
        assert!(observe(&mut engine, &sample("b", T0 + 40 * S, 20.0)).is_empty());
        assert!(observe(&mut engine, &sample("b", T0 + 50 * S, 95.0)).is_empty());
        let fired = observe(&mut engine, &sample("a", T0 + 60 * S, 91.0));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].key, "acme/r1/host=a");
        assert_eq!(fired[0].alert.started_at, T0 + 60 * S);
        assert!(observe(&mut engine, &sample("b", T0 + 100 * S, 95.0)).is_empty());
        assert_eq!(
            observe(&mut engine, &sample("b", T0 + 110 * S, 95.0)).len(),
            1
        );
    }

    #[test]
    fn other_tenants_metrics_and_kinds_do_not_match() {
        let (mut engine, _) = engine_with(threshold(0));
        let mut other = sample("a", T0, 99.0);
        other.tenant_id = "globex".into();
        assert!(observe(&mut engine, &other).is_empty());
        let mut mem = sample("a", T0, 99.0);
        if let Body::Metric(m) = &mut mem.body {
            m.metric = "mem".into();
        }
        assert!(observe(&mut engine, &mem).is_empty());
        assert!(observe(&mut engine, &app(T0, "cpu_load")).is_empty());
    }

    #[test]
    fn series_are_the_group_by_values_from_body_or_tags() {
        let rule = AlertRule {
            group_by: vec!["host".into(), "env".into()],
            ..threshold(0)
        };
        let (mut engine, _) = engine_with(rule);
        let fired = observe(&mut engine, &sample("a", T0, 99.0));
        assert_eq!(fired[0].key, "acme/r1/host=a,env=prod");
        assert_eq!(fired[0].alert.labels["env"], "prod");

        let ungrouped = AlertRule {
            group_by: Vec::new(),
            ..threshold(0)
        };
        let (mut engine, _) = engine_with(ungrouped);
        assert_eq!(
            observe(&mut engine, &sample("a", T0, 99.0))[0].key,
            "acme/r1/all"
        );
        assert!(
            observe(&mut engine, &sample("b", T0, 99.0)).is_empty(),
            "one series"
        );
    }

    fn rate(op: &str, threshold: f64) -> AlertRule {
        AlertRule {
            event_match: Some("checkout_failed".into()),
            metric: None,
            for_seconds: 10,
            group_by: vec!["app_id".into()],
            ..alert_rule("rate", None, op, threshold)
        }
    }

    #[test]
    fn rate_fires_as_soon_as_the_count_exceeds_and_resolves_when_a_window_does_not() {
        let (mut engine, _) = engine_with(rate(">", 2.0));
        assert!(observe(&mut engine, &app(T0, "checkout_ok")).is_empty());
        assert!(observe(&mut engine, &app(T0, "checkout_failed")).is_empty());
        assert!(observe(&mut engine, &app(T0 + S, "checkout_failed")).is_empty());
        let fired = observe(&mut engine, &app(T0 + 2 * S, "checkout_failed"));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].key, "acme/r1/app_id=shop");
        assert_eq!(fired[0].alert.value, 3.0);
        assert_eq!(fired[0].alert.labels["event"], "checkout_failed");
        assert!(observe(&mut engine, &app(T0 + 3 * S, "checkout_failed")).is_empty());
        // Next window: one event; it closes when a later window's event arrives.
        assert!(observe(&mut engine, &app(T0 + 10 * S, "checkout_failed")).is_empty());
        let resolved = observe(&mut engine, &app(T0 + 20 * S, "checkout_failed"));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert.state, RESOLVED);
        assert_eq!(resolved[0].alert.value, 1.0);
        assert_eq!(resolved[0].alert.started_at, T0 + 2 * S);
        assert_eq!(resolved[0].alert.resolved_at, Some(T0 + 20 * S));
    }

    #[test]
    fn rate_windows_close_on_the_tick_only_when_the_series_is_quiet() {
        let (mut engine, _) = engine_with(rate(">", 2.0));
        for i in 0..3 {
            let _ = observe(&mut engine, &app(T0 + i * S, "checkout_failed"));
        }
        assert_eq!(engine.census().firing, 1);
        // Window [T0, T0+10s) ends; grace 1 s. Last arrival was at T0+2s.
        assert!(tick(&mut engine, T0 + 10 * S).is_empty());
        assert!(
            tick(&mut engine, T0 + 11 * S).is_empty(),
            "closed, still satisfied"
        );
        // The next, empty window closes at T0+21s: resolved, and the series is forgotten.
        assert!(tick(&mut engine, T0 + 20 * S).is_empty());
        let resolved = tick(&mut engine, T0 + 21 * S);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert.value, 0.0);
        assert_eq!(resolved[0].alert.resolved_at, Some(T0 + 20 * S));
        assert_eq!(engine.census().series, 0);
    }

    #[test]
    fn rate_below_fires_when_a_window_closes_short() {
        let (mut engine, _) = engine_with(rate("<", 2.0));
        assert!(observe(&mut engine, &app(T0, "checkout_failed")).is_empty());
        let fired = tick(&mut engine, T0 + 11 * S);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].alert.state, FIRING);
        assert_eq!(fired[0].alert.value, 1.0);
        assert_eq!(fired[0].alert.started_at, T0 + 10 * S);
        // Two events in a window: resolved when it closes.
        let _ = observe(&mut engine, &app(T0 + 30 * S, "checkout_failed"));
        let _ = observe(&mut engine, &app(T0 + 31 * S, "checkout_failed"));
        let resolved = tick(&mut engine, T0 + 41 * S);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].alert.state, RESOLVED);
        assert_eq!(resolved[0].alert.value, 2.0);
    }

    #[test]
    fn rate_drops_events_of_a_closed_window() {
        let (mut engine, _) = engine_with(rate(">", 100.0));
        let _ = observe(&mut engine, &app(T0 + 15 * S, "checkout_failed"));
        let _ = observe(&mut engine, &app(T0 + 5 * S, "checkout_failed"));
        assert_eq!(engine.dropped().late, 1);
    }

    fn absence() -> AlertRule {
        AlertRule {
            for_seconds: 30,
            ..alert_rule("absence", Some("heartbeat"), ">", 0.0)
        }
    }

    fn heartbeat(host: &str, time: i64) -> Envelope {
        let mut e = sample(host, time, 1.0);
        if let Body::Metric(m) = &mut e.body {
            m.metric = "heartbeat".into();
        }
        e
    }

    #[test]
    fn absence_fires_on_the_tick_after_silence_and_resolves_on_data() {
        let (mut engine, _) = engine_with(absence());
        assert!(
            tick(&mut engine, T0 + 100 * S).is_empty(),
            "nothing seen, nothing missing"
        );
        let _ = observe(&mut engine, &heartbeat("a", T0));
        assert!(tick(&mut engine, T0 + 29 * S).is_empty());
        let fired = tick(&mut engine, T0 + 30 * S);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].key, "acme/r1/host=a");
        assert_eq!(fired[0].alert.value, 30.0);
        assert_eq!(fired[0].alert.threshold, 30.0);
        assert_eq!(fired[0].alert.started_at, T0 + 30 * S);
        assert!(tick(&mut engine, T0 + 60 * S).is_empty(), "fires once");
        let resolved = observe(&mut engine, &heartbeat("a", T0 + 70 * S));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert.state, RESOLVED);
        assert_eq!(resolved[0].alert.value, 70.0, "seconds of silence");
        assert_eq!(resolved[0].alert.started_at, T0 + 30 * S);
    }

    #[test]
    fn disabling_deleting_and_reshaping_a_rule_resolves_what_it_had_firing() {
        let (mut engine, table) = engine_with(threshold(0));
        let _ = observe(&mut engine, &sample("a", T0, 99.0));
        // Threshold change: state kept, the next sample decides.
        let raised = rules(vec![(
            "acme",
            AlertRule {
                threshold: 99.5,
                ..threshold(0)
            },
        )]);
        let mut out = Vec::new();
        engine.sync(&raised, T0 + S, &mut out);
        assert!(out.is_empty());
        let resolved = observe(&mut engine, &sample("a", T0 + 2 * S, 99.0));
        assert_eq!(resolved[0].alert.state, RESOLVED);

        for (change, reason) in [
            (
                rules(vec![(
                    "acme",
                    AlertRule {
                        enabled: false,
                        ..threshold(0)
                    },
                )]),
                "rule disabled",
            ),
            (Vec::new(), "rule deleted"),
            (
                rules(vec![(
                    "acme",
                    AlertRule {
                        group_by: vec!["env".into()],
                        ..threshold(0)
                    },
                )]),
                "rule changed",
            ),
        ] {
            let mut out = Vec::new();
            engine.sync(&table, T0, &mut out);
            let _ = observe(&mut engine, &sample("a", T0 + 3 * S, 99.0));
            assert_eq!(engine.census().firing, 1);
            engine.sync(&change, T0 + 4 * S, &mut out);
            assert_eq!(out.len(), 1, "{reason}");
            assert_eq!(out[0].alert.state, RESOLVED);
            assert_eq!(out[0].alert.resolved_at, Some(T0 + 4 * S));
            assert_eq!(out[0].alert.message, format!("rule one: {reason}"));
            assert_eq!(engine.census().firing, 0);
            // Back to the original for the next round.
            engine.sync(&Vec::new(), T0, &mut out);
        }
    }

    #[test]
    fn a_restored_firing_alert_keeps_its_start_and_resolves_later() {
        let (mut engine, _) = engine_with(threshold(0));
        let fired = observe(&mut engine, &sample("a", T0, 99.0)).remove(0);

        let (mut restarted, _) = engine_with(threshold(0));
        let mut out = Vec::new();
        restarted.restore(&fired.key, &fired.alert, T0 + 100 * S, &mut out);
        assert!(out.is_empty());
        assert_eq!(restarted.census().firing, 1);
        assert!(
            observe(&mut restarted, &sample("a", T0 + 101 * S, 98.0)).is_empty(),
            "no re-fire"
        );
        let resolved = observe(&mut restarted, &sample("a", T0 + 102 * S, 1.0));
        assert_eq!(resolved[0].alert.started_at, T0);
        assert_eq!(resolved[0].key, fired.key);

        // Its rule was deleted while the service was down: resolved at start.
        let mut empty = Engine::new(limits());
        empty.restore(&fired.key, &fired.alert, T0 + 100 * S, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].alert.state, RESOLVED);
        assert_eq!(out[0].alert.started_at, T0);
        assert_eq!(out[0].alert.resolved_at, Some(T0 + 100 * S));
        // Resolved states are history, not state.
        let mut again = Vec::new();
        empty.restore(&out[0].key, &out[0].alert, T0, &mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn a_restored_absence_alert_resolves_on_data() {
        let (mut engine, _) = engine_with(absence());
        let _ = observe(&mut engine, &heartbeat("a", T0));
        let fired = tick(&mut engine, T0 + 40 * S).remove(0);
        let (mut restarted, _) = engine_with(absence());
        let mut out = Vec::new();
        restarted.restore(&fired.key, &fired.alert, T0 + 50 * S, &mut out);
        assert!(tick(&mut restarted, T0 + 500 * S).is_empty());
        let resolved = observe(&mut restarted, &heartbeat("a", T0 + 60 * S));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert.started_at, fired.alert.started_at);
        assert_eq!(resolved[0].alert.value, 60.0);
    }

    #[test]
    fn series_beyond_the_limit_are_dropped_and_counted() {
        let table = rules(vec![("acme", threshold(60))]);
        let mut engine = Engine::new(Limits {
            max_series_per_rule: 2,
            ..limits()
        });
        let mut out = Vec::new();
        engine.sync(&table, T0, &mut out);
        for host in ["a", "b", "c", "d"] {
            let _ = observe(&mut engine, &sample(host, T0, 99.0));
        }
        assert_eq!(engine.census().series, 2);
        assert_eq!(engine.dropped().series_limit, 2);
    }

    #[test]
    fn event_ids_are_deterministic_per_transition() {
        let (mut engine, _) = engine_with(threshold(0));
        let fired = observe(&mut engine, &sample("a", T0, 99.0)).remove(0);
        let resolved = observe(&mut engine, &sample("a", T0 + S, 1.0)).remove(0);
        let (mut replay, _) = engine_with(threshold(0));
        let again = observe(&mut replay, &sample("a", T0, 99.0)).remove(0);
        assert_eq!(fired.event_id(), again.event_id());
        assert_ne!(fired.event_id(), resolved.event_id());
        assert_eq!(fired.event_id().len(), 36);
        assert!(resolved.event_time() >= fired.event_time());
    }

    proptest! {
        /// Whatever the samples, a series' alerts alternate firing / resolved, a resolution
        /// carries the start of the firing it ends, firing happens only on a sample over the
        /// threshold and resolution only on one at or under it.
        #[test]
        fn threshold_transitions_alternate(
            samples in proptest::collection::vec((0usize..3, 0i64..120, 80.0f64..100.0), 1..200),
            for_seconds in 0i64..30,
        ) {
            let (mut engine, _) = engine_with(threshold(for_seconds));
            let mut open: HashMap<String, i64> = HashMap::new();
            let mut time = T0;
            for (host, step, value) in samples {
                time += step * S / 4;
                let event = sample(["a", "b", "c"][host], time, value);
                for t in observe(&mut engine, &event) {
                    match t.alert.state.as_str() {
                        FIRING => {
                            prop_assert!(value > 90.0);
                            prop_assert!(open.insert(t.key.clone(), t.alert.started_at).is_none());
                        }
                        _ => {
                            prop_assert!(value <= 90.0);
                            prop_assert_eq!(open.remove(&t.key), Some(t.alert.started_at));
                            prop_assert!(t.alert.resolved_at >= Some(t.alert.started_at));
                        }
                    }
                }
            }
            prop_assert_eq!(engine.census().firing, open.len());
        }

        /// A `>` rate rule fires at most once per series until resolved, with a count over the
        /// threshold, whatever the event times and ticks.
        #[test]
        fn rate_never_fires_twice_without_resolving(
            steps in proptest::collection::vec((0i64..40, proptest::bool::ANY), 1..200),
        ) {
            let (mut engine, _) = engine_with(rate(">", 3.0));
            let mut firing = false;
            let mut time = T0;
            for (step, is_tick) in steps {
                time += step * S / 4;
                let out = if is_tick { tick(&mut engine, time) } else { observe(&mut engine, &app(time, "checkout_failed")) };
                for t in out {
                    if t.alert.state == FIRING {
                        prop_assert!(!firing);
                        prop_assert!(t.alert.value > 3.0);
                        firing = true;
                    } else {
                        prop_assert!(firing);
                        firing = false;
                    }
                }
            }
        }
    }
}
