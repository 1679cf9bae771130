//! The change feed of a [`super::SqlStore`]: the change log read once per process and shared by
//! every watcher, instead of every watcher polling the database.
//!
//! One task reads new changes whenever a writer (here, or in another replica through
//! PostgreSQL `NOTIFY`) says the head moved, and at least once a second. It keeps the most
//! recent changes in memory (bounded by count and by bytes) and announces how far it has read.
//! A watcher within that window is served from memory: a write costs one query however many
//! watchers there are. A watcher behind the window (it started from an old revision, or its
//! client stopped reading for a while) replays from the database in pages, and at most
//! [`REPLAYS_AT_ONCE`] replays query at once, so that replays can never starve the pool; then
//! it joins the window.
//!
//! Each change is kept as its stored JSON document plus what filtering needs (kind, namespace,
//! labels), shared by every watcher: relaying a change to a thousand clients encodes nothing,
//! and memory holds documents, not decoded objects. Typed watchers (the controllers) decode
//! what they receive; a Secret's values reach them redacted (documents hold them sealed): a
//! controller that needs a value reads the Secret (`get` opens it).
//!
//! The feed measures watch lag: for each change it read while following the log, how long
//! after that read each watcher took it, per kind watched and per watcher (`controller` for
//! the typed watches of the reconcile loops, `client` for the API's watches). A watcher whose
//! consumer is slow (a client that does not read, a busy controller) shows it there. Changes
//! replayed from the database are not counted: a watcher replaying from an old revision asked
//! for history, it is not lagging.
//!
//! The ordering argument is the store's: the feed reads "changes after N" together with the
//! head revision in one statement, and revisions commit in order, so nothing is skipped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use minicloud_crds::Object;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sqlx::{AnyPool, Row};
use tokio::sync::{watch, Semaphore};

use super::{labels_of, OrStoreError};
use crate::store::{ChangeType, Query, RawChange, RawWatchStream, StoreError, StoreResult, WatchEvent, WatchStream};

/// How often the feed reads the change log when no wake-up arrives.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Changes read per query.
const PAGE: i64 = 1000;
/// Changes kept in memory at most.
const RECENT_CHANGES: usize = 4096;
/// Bytes of changes kept in memory at most.
const RECENT_BYTES: usize = 16 * 1024 * 1024;
/// Database replays running at once (the rest wait their turn).
pub const REPLAYS_AT_ONCE: usize = 2;
/// Events one watcher takes from memory per step (keeps its buffer small).
const EVENTS_PER_STEP: usize = 256;

/// One change, read once and shared.
struct Change {
    revision: i64,
    change: ChangeType,
    kind: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    document: Arc<str>,
    /// When the feed read it while following the log (`None`: replayed for one watcher).
    seen: Option<Instant>,
}

/// The labels of the watch lag histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    /// `controller` (typed watches) or `client` (the API's watches).
    watcher: String,
    /// The kind watched, or `all`.
    kind: String,
}

/// Seconds from the feed reading a change to a watcher taking it, per [`LagLabels`].
pub type WatchLag = Family<LagLabels, Histogram>;

fn lag_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Change {
    fn event(&self) -> StoreResult<WatchEvent> {
        let mut object: Object = serde_json::from_str(&self.document)?;
        minicloud_model::redact::redact_object(&mut object);
        Ok(WatchEvent { change: self.change, revision: self.revision, object })
    }

    fn raw(&self) -> StoreResult<RawChange> {
        Ok(RawChange { change: self.change, revision: self.revision, document: self.document.clone() })
    }

    fn matches(&self, query: &Query) -> bool {
        query.covers(&self.kind, &self.namespace, &self.labels)
    }
}

/// The window of recent changes: every change with a revision in `(floor, read]`.
struct Recent {
    changes: VecDeque<Arc<Change>>,
    bytes: usize,
    floor: i64,
    read: i64,
}

impl Recent {
    fn push(&mut self, change: Arc<Change>) {
        self.bytes += change.document.len();
        self.changes.push_back(change);
        while self.changes.len() > RECENT_CHANGES || self.bytes > RECENT_BYTES {
            let Some(oldest) = self.changes.pop_front() else { break };
            self.bytes -= oldest.document.len();
            self.floor = oldest.revision;
        }
    }

    /// Changes after `after` that match, at most `limit`; and the revision read up to.
    fn after(&self, after: i64, query: &Query, limit: usize) -> (Vec<Arc<Change>>, i64) {
        let start = self.changes.partition_point(|change| change.revision <= after);
        let mut matching = Vec::new();
        for change in self.changes.range(start..) {
            if matching.len() == limit {
                return (matching, change.revision - 1);
            }
            if change.matches(query) {
                matching.push(change.clone());
            }
        }
        (matching, self.read.max(after))
    }
}

