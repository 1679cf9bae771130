//! The SQS operations on a JetStream server (see the crate documentation for the mapping).
//! A receipt handle is the delivery's acknowledgement subject, base64url-encoded: opaque to
//! clients, and checked to belong to the queue it is used on and to be the message's latest
//! delivery. JetStream itself accepts an acknowledgement of an earlier delivery of a message
//! delivered again; SQS does not, so each delivery handed out is recorded in the stream
//! [`RECEIPTS_STREAM`] (one message per subject `minicloud.receipts.STREAM.SEQUENCE`: the
//! message's latest delivery), which deletes and visibility changes are checked against.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::names::{QueueRef, CONSUMER};

/// The header carrying a message's id (what SendMessage answers and ReceiveMessage gives back).
pub const MESSAGE_ID_HEADER: &str = "Minicloud-Message-Id";
/// The header carrying, for a delayed message, when it becomes visible (Unix milliseconds).
pub const VISIBLE_AT_HEADER: &str = "Minicloud-Visible-At";
/// The most messages in flight (received, not deleted) per queue, as SQS's standard queues.
pub const MAX_IN_FLIGHT: i64 = 120_000;
/// How long a pull that found nothing waits, at most, for a first message (SQS's 20 s).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long an acknowledgement waits for the server's confirmation.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The stream recording each message's latest delivery (never a queue's `Q_…` name).
pub const RECEIPTS_STREAM: &str = "MINICLOUD_RECEIPTS";
/// How long a delivery is remembered: SQS's longest retention.
const LONGEST_RETENTION: Duration = Duration::from_secs(14 * 86_400);

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the JetStream server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("queue {queue}: {reason}")]
    Queue { queue: String, reason: String },
    #[error("the receipt handle is not one of this queue's (it is malformed, or another queue's)")]
    ReceiptHandleIsInvalid,
    #[error("the JetStream server did not confirm: {0}")]
    NotConfirmed(String),
}

/// How a queue behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long a received message stays invisible unless deleted (SQS: 0 s to 12 h).
    pub visibility_timeout: Duration,
    /// How long a message is kept (SQS: 60 s to 14 days).
    pub retention: Duration,
    /// The largest body accepted, in bytes (SQS: at most 256 KiB).
    pub maximum_message_size: usize,
}

impl Default for Settings {
    /// SQS's defaults: 30 s, 4 days, 256 KiB.
    fn default() -> Settings {
        Settings {
            visibility_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(345_600),
            maximum_message_size: 256 * 1024,
        }
    }
}

/// What SendMessage answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// Its position in the stream.
    pub sequence: u64,
}

/// One message handed out by a receive.
#[derive(Clone, Debug)]
pub struct Received {
    pub message_id: String,
    pub body: Bytes,
    /// What deletes it or changes its visibility, until it is received again.
    pub receipt_handle: String,
    /// How many times it has been received, this time included.
    pub receive_count: u64,
    /// When it was sent.
    pub sent: DateTime<Utc>,
}

/// How many messages a queue holds, approximately (as SQS's attributes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Ready to be received.
    pub visible: u64,
    /// Received and neither deleted nor visible again yet (delayed ones are among them once a
    /// receive has seen them).
    pub in_flight: u64,
    /// Every message the stream holds.
    pub total: u64,
}

/// A connection to one JetStream server.
#[derive(Clone)]
pub struct Engine {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    receipts: stream::Stream,
}

/// The subject recording a message's latest delivery: its stream and position.
fn receipt_subject(stream: &str, sequence: u64) -> String {
    format!("minicloud.receipts.{stream}.{sequence}")
}

fn queue_error(queue: &QueueRef, error: impl std::fmt::Display) -> EngineError {
    EngineError::Queue { queue: format!("{}/{}", queue.namespace, queue.name), reason: error.to_string() }
}

