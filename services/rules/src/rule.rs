//! An `AlertRule` from `control.rules.v1`, checked and parsed into what evaluation needs. Parsing
//! is where a rule written around `ve-ctl` (straight to the topic) is refused, with the same rules
//! `ve_ctl::validate_rule` applies.

use ve_schema::{AlertRule, Body, Envelope};

/// Microseconds per second: event times and alert times are UTC micros.
pub(crate) const MICROS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Threshold,
    Rate,
    Absence,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Rate => "rate",
            Self::Absence => "absence",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Gt => value > threshold,
            Self::Ge => value >= threshold,
            Self::Lt => value < threshold,
            Self::Le => value <= threshold,
            // Exact comparison is what the operator says; metric values that are meant to be
            // compared this way are counts and states, which are exact in f64.
            Self::Eq => value == threshold,
            Self::Ne => value != threshold,
        }
    }

    /// Whether a growing count can only go on satisfying the condition once it does, so a rate
    /// rule may fire before its window closes.
    pub fn monotonic_up(self) -> bool {
        matches!(self, Self::Gt | Self::Ge)
    }
}

/// What a rule looks at in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Metric samples (`Body::Metric`) of this metric name.
    Metric(String),
    /// Events whose name or type is this (see [`event_names`]).
    Event(String),
}

impl Target {
    pub fn matches(&self, envelope: &Envelope) -> bool {
        match (self, &envelope.body) {
            (Self::Metric(name), Body::Metric(sample)) => sample.metric == *name,
            (Self::Metric(_), _) => false,
            (Self::Event(name), body) => event_names(body).contains(&name.as_str()),
        }
    }

    pub fn label(&self) -> (&'static str, &str) {
        match self {
            Self::Metric(name) => ("metric", name),
            Self::Event(name) => ("event", name),
        }
    }
}

/// The names an `event_match` is compared with, per body kind.
pub fn event_names(body: &Body) -> Vec<&str> {
    match body {
        Body::Web(e) => std::iter::once(e.event_type.as_str())
            .chain(e.name.as_deref())
            .collect(),
        Body::App(e) => vec![e.event_name.as_str()],
        Body::Metric(m) => vec![m.metric.as_str()],
        Body::Span(s) => vec![s.name.as_str()],
        Body::Run(r) => vec![r.status.as_str()],
        Body::Step(s) => vec![s.name.as_str()],
        Body::Decision(d) => vec![d.outcome.as_str()],
        _ => Vec::new(),
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub rule_id: String,
    pub name: String,
    pub kind: Kind,
    pub target: Target,
    pub op: Op,
    pub threshold: f64,
    /// `for_seconds` in micros.
    pub for_micros: i64,
    pub group_by: Vec<String>,
    pub enabled: bool,
}

impl Rule {
    pub fn parse(rule: &AlertRule) -> Result<Self, String> {
        if rule.rule_id.is_empty() || rule.rule_id.contains('/') {
            return Err(format!("rule id {:?}: empty or with '/'", rule.rule_id));
        }
        let kind = match rule.kind.as_str() {
            "threshold" => Kind::Threshold,
            "rate" => Kind::Rate,
            "absence" => Kind::Absence,
            other => return Err(format!("rule kind {other:?}: threshold, rate or absence")),
        };
        let op = Op::parse(&rule.operator)
            .ok_or_else(|| format!("operator {:?}: > >= < <= == !=", rule.operator))?;
        let target = match (&rule.metric, &rule.event_match) {
            (Some(metric), _) => Target::Metric(metric.clone()),
            (None, Some(event)) if kind != Kind::Threshold => Target::Event(event.clone()),
            _ if kind == Kind::Threshold => return Err("a threshold rule needs a metric".into()),
            _ => {
                return Err(format!(
                    "a {} rule needs a metric or an event_match",
                    kind.as_str()
                ));
            }
        };
        if !rule.threshold.is_finite() {
            return Err("threshold must be a finite number".into());
        }
        if rule.for_seconds < 0 {
            return Err("for_seconds must not be negative".into());
        }
        // A window of zero seconds, or silence of zero seconds, means nothing.
        if kind != Kind::Threshold && rule.for_seconds == 0 {
            return Err(format!("a {} rule needs for_seconds >= 1", kind.as_str()));
        }
        Ok(Self {
            rule_id: rule.rule_id.clone(),
            name: rule.name.clone(),
            kind,
            target,
            op,
            threshold: rule.threshold,
            for_micros: rule.for_seconds.saturating_mul(MICROS),
            group_by: rule.group_by.clone(),
            enabled: rule.enabled,
        })
    }

    /// Whether series state kept under `self` still means the same under `other` (only the
    /// threshold, operator, duration or name changed).
    pub fn same_series(&self, other: &Self) -> bool {
        self.kind == other.kind && self.target == other.target && self.group_by == other.group_by
    }

    pub fn for_seconds(&self) -> i64 {
        self.for_micros / MICROS
    }
}

/// The value of a `group_by` name on an event: a body field of that name, else a tag, else an
/// attribute (span attributes and resource too); empty when it has none.
pub fn group_value<'a>(envelope: &'a Envelope, name: &str) -> &'a str {
    body_field(&envelope.body, name)
        .or_else(|| envelope.tags.get(name).map(String::as_str))
        .or_else(|| envelope.attributes.get(name).map(String::as_str))
        .unwrap_or_default()
}

