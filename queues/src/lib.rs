//! minicloud's message queues: SQS semantics on NATS JetStream. A queue is one JetStream
//! stream (file storage, work-queue retention: a deleted message is gone from the disk) and
//! one durable pull consumer with explicit acknowledgements; JetStream keeps the messages, the
//! deliveries and their timers. This crate maps the SQS operations onto them ([`engine`]) and
//! names what a queue is in JetStream ([`names`]).
//!
//! | SQS | JetStream |
//! |---|---|
//! | SendMessage | publish to the queue's subject (a message id and, with a delay, the time it becomes visible, in headers) |
//! | ReceiveMessage | a pull from the consumer; long polling is a pull that waits, returning at the first message |
//! | visibility timeout | the consumer's `ack_wait`: a message not acknowledged in time is delivered again |
//! | VisibilityTimeout of one receive, ChangeMessageVisibility | `-NAK {"delay": …}`: delivered again after that time (0: at once) |
//! | ApproximateReceiveCount | the delivery count JetStream keeps |
//! | DeleteMessage | `+ACK` (work-queue retention removes the message) |
//! | DelaySeconds | not visible before the time in its header: its first delivery is put back (`-NAK` with the rest of the delay), which is not counted as a receive |
//! | PurgeQueue | purge the stream |

pub mod engine;
pub mod names;

pub use engine::{Counts, Engine, EngineError, Received, Sent, Settings};
pub use names::QueueRef;