/// The shared feed of one store.
pub struct Feed {
    recent: RwLock<Recent>,
    /// How far the feed has read (the newest revision it knows all changes up to).
    read: watch::Sender<i64>,
    replays: Semaphore,
    pool: AnyPool,
    lag: WatchLag,
}

impl Feed {
    /// A feed that has read everything up to `revision`, and the task that keeps it current:
    /// it reads whenever `head` moves and every [`FALLBACK_POLL`]; it stops when the feed is
    /// dropped.
    pub fn start(pool: AnyPool, revision: i64, head: watch::Receiver<i64>) -> Arc<Feed> {
        let feed = Arc::new(Feed {
            recent: RwLock::new(Recent { changes: VecDeque::new(), bytes: 0, floor: revision, read: revision }),
            read: watch::Sender::new(revision),
            replays: Semaphore::new(REPLAYS_AT_ONCE),
            pool,
            lag: WatchLag::new_with_constructor(lag_histogram as fn() -> Histogram),
        });
        tokio::spawn(follow(Arc::downgrade(&feed), head));
        feed
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, Recent> {
        // Every mutation completes before the lock is released: a poisoned lock holds
        // consistent data.
        self.recent.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The watch lag histograms (for `/metrics`).
    pub fn lag(&self) -> WatchLag {
        self.lag.clone()
    }

    /// Reads the changes after the feed's position, appending them to the window. True when
    /// it moved.
    async fn catch_up(&self) -> StoreResult<bool> {
        let mut moved = false;
        loop {
            let from = self.read_lock().read;
            let page = read_page(&self.pool, &Query::default(), from, Some(Instant::now())).await?;
            if page.compacted > from {
                // The feed fell behind compaction (it could not read for a long time): start
                // the window afresh; watchers behind it replay and learn they expired.
                let mut recent = self.recent.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                *recent = Recent { changes: VecDeque::new(), bytes: 0, floor: page.head, read: page.head };
                drop(recent);
                crate::store::advance_head(&self.read, page.head);
                return Ok(true);
            }
            let complete = page.complete;
            let reached = page.reached;
            {
                let mut recent = self.recent.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                for change in page.changes {
                    recent.push(change);
                }
                recent.read = recent.read.max(reached);
            }
            if reached > from {
                moved = true;
                crate::store::advance_head(&self.read, reached);
            }
            if complete {
                return Ok(moved);
            }
        }
    }

    /// The changes after `revision` that `query` covers, as a stream that ends only with an
    /// error (`Expired`).
    /// Its lag counts as a controller's.
    pub fn watch(self: &Arc<Feed>, query: Query, revision: i64) -> WatchStream {
        Box::pin(self.changes(query, revision, "controller", Change::event))
    }

    /// [`Feed::watch`] with each change's shared JSON document; its lag counts as a client's.
    pub fn watch_raw(self: &Arc<Feed>, query: Query, revision: i64) -> RawWatchStream {
        Box::pin(self.changes(query, revision, "client", Change::raw))
    }

    fn changes<T>(
        self: &Arc<Feed>,
        query: Query,
        revision: i64,
        watcher: &str,
        deliver: fn(&Change) -> StoreResult<T>,
    ) -> impl futures::Stream<Item = StoreResult<T>> + Send + 'static
    where
        T: Send + 'static,
    {
        let labels =
            LagLabels { watcher: watcher.to_owned(), kind: query.kind.map_or("all", |kind| kind.as_str()).to_owned() };
        let lag = self.lag.get_or_create(&labels).clone();
        let watcher = Watcher {
            lag,
            feed: self.clone(),
            query,
            last: revision,
            buffer: VecDeque::new(),
            read: self.read.subscribe(),
            finished: false,
        };
        futures::stream::unfold(watcher, move |mut watcher| async move {
            let item = watcher.next().await?;
            let delivered = item.and_then(|change| deliver(&change));
            // The stream ends with its first error.
            watcher.finished |= delivered.is_err();
            Some((delivered, watcher))
        })
    }
}

/// Keeps a feed current until it is dropped.
async fn follow(feed: std::sync::Weak<Feed>, mut head: watch::Receiver<i64>) {
    loop {
        let Some(current) = feed.upgrade() else { return };
        head.borrow_and_update();
        if let Err(error) = current.catch_up().await {
            tracing::warn!(%error, "cannot read the change log; watchers wait");
        }
        drop(current);
        let woken = tokio::time::timeout(FALLBACK_POLL, head.changed()).await;
        if matches!(woken, Ok(Err(_))) {
            // No writer can wake us any more (the store is gone): poll until the feed goes.
            tokio::time::sleep(FALLBACK_POLL).await;
        }
    }
}

/// One page of the change log.
struct Page {
    changes: Vec<Arc<Change>>,
    /// Every change up to here has been read (for the query's kind and namespace).
    reached: i64,
    /// The head revision of the snapshot.
    head: i64,
    compacted: i64,
    /// Fewer than a page: the snapshot's head was reached.
    complete: bool,
}

/// Reads the changes after `after` (of the query's kind and namespace; labels are the
/// caller's business) together with the head and compacted revisions, in one snapshot. The
/// changes are marked `seen` then (see [`Change::seen`]).
async fn read_page(pool: &AnyPool, query: &Query, after: i64, seen: Option<Instant>) -> StoreResult<Page> {
    let mut sql = String::from(
        "SELECT m.revision, m.compacted_revision, c.revision, c.change_type, c.body, c.kind, c.namespace FROM meta m \
         LEFT JOIN changes c ON c.revision > $1",
    );
    let mut binds = Vec::new();
    if let Some(kind) = query.kind {
        binds.push(kind.as_str().to_owned());
        sql.push_str(&format!(" AND c.kind = ${}", binds.len() + 1));
    }
    if let Some(namespace) = &query.namespace {
        binds.push(namespace.clone());
        sql.push_str(&format!(" AND c.namespace = ${}", binds.len() + 1));
    }
    sql.push_str(&format!(" WHERE m.id = 1 ORDER BY c.revision LIMIT {PAGE}"));
    let mut statement = sqlx::query(&sql).bind(after);
    for bind in binds {
        statement = statement.bind(bind);
    }
    let rows = statement.fetch_all(pool).await.db()?;
    let mut page = Page { changes: Vec::new(), reached: after, head: after, compacted: 0, complete: true };
    let mut read = 0;
    for row in &rows {
        page.head = row.try_get(0).db()?;
        page.compacted = row.try_get(1).db()?;
        let Some(revision) = row.try_get::<Option<i64>, _>(2).db()? else { continue };
        read += 1;
        let change = ChangeType::parse(&row.try_get::<String, _>(3).db()?)
            .ok_or_else(|| StoreError::Invalid("unknown change type in the change log".into()))?;
        let document = row.try_get::<String, _>(4).db()?;
        let labels = labels_of(&document)?;
        page.reached = revision;
        page.changes.push(Arc::new(Change {
            revision,
            change,
            kind: row.try_get(5).db()?,
            namespace: row.try_get(6).db()?,
            labels,
            document: document.into(),
            seen,
        }));
    }
    page.complete = read < PAGE;
    if page.complete {
        page.reached = page.reached.max(page.head);
    }
    Ok(page)
}

/// The state of one watch.
struct Watcher {
    feed: Arc<Feed>,
    /// Where this watcher's lag is recorded.
    lag: Histogram,
    query: Query,
    last: i64,
    buffer: VecDeque<Arc<Change>>,
    read: watch::Receiver<i64>,
    finished: bool,
}

impl Watcher {
    /// The next change, waiting as long as it takes; `None` after an error was delivered.
    async fn next(&mut self) -> Option<StoreResult<Arc<Change>>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                if let Some(seen) = event.seen {
                    self.lag.observe(seen.elapsed().as_secs_f64());
                }
                return Some(Ok(event));
            }
            self.read.borrow_and_update();
            match self.step().await {
                Ok(true) => continue,
                Ok(false) => {
                    if self.read.changed().await.is_err() {
                        return None;
                    }
                }
                Err(error) => {
                    self.finished = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Takes the next events from memory, or replays a page from the database when the
    /// window has moved past this watcher. True when it advanced.
    async fn step(&mut self) -> StoreResult<bool> {
        let start = self.last;
        {
            let recent = self.feed.read_lock();
            if self.last >= recent.floor {
                let (matching, reached) = recent.after(self.last, &self.query, EVENTS_PER_STEP);
                self.buffer.extend(matching);
                self.last = reached;
                return Ok(self.last > start);
            }
        }
        let _turn =
            self.feed.replays.acquire().await.map_err(|_| StoreError::Invalid("the store is closing".into()))?;
        let page = read_page(&self.feed.pool, &self.query, self.last, None).await?;
        if self.last < page.compacted {
            return Err(StoreError::Expired { requested: self.last, compacted: page.compacted });
        }
        let query = &self.query;
        self.buffer.extend(page.changes.into_iter().filter(|change| change.matches(query)));
        self.last = self.last.max(page.reached);
        Ok(self.last > start)
    }
}