fn body_field<'a>(body: &'a Body, name: &str) -> Option<&'a str> {
    match body {
        Body::Metric(m) => match name {
            "host" => Some(m.host.as_str()),
            "metric" => Some(m.metric.as_str()),
            "unit" => Some(m.unit.as_str()),
            _ => None,
        },
        Body::Web(e) => match name {
            "event_type" => Some(e.event_type.as_str()),
            "session_id" => Some(e.session_id.as_str()),
            "user_id" => e.user_id.as_deref(),
            "path" => e.path.as_deref(),
            "url" => e.url.as_deref(),
            "name" => e.name.as_deref(),
            _ => None,
        },
        Body::App(e) => match name {
            "app_id" => Some(e.app_id.as_str()),
            "event_name" => Some(e.event_name.as_str()),
            "user_id" => Some(e.user_id.as_str()),
            _ => None,
        },
        Body::Span(s) => match name {
            "service_name" => Some(s.service_name.as_str()),
            "name" => Some(s.name.as_str()),
            "kind" => Some(s.kind.as_str()),
            "status_code" => Some(s.status_code.as_str()),
            _ => s
                .attributes
                .get(name)
                .or_else(|| s.resource.get(name))
                .map(String::as_str),
        },
        Body::Run(r) => match name {
            "pipeline_id" => Some(r.pipeline_id.as_str()),
            "status" => Some(r.status.as_str()),
            _ => None,
        },
        Body::Step(s) => match name {
            "pipeline_id" => Some(s.pipeline_id.as_str()),
            "name" => Some(s.name.as_str()),
            _ => None,
        },
        Body::Decision(d) => match name {
            "pipeline_id" => Some(d.pipeline_id.as_str()),
            "step_id" => Some(d.step_id.as_str()),
            "outcome" => Some(d.outcome.as_str()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn alert_rule(
        kind: &str,
        metric: Option<&str>,
        op: &str,
        threshold: f64,
    ) -> AlertRule {
        AlertRule {
            rule_id: "r1".into(),
            name: "rule one".into(),
            kind: kind.into(),
            metric: metric.map(Into::into),
            event_match: None,
            operator: op.into(),
            threshold,
            for_seconds: 60,
            group_by: vec!["host".into()],
            enabled: true,
        }
    }

    #[test]
    fn rules_are_checked_like_ve_ctl_checks_them() {
        assert!(Rule::parse(&alert_rule("threshold", Some("cpu"), ">", 90.0)).is_ok());
        assert!(Rule::parse(&alert_rule("threshold", None, ">", 90.0)).is_err());
        assert!(Rule::parse(&alert_rule("spike", Some("cpu"), ">", 90.0)).is_err());
        assert!(Rule::parse(&alert_rule("rate", Some("cpu"), "~", 1.0)).is_err());
        assert!(Rule::parse(&alert_rule("rate", Some("cpu"), ">", f64::NAN)).is_err());
        let mut r = alert_rule("absence", None, ">", 0.0);
        r.event_match = Some("heartbeat".into());
        assert_eq!(
            Rule::parse(&r).map(|r| r.target),
            Ok(Target::Event("heartbeat".into()))
        );
        r.for_seconds = 0;
        assert!(Rule::parse(&r).is_err(), "absence of zero seconds");
        let mut t = alert_rule("threshold", Some("cpu"), ">", 1.0);
        t.for_seconds = 0;
        assert!(Rule::parse(&t).is_ok(), "a threshold may fire at once");
    }

    #[test]
    fn operators_compare_as_written() {
        assert!(Op::Gt.holds(2.0, 1.0) && !Op::Gt.holds(1.0, 1.0));
        assert!(Op::Ge.holds(1.0, 1.0) && Op::Le.holds(1.0, 1.0));
        assert!(Op::Lt.holds(0.0, 1.0) && Op::Ne.holds(0.0, 1.0) && Op::Eq.holds(1.0, 1.0));
        for op in [">", ">=", "<", "<=", "==", "!="] {
            assert_eq!(Op::parse(op).map(Op::as_str), Some(op));
        }
    }
}
