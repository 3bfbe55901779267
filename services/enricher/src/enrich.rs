//! What enrichment adds to an envelope (docs/pipeline-contract.md): `plan` and `retention_days`
//! from the tenant record, CMDB host tags as `host.<tag>`, and `browser` / `os` / `device` for web
//! events with a user agent. No IO here: the stage looks the records up and calls [`enrich`].
//!
//! Enrichment tags are authoritative: they replace a tag of the same name sent by the client (a
//! client must not choose its own plan or retention).

use std::sync::Arc;

use ve_schema::{Body, CmdbHost, Envelope, Tenant};

use crate::ua::UaTags;

/// The part of a tenant record enrichment needs, prepared once per control record so each
/// event costs only a pointer copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTags {
    pub plan: String,
    pub retention_days: String,
}

impl TenantTags {
    pub fn from_tenant(tenant: &Tenant) -> Arc<Self> {
        Arc::new(Self {
            plan: tenant.plan.clone(),
            retention_days: tenant.retention_days.to_string(),
        })
    }
}

/// A host's CMDB tags, keys already prefixed `host.` and lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTags(pub Vec<(String, String)>);

impl HostTags {
    pub fn from_cmdb(host: &CmdbHost) -> Arc<Self> {
        Arc::new(Self(
            host.tags
                .iter()
                .map(|(k, v)| (format!("host.{}", k.to_ascii_lowercase()), v.clone()))
                .collect(),
        ))
    }
}

/// The host an event is about: a metric sample's `host`, else a `host` tag, else a span's
/// OpenTelemetry `host.name` resource attribute.
pub fn host_of(envelope: &Envelope) -> Option<&str> {
    let host = match &envelope.body {
        Body::Metric(sample) => Some(sample.host.as_str()),
        _ => None,
    }
    .or_else(|| envelope.tags.get("host").map(String::as_str))
    .or_else(|| match &envelope.body {
        Body::Span(span) => span.resource.get("host.name").map(String::as_str),
        _ => None,
    });
    host.filter(|h| !h.is_empty())
}

/// The user agent of a web event: the SDK's own field, else the HTTP header the gateway kept.
pub fn user_agent_of(envelope: &Envelope) -> Option<&str> {
    match &envelope.body {
        Body::Web(web) => web
            .user_agent
            .as_deref()
            .or_else(|| envelope.attributes.get("user_agent").map(String::as_str))
            .filter(|ua| !ua.trim().is_empty()),
        _ => None,
    }
}

/// Whether the body is one the enricher accepts (normalized events and metric samples).
pub(crate) fn is_enrichable(body: &Body) -> bool {
    matches!(
        body,
        Body::Web(_)
            | Body::App(_)
            | Body::Metric(_)
            | Body::Span(_)
            | Body::Run(_)
            | Body::Step(_)
            | Body::Decision(_)
    )
}

