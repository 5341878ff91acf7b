//! [`Notifier`]: Redis pub/sub channels, as the Redis stores of one replica listen to them.
//!
//! A store that must learn at once what another replica changed (a session's flow state, a
//! log that grew) publishes on a channel from the script that makes the change, and every
//! replica holding that session listens on it. One connection per replica carries every
//! subscription (RESP3 push messages, resubscribed by the connection manager after a
//! reconnect), and each message is handed to the listeners of its channel on the connection's
//! own task, so a listener must only record what it learnt and wake whoever waits.
//!
//! Pub/sub is at most once: messages published while the connection is down are lost. So a
//! listener is told when its channel is (re)subscribed ([`Notice::Subscribed`]), after which
//! no message is missed; it re-reads from Redis whatever it keeps a copy of.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
};

use ::redis::{aio::ConnectionManager, Client, PushInfo, PushKind, RedisError, Value};
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::config::connection_config;

/// What a listener hears on its channel.
#[derive(Debug)]
pub(crate) enum Notice<'a> {
    /// A message published on the channel.
    Message(&'a [u8]),
    /// The channel was (re)subscribed: messages from now on arrive, and earlier ones while
    /// the connection was down may have been lost.
    Subscribed,
}

/// Handles the notices of one channel; called on the connection's task, so it must not block.
pub(crate) type Listener = dyn Fn(Notice<'_>) + Send + Sync;

/// The channels one replica listens on, over one connection of their own.
pub(crate) struct Notifier {
    client: Client,
    connection: OnceCell<ConnectionManager>,
    listeners: Arc<Listeners>,
    /// Serialises subscribing and unsubscribing, so that an unsubscribe for a channel that
    /// lost its last listener cannot overtake a subscribe for a new one.
    changes: tokio::sync::Mutex<()>,
}

/// A channel's listeners, each with the id its [`Subscription`] removes it by.
type ChannelListeners = Vec<(u64, Arc<Listener>)>;

#[derive(Default)]
struct Listeners {
    by_channel: Mutex<HashMap<Vec<u8>, ChannelListeners>>,
    next: AtomicU64,
}

/// A listener's place on its channel; dropping it stops the listening.
pub(crate) struct Subscription {
    channel: Vec<u8>,
    id: u64,
    notifier: Weak<Notifier>,
}

impl Notifier {
    /// A notifier for the Redis `client` connects to; it connects on the first subscription.
    pub(crate) fn new(client: &Client) -> Result<Self, RedisError> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(::redis::ProtocolVersion::RESP3);
        Ok(Notifier {
            client: Client::open(info.set_redis_settings(settings))?,
            connection: OnceCell::new(),
            listeners: Arc::default(),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        self.connection
            .get_or_try_init(|| {
                let listeners = self.listeners.clone();
                let config = connection_config()
                    .set_push_sender(move |push: PushInfo| {
                        listeners.dispatch(push);
                        Ok::<(), std::convert::Infallible>(())
                    })
                    .set_automatic_resubscription();
                self.client.get_connection_manager_with_config(config)
            })
            .await
            .cloned()
    }

    /// PINGs the connection, if there is one yet, so that its manager finds out that it lost
    /// it and reconnects (and resubscribes): a connection that only receives never does.
    pub(crate) async fn ping(&self) -> Result<(), RedisError> {
        let Some(connection) = self.connection.get() else {
            return Ok(());
        };
        let _: Value = ::redis::cmd("PING")
            .query_async(&mut connection.clone())
            .await?;
        Ok(())
    }

    /// Calls `listener` with every notice on `channel` until the returned subscription is
    /// dropped. Returns once Redis confirmed the subscription, so every message published
    /// after this returns reaches `listener`. `listener` also hears the confirmation, as
    /// [`Notice::Subscribed`].
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        channel: impl Into<Vec<u8>>,
        listener: Arc<Listener>,
    ) -> Result<Subscription, RedisError> {
        let channel = channel.into();
        let id = self.listeners.next.fetch_add(1, Ordering::Relaxed);
        let subscription = Subscription {
            channel: channel.clone(),
            id,
            notifier: Arc::downgrade(self),
        };
        self.listeners
            .by_channel
            .lock()
            .entry(channel.clone())
            .or_default()
            .push((id, listener));
        // From here on, dropping `subscription` (on an error, or if this call is cancelled)
        // takes the listener off again.
        let mut connection = self.connection().await?;
        let _changing = self.changes.lock().await;
        connection.subscribe(channel.as_slice()).await?;
        Ok(subscription)
    }

    /// Unsubscribes from `channel` unless it has listeners again.
    async fn release(&self, channel: Vec<u8>) {
        let _changing = self.changes.lock().await;
        if self.listeners.by_channel.lock().contains_key(&channel) {
            return;
        }
        if let Some(connection) = self.connection.get() {
            // On failure the subscription stays and its messages find no listener: harmless,
            // and gone with the next reconnect.
            let _ = connection.clone().unsubscribe(channel.as_slice()).await;
        }
    }
}

impl Listeners {
    fn dispatch(&self, push: PushInfo) {
        let (notice, channel) = match (push.kind, push.data.as_slice()) {
            (PushKind::Message, [channel, Value::BulkString(payload), ..]) => {
                (Notice::Message(payload), channel)
            }
            (PushKind::Subscribe, [channel, ..]) => (Notice::Subscribed, channel),
            _ => return,
        };
        let Value::BulkString(channel) = channel else {
            return;
        };
        // Called outside the lock, so a listener may subscribe or drop a subscription.
        let listeners: Vec<Arc<Listener>> = match self.by_channel.lock().get(channel) {
            Some(listeners) => listeners.iter().map(|(_, l)| l.clone()).collect(),
            None => return,
        };
        for listener in listeners {
            listener(match &notice {
                Notice::Message(payload) => Notice::Message(payload),
                Notice::Subscribed => Notice::Subscribed,
            });
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(notifier) = self.notifier.upgrade() else {
            return;
        };
        let emptied = {
            let mut by_channel = notifier.listeners.by_channel.lock();
            match by_channel.get_mut(&self.channel) {
                Some(listeners) => {
                    listeners.retain(|(id, _)| *id != self.id);
                    let emptied = listeners.is_empty();
                    if emptied {
                        by_channel.remove(&self.channel);
                    }
                    emptied
                }
                None => false,
            }
        };
        if emptied {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let channel = std::mem::take(&mut self.channel);
                runtime.spawn(async move { notifier.release(channel).await });
            }
        }
    }
}
