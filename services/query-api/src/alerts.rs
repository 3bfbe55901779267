//! Live alerts: ONE follower of `ops.alert.v1` per process, fanned out to every stream client
//! through a broadcast channel and filtered per tenant there. The follower also keeps the
//! latest state per record key (the topic is compacted: its latest record is the state), which
//! is what a client that fell behind is resynced with. A slow client never blocks the follower
//! or other clients: the channel drops its oldest entries for that client only, and the client
//! is told how many it missed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use futures::Stream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use ve_kafka::{KafkaConfig, KafkaError, TailEvent};
use ve_schema::{Body, Codec, Envelope};

use crate::core::{AlertView, iso_micros};
use crate::metrics;

#[derive(Debug, Clone)]
pub struct LiveAlert {
    pub tenant_id: String,
    pub alert: AlertView,
}

/// What a stream client receives.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Alert(Box<AlertView>),
    /// The client missed `missed` alerts; the tenant's current state follows as `Alert` items.
    Resync {
        missed: u64,
    },
}

#[derive(Debug, Clone)]
pub struct AlertHub {
    live: broadcast::Sender<Arc<LiveAlert>>,
    current: Arc<RwLock<HashMap<String, Arc<LiveAlert>>>>,
    ready: watch::Receiver<bool>,
    ready_tx: Arc<watch::Sender<bool>>,
}

impl AlertHub {
    /// `capacity`: alerts a client may fall behind by before it is resynced.
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(capacity.max(1));
        let (ready_tx, ready) = watch::channel(false);
        Self {
            live,
            current: Arc::default(),
            ready,
            ready_tx: Arc::new(ready_tx),
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Follows `topic` until `shutdown`: records that existed at start fill the current state,
    /// later ones are also broadcast.
    pub async fn follow(
        self,
        kafka: KafkaConfig,
        service: String,
        topic: String,
        codec: Codec,
        shutdown: CancellationToken,
    ) -> Result<(), KafkaError> {
        let hub = &self;
        let codec = &codec;
        let topic_name = topic.clone();
        ve_kafka::tail_topic(
            &kafka,
            &service,
            &topic,
            move |event| {
                let topic = topic_name.clone();
                async move {
                    match event {
                        TailEvent::CaughtUp => {
                            let _ = hub.ready_tx.send(true);
                        }
                        TailEvent::Record(record) => {
                            let key = record.key_str().map(str::to_owned).unwrap_or_else(|| {
                                format!("{}:{}", record.partition, record.offset)
                            });
                            let Some(payload) = record.payload.as_deref() else {
                                hub.remove(&key);
                                return;
                            };
                            match codec.decode(payload).await {
                                Ok(envelope) => match live_alert(envelope) {
                                    Some(alert) => hub.publish(key, alert),
                                    None => reject(&topic, record.offset, "not an Alert body"),
                                },
                                Err(e) => reject(&topic, record.offset, &e.to_string()),
                            }
                        }
                    }
                }
            },
            shutdown,
        )
        .await
    }

    fn remove(&self, key: &str) {
        let _ = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Records the latest state of `key` and, once the history is read, sends it live.
    pub fn publish(&self, key: String, alert: LiveAlert) {
        let alert = Arc::new(alert);
        let _ = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::clone(&alert));
        if self.is_ready() {
            // No receivers is not an error: nobody is watching.
            let _ = self.live.send(alert);
        }
    }

    /// The current state of every alert series of `tenant`.
    pub fn current(&self, tenant: &str) -> Vec<AlertView> {
        let mut alerts: Vec<AlertView> = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|a| a.tenant_id == tenant)
            .map(|a| a.alert.clone())
            .collect();
        alerts.sort_by(|a, b| (&a.rule_id, &a.series).cmp(&(&b.rule_id, &b.series)));
        alerts
    }