impl Engine {
    /// Connects to the server at `url` (`nats://127.0.0.1:PORT`).
    pub async fn connect(url: &str) -> Result<Engine, EngineError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|error| EngineError::Unreachable { url: url.to_owned(), reason: error.to_string() })?;
        let jetstream = jetstream::new(client.clone());
        let receipts = jetstream
            .create_or_update_stream(stream::Config {
                name: RECEIPTS_STREAM.to_owned(),
                subjects: vec!["minicloud.receipts.>".to_owned()],
                max_messages_per_subject: 1,
                max_age: LONGEST_RETENTION,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|error| EngineError::Unreachable { url: url.to_owned(), reason: error.to_string() })?;
        let receipts = jetstream
            .get_stream(receipts.config.name)
            .await
            .map_err(|error| EngineError::Unreachable { url: url.to_owned(), reason: error.to_string() })?;
        Ok(Engine { client, jetstream, receipts })
    }

    /// Creates the queue's stream and consumer, or brings them to `settings`.
    pub async fn ensure(&self, queue: &QueueRef, settings: &Settings) -> Result<(), EngineError> {
        let config = stream::Config {
            name: queue.stream(),
            subjects: vec![queue.subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: settings.retention,
            max_message_size: i32::try_from(settings.maximum_message_size).unwrap_or(i32::MAX),
            ..Default::default()
        };
        self.jetstream.create_or_update_stream(config).await.map_err(|error| queue_error(queue, error))?;
        let consumer_config = consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: settings.visibility_timeout.max(Duration::from_millis(1)),
            max_deliver: -1,
            max_ack_pending: MAX_IN_FLIGHT,
            ..Default::default()
        };
        // Creating a durable consumer that exists with other settings updates those JetStream
        // lets change (its ack wait among them).
        let stream = self.stream(queue).await?;
        stream.create_consumer(consumer_config).await.map_err(|error| queue_error(queue, error))?;
        Ok(())
    }

    /// Removes the queue and every message in it (nothing when it does not exist).
    pub async fn remove(&self, queue: &QueueRef) -> Result<(), EngineError> {
        match self.jetstream.delete_stream(queue.stream()).await {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("not found") => Ok(()),
            Err(error) => Err(queue_error(queue, error)),
        }
    }

    async fn stream(&self, queue: &QueueRef) -> Result<jetstream::stream::Stream, EngineError> {
        self.jetstream.get_stream(queue.stream()).await.map_err(|error| queue_error(queue, error))
    }

    async fn consumer(&self, queue: &QueueRef) -> Result<consumer::PullConsumer, EngineError> {
        self.stream(queue)
            .await?
            .get_consumer::<consumer::pull::Config>(CONSUMER)
            .await
            .map_err(|error| queue_error(queue, error))
    }

    /// Sends one message, visible after `delay`; answers once the server has stored it.
    pub async fn send(&self, queue: &QueueRef, body: Bytes, delay: Duration) -> Result<Sent, EngineError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MESSAGE_ID_HEADER, message_id.as_str());
        if !delay.is_zero() {
            let visible_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            headers.insert(VISIBLE_AT_HEADER, visible_at.timestamp_millis().to_string().as_str());
        }
        let acknowledged = self
            .jetstream
            .publish_with_headers(queue.subject(), headers, body)
            .await
            .map_err(|error| queue_error(queue, error))?
            .await
            .map_err(|error| queue_error(queue, error))?;
        Ok(Sent { message_id, sequence: acknowledged.sequence })
    }

    /// Receives up to `max` messages (1 to 10). With nothing to receive, waits up to `wait` for
    /// a first message and answers as soon as one comes. `visibility` overrides the queue's
    /// visibility timeout for these messages.
    pub async fn receive(
        &self,
        queue: &QueueRef,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, EngineError> {
        let consumer = self.consumer(queue).await?;
        let max = max.clamp(1, 10);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let mut received = self.take(queue, &consumer, max, None, visibility).await?;
            if received.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left < Duration::from_millis(10) {
                    return Ok(received);
                }
                // Waits for one message (answered at once when it comes), then takes what else
                // is there.
                received = self.take(queue, &consumer, 1, Some(left), visibility).await?;
                if received.is_empty() {
                    // Only delayed messages came: wait on, within the deadline.
                    continue;
                }
                if max > 1 {
                    received.extend(self.take(queue, &consumer, max - 1, None, visibility).await?);
                }
            }
            return Ok(received);
        }
    }

    /// One pull of up to `max` deliveries (see [`Engine::pull`]), given up when the server does
    /// not answer within `wait` and [`ACK_TIMEOUT`] more (a server gone away mid-pull).
    async fn take(
        &self,
        queue: &QueueRef,
        consumer: &consumer::PullConsumer,
        max: usize,
        wait: Option<Duration>,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, EngineError> {
        let limit = wait.unwrap_or_default() + ACK_TIMEOUT;
        tokio::time::timeout(limit, self.pull(queue, consumer, max, wait, visibility))
            .await
            .unwrap_or_else(|_| Err(EngineError::NotConfirmed(format!("no answer to a pull within {limit:?}"))))
    }

    /// One pull of up to `max` deliveries: what is there now (`wait` None), or waiting up to
    /// `wait` for them. Delayed messages not visible yet are put back, uncounted.
    async fn pull(
        &self,
        queue: &QueueRef,
        consumer: &consumer::PullConsumer,
        max: usize,
        wait: Option<Duration>,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, EngineError> {
        let mut batch = match wait {
            None => consumer.fetch().max_messages(max).messages().await.map_err(|error| queue_error(queue, error))?,
            Some(wait) => consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|error| queue_error(queue, error))?,
        };
        let mut received = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|error| queue_error(queue, error))?;
            let (reply, delivered, published, record) = {
                let info = message.info().map_err(|error| queue_error(queue, error))?;
                let published =
                    DateTime::<Utc>::from_timestamp(info.published.unix_timestamp(), info.published.nanosecond())
                        .unwrap_or_default();
                let reply = message.reply.clone().map(|reply| reply.to_string()).unwrap_or_default();
                (reply, info.delivered, published, receipt_subject(info.stream, info.stream_sequence))
            };
            let header = |name: &str| {
                message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.as_str().to_owned())
            };
            let visible_at = header(VISIBLE_AT_HEADER)
                .and_then(|millis| millis.parse::<i64>().ok())
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            // A delayed message's first delivery came before it was visible: put back until then.
            let delayed = visible_at.is_some();
            if let Some(visible_at) = visible_at.filter(|at| *at > Utc::now()) {
                let rest = (visible_at - Utc::now()).to_std().unwrap_or_default();
                message.ack_with(AckKind::Nak(Some(rest))).await.map_err(|error| queue_error(queue, error))?;
                continue;
            }
            // This delivery is the message's latest: earlier receipt handles stop working.
            self.jetstream
                .publish(record, Bytes::from(delivered.to_string()))
                .await
                .map_err(|error| queue_error(queue, error))?
                .await
                .map_err(|error| queue_error(queue, error))?;
            if let Some(visibility) = visibility {
                message.ack_with(AckKind::Nak(Some(visibility))).await.map_err(|error| queue_error(queue, error))?;
            }
            let delivered = u64::try_from(delivered).unwrap_or(0);
            received.push(Received {
                message_id: header(MESSAGE_ID_HEADER).unwrap_or_default(),
                body: message.payload.clone(),
                receipt_handle: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(reply.as_bytes()),
                receive_count: if delayed { delivered.saturating_sub(1).max(1) } else { delivered },
                sent: published,
            });
        }
        Ok(received)
    }

    /// The acknowledgement subject a receipt handle stands for, when it is one of `queue`'s,
    /// with the subject recording the message's latest delivery and the delivery it names.
    fn subject_of(queue: &QueueRef, receipt_handle: &str) -> Result<(String, String, u64), EngineError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(receipt_handle)
            .map_err(|_| EngineError::ReceiptHandleIsInvalid)?;
        let subject = String::from_utf8(bytes).map_err(|_| EngineError::ReceiptHandleIsInvalid)?;
        if !subject.starts_with(&queue.ack_prefix()) || !subject.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(EngineError::ReceiptHandleIsInvalid);
        }
        // $JS.ACK.STREAM.CONSUMER.DELIVERED.STREAM_SEQUENCE.CONSUMER_SEQUENCE.TIME.PENDING
        let tokens: Vec<&str> = subject.split('.').collect();
        let number = |index: usize| tokens.get(index).and_then(|token| token.parse::<u64>().ok());
        let (Some(delivered), Some(sequence), 9..) = (number(4), number(5), tokens.len()) else {
            return Err(EngineError::ReceiptHandleIsInvalid);
        };
        Ok((subject, receipt_subject(&queue.stream(), sequence), delivered))
    }

    /// Sends `kind` for a delivery, when it is the message's latest, and waits for the server
    /// to confirm it; answers the subject recording the message's latest delivery.
    async fn acknowledge(&self, queue: &QueueRef, receipt_handle: &str, kind: AckKind) -> Result<String, EngineError> {
        let (subject, record, delivered) = Self::subject_of(queue, receipt_handle)?;
        let latest = match self.receipts.get_last_raw_message_by_subject(&record).await {
            Ok(message) => Some(message.payload),
            Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(error) => return Err(queue_error(queue, error)),
        };
        if latest.as_deref() != Some(delivered.to_string().as_bytes()) {
            // Deleted already, or received again since.
            return Err(EngineError::ReceiptHandleIsInvalid);
        }
        let request = self.client.request(subject, Bytes::from(kind));
        match tokio::time::timeout(ACK_TIMEOUT, request).await {
            Ok(Ok(_)) => Ok(record),
            Ok(Err(error)) => Err(EngineError::NotConfirmed(error.to_string())),
            Err(_) => Err(EngineError::NotConfirmed(format!("no answer within {} s", ACK_TIMEOUT.as_secs()))),
        }
    }

    /// Deletes a received message (with the receipt handle of its latest receive); the handle
    /// stops working.
    pub async fn delete(&self, queue: &QueueRef, receipt_handle: &str) -> Result<(), EngineError> {
        let record = self.acknowledge(queue, receipt_handle, AckKind::Ack).await?;
        self.receipts.purge().filter(record).await.map_err(|error| queue_error(queue, error))?;
        Ok(())
    }

    /// Makes a received message visible again after `visibility` (0: at once).
    pub async fn change_visibility(
        &self,
        queue: &QueueRef,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), EngineError> {
        let kind = if visibility.is_zero() { AckKind::Nak(None) } else { AckKind::Nak(Some(visibility)) };
        self.acknowledge(queue, receipt_handle, kind).await.map(|_| ())
    }

    /// Deletes every message of the queue.
    pub async fn purge(&self, queue: &QueueRef) -> Result<(), EngineError> {
        self.stream(queue).await?.purge().await.map_err(|error| queue_error(queue, error))?;
        Ok(())
    }

    /// How many messages the queue holds.
    pub async fn counts(&self, queue: &QueueRef) -> Result<Counts, EngineError> {
        let mut stream = self.stream(queue).await?;
        let total = stream.info().await.map_err(|error| queue_error(queue, error))?.state.messages;
        let mut consumer = self.consumer(queue).await?;
        let info = consumer.info().await.map_err(|error| queue_error(queue, error))?;
        Ok(Counts { visible: info.num_pending, in_flight: info.num_ack_pending as u64, total })
    }
}