/// Adds the enrichment tags. `tenant` is `None` for a tenant the control topic does not know:
/// the event keeps flowing (the gateway accepted it) with `unknown`'s values.
pub fn enrich(
    envelope: &mut Envelope,
    tenant: Option<&TenantTags>,
    unknown: &TenantTags,
    host: Option<&HostTags>,
    ua: Option<&UaTags>,
) {
    let tenant = tenant.unwrap_or(unknown);
    let tags = &mut envelope.tags;
    let _ = tags.insert("plan".to_owned(), tenant.plan.clone());
    let _ = tags.insert("retention_days".to_owned(), tenant.retention_days.clone());
    if let Some(host) = host {
        for (key, value) in &host.0 {
            let _ = tags.insert(key.clone(), value.clone());
        }
    }
    if let Some(ua) = ua {
        let _ = tags.insert("browser".to_owned(), ua.browser.clone());
        let _ = tags.insert("os".to_owned(), ua.os.clone());
        let _ = tags.insert("device".to_owned(), ua.device.to_owned());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use ve_schema::{AppEvent, MetricSample, Source, Span, WebEvent};

    use super::*;
    use crate::ua::classify;

    pub(crate) fn envelope(body: Body) -> Envelope {
        Envelope {
            event_id: "e1".into(),
            event_time: 1_700_000_000_000_000,
            ingest_time: 1_700_000_000_100_000,
            tenant_id: "acme".into(),
            source: Source {
                kind: "sdk".into(),
                id: "web-js/1.0".into(),
            },
            schema_name: body.schema_name().into(),
            schema_version: 1,
            attributes: BTreeMap::new(),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            body,
        }
    }

    pub(crate) fn web(user_agent: Option<&str>) -> Body {
        Body::Web(WebEvent {
            event_type: "pageview".into(),
            session_id: "s1".into(),
            user_id: None,
            url: None,
            path: Some("/".into()),
            title: None,
            referrer: None,
            user_agent: user_agent.map(Into::into),
            selector: None,
            scroll_depth: None,
            name: None,
            metrics: BTreeMap::new(),
            properties: "{}".into(),
        })
    }

    pub(crate) fn metric(host: &str) -> Body {
        Body::Metric(MetricSample {
            host: host.into(),
            metric: "cpu_load".into(),
            value: 92.0,
            unit: "percent".into(),
        })
    }

    fn tenant() -> TenantTags {
        TenantTags {
            plan: "paid".into(),
            retention_days: "90".into(),
        }
    }

    fn unknown() -> TenantTags {
        TenantTags {
            plan: "unknown".into(),
            retention_days: "90".into(),
        }
    }

    #[test]
    fn tenant_and_host_tags_are_added() {
        let mut e = envelope(metric("web-1"));
        let host = HostTags::from_cmdb(&CmdbHost {
            host: "web-1".into(),
            tags: BTreeMap::from([("Team".into(), "x".into()), ("env".into(), "prod".into())]),
        });
        enrich(&mut e, Some(&tenant()), &unknown(), Some(&host), None);
        assert_eq!(e.tags["plan"], "paid");
        assert_eq!(e.tags["retention_days"], "90");
        assert_eq!(e.tags["host.team"], "x");
        assert_eq!(e.tags["host.env"], "prod");
        assert_eq!(e.tags["env"], "prod", "the event's own tags stay");
        assert!(!e.tags.contains_key("browser"));
    }

    #[test]
    fn an_unknown_tenant_is_tagged_not_dropped() {
        let mut e = envelope(metric("h"));
        enrich(&mut e, None, &unknown(), None, None);
        assert_eq!(e.tags["plan"], "unknown");
        assert_eq!(e.tags["retention_days"], "90");
    }

    #[test]
    fn client_tags_cannot_choose_the_plan() {
        let mut e = envelope(metric("h"));
        let _ = e.tags.insert("plan".into(), "enterprise".into());
        enrich(&mut e, Some(&tenant()), &unknown(), None, None);
        assert_eq!(e.tags["plan"], "paid");
    }

    #[test]
    fn web_events_get_user_agent_tags() {
        let ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1";
        let e = envelope(web(Some(ua)));
        assert_eq!(user_agent_of(&e), Some(ua));
        let mut e = e.clone();
        let tags = classify(user_agent_of(&e).unwrap());
        enrich(&mut e, Some(&tenant()), &unknown(), None, Some(&tags));
        assert_eq!(e.tags["browser"], "Safari");
        assert_eq!(e.tags["os"], "iOS");
        assert_eq!(e.tags["device"], "mobile");
    }

    #[test]
    fn user_agent_falls_back_to_the_http_header() {
        let mut e = envelope(web(None));
        assert_eq!(user_agent_of(&e), None);
        let _ = e.attributes.insert("user_agent".into(), "curl/8".into());
        assert_eq!(user_agent_of(&e), Some("curl/8"));
        let app = envelope(Body::App(AppEvent {
            app_id: "a".into(),
            event_name: "n".into(),
            user_id: "u".into(),
            properties: "{}".into(),
        }));
        assert_eq!(user_agent_of(&app), None, "only web events");
    }

    #[test]
    fn host_comes_from_the_sample_a_tag_or_the_span_resource() {
        assert_eq!(host_of(&envelope(metric("web-1"))), Some("web-1"));
        assert_eq!(host_of(&envelope(metric(""))), None);
        let mut e = envelope(web(None));
        assert_eq!(host_of(&e), None);
        let _ = e.tags.insert("host".into(), "web-2".into());
        assert_eq!(host_of(&e), Some("web-2"));
        let span = envelope(Body::Span(Span {
            trace_id: "t".into(),
            span_id: "s".into(),
            parent_span_id: None,
            name: "GET /".into(),
            kind: "server".into(),
            service_name: "web".into(),
            start_time: 1,
            end_time: 2,
            status_code: "ok".into(),
            status_message: String::new(),
            attributes: BTreeMap::new(),
            resource: BTreeMap::from([("host.name".into(), "web-3".into())]),
        }));
        assert_eq!(host_of(&span), Some("web-3"));
    }

    #[test]
    fn only_normalized_kinds_are_enrichable() {
        assert!(is_enrichable(&metric("h")));
        assert!(is_enrichable(&web(None)));
        assert!(!is_enrichable(&Body::Cmdb(CmdbHost {
            host: "h".into(),
            tags: BTreeMap::new()
        })));
    }
}