    /// Live alerts of `tenant` from now on, with a resync when the client falls behind.
    pub fn subscribe(&self, tenant: String) -> impl Stream<Item = StreamItem> + Send + use<> {
        struct State {
            hub: AlertHub,
            receiver: broadcast::Receiver<Arc<LiveAlert>>,
            tenant: String,
            pending: VecDeque<StreamItem>,
            _client: metrics::StreamClient,
        }
        let state = State {
            receiver: self.live.subscribe(),
            hub: self.clone(),
            tenant,
            pending: VecDeque::new(),
            _client: metrics::StreamClient::open(),
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(item) = state.pending.pop_front() {
                    return Some((item, state));
                }
                match state.receiver.recv().await {
                    Ok(alert) if alert.tenant_id == state.tenant => {
                        ::metrics::counter!(metrics::ALERTS_STREAMED).increment(1);
                        return Some((StreamItem::Alert(Box::new(alert.alert.clone())), state));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        ::metrics::counter!(metrics::STREAM_RESYNCS).increment(1);
                        // Skip what is still buffered: the snapshot below covers it.
                        state.receiver = state.receiver.resubscribe();
                        state.pending.push_back(StreamItem::Resync { missed });
                        state.pending.extend(
                            state
                                .hub
                                .current(&state.tenant)
                                .into_iter()
                                .map(|a| StreamItem::Alert(Box::new(a))),
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

fn reject(topic: &str, offset: i64, reason: &str) {
    ::metrics::counter!(metrics::ALERTS_REJECTED).increment(1);
    tracing::warn!(topic, offset, reason, "alert record skipped");
}

/// An envelope with an `Alert` body as the API shows it.
pub fn live_alert(envelope: Envelope) -> Option<LiveAlert> {
    let Body::Alert(alert) = envelope.body else {
        return None;
    };
    Some(LiveAlert {
        tenant_id: envelope.tenant_id,
        alert: AlertView {
            rule_id: alert.rule_id,
            series: alert.series,
            state: alert.state,
            value: alert.value,
            threshold: alert.threshold,
            started_at: iso_micros(alert.started_at),
            resolved_at: alert.resolved_at.map(iso_micros).unwrap_or_default(),
            message: alert.message,
            labels: alert.labels.into_iter().collect(),
            event_id: envelope.event_id,
            event_time: iso_micros(envelope.event_time),
        },
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn alert(tenant: &str, rule: &str) -> LiveAlert {
        LiveAlert {
            tenant_id: tenant.into(),
            alert: AlertView {
                rule_id: rule.into(),
                series: "s".into(),
                state: "firing".into(),
                value: 1.0,
                threshold: 0.5,
                started_at: String::new(),
                resolved_at: String::new(),
                message: String::new(),
                labels: Default::default(),
                event_id: rule.into(),
                event_time: String::new(),
            },
        }
    }

    #[tokio::test]
    async fn tenants_see_only_their_alerts_and_a_lagging_client_is_resynced() {
        let hub = AlertHub::new(2);
        let _ = hub.ready_tx.send(true);
        let mine = hub.subscribe("t1".into());
        let mut mine = Box::pin(mine);
        hub.publish("a".into(), alert("t2", "other"));
        hub.publish("b".into(), alert("t1", "r1"));
        let first = mine.next().await.expect("an item");
        assert!(
            matches!(&first, StreamItem::Alert(a) if a.rule_id == "r1"),
            "{first:?}"
        );
        // Three more than the channel holds: the client is told, then gets the current state.
        for i in 0..3 {
            hub.publish(format!("k{i}"), alert("t1", &format!("r{}", i + 2)));
        }
        let resync = mine.next().await.expect("an item");
        assert_eq!(resync, StreamItem::Resync { missed: 1 });
        let mut state = Vec::new();
        for _ in 0..4 {
            match mine.next().await.expect("an item") {
                StreamItem::Alert(a) => state.push(a.rule_id),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(state, ["r1", "r2", "r3", "r4"]);
    }
}
