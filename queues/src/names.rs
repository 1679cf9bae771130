//! What a queue is called in JetStream. Namespaces and queue names are DNS labels (lowercase
//! letters, digits and `-`), which never contain `_` or `.`: the stream `Q_NAMESPACE__NAME` and
//! the subject `minicloud.queue.NAMESPACE.NAME` of two queues are never the same (namespace
//! `a-b` with queue `c` and namespace `a` with queue `b-c` give `Q_a-b__c` and `Q_a__b-c`).

/// One queue: its namespace and name (both DNS labels, checked by the API before they get here).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueRef {
    pub namespace: String,
    pub name: String,
}

/// The durable consumer every queue is read through.
pub const CONSUMER: &str = "sqs";

impl QueueRef {
    pub fn new(namespace: &str, name: &str) -> QueueRef {
        QueueRef { namespace: namespace.to_owned(), name: name.to_owned() }
    }

    /// The stream holding the queue's messages.
    pub fn stream(&self) -> String {
        format!("Q_{}__{}", self.namespace, self.name)
    }

    /// The subject its messages are published to.
    pub fn subject(&self) -> String {
        format!("minicloud.queue.{}.{}", self.namespace, self.name)
    }

    /// What the acknowledgement subjects of its deliveries begin with: a receipt handle that
    /// does not begin so belongs to another queue.
    pub fn ack_prefix(&self) -> String {
        format!("$JS.ACK.{}.{CONSUMER}.", self.stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_concatenate_alike_stay_apart() {
        let (one, other) = (QueueRef::new("a-b", "c"), QueueRef::new("a", "b-c"));
        assert_ne!(one.stream(), other.stream());
        assert_ne!(one.subject(), other.subject());
        assert_eq!(one.stream(), "Q_a-b__c");
        assert_eq!(other.ack_prefix(), "$JS.ACK.Q_a__b-c.sqs.");
    }
}
