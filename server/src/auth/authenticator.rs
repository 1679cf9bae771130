//! The authenticator: turns the token a request carries into a [`Principal`], or says why it
//! cannot (missing, malformed, unknown, expired, revoked); and holds what is counted per token
//! (the request rate, open watches).
//!
//! Lookups are cached for [`CACHE_FOR`], so a busy client costs one store read per few seconds;
//! a revocation through this server empties the cache at once, one through another replica is
//! seen within [`CACHE_FOR`]. A token's last use is written at most once a minute.
//!
//! The server's own clients (a `--sync` beside it) use an internal token that lives in memory
//! only and is gone when the process ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::access::{AccessError, AccessStore};
use super::rate::{Buckets, Rate};
use super::tokens::{self, TokenRecord};
use super::{Principal, Role};

/// How long a looked-up token is trusted without reading the store again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// Cached lookups at most (the cache is emptied when it is full).
const CACHE_ENTRIES: usize = 10_000;
/// How often a token's last use is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Why a request is not authenticated (a 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("this server requires a token: send `Authorization: Bearer TOKEN` (cloud: --token, CLOUD_TOKEN or a context in the config file; `cloud auth token create` makes one)")]
    Missing,
    #[error("the token is malformed: a minicloud token is `mc_` followed by 43 characters (was it copied whole?)")]
    Malformed,
    #[error("the token is not one this server issued (or its store was reset); ask an administrator for a new one")]
    Unknown,
    #[error("token {name:?} expired at {at}; ask an administrator for a new one")]
    Expired { name: String, at: DateTime<Utc> },
    #[error("token {name:?} was revoked at {at}; ask an administrator for a new one")]
    Revoked { name: String, at: DateTime<Utc> },
    #[error("cannot check the token: {0}")]
    Store(#[from] AccessError),
    /// The shared rate of requests without a valid token is spent; try again after this.
    #[error("too many requests without a valid token reach this server")]
    TooMany(Duration),
}

/// The limits applied per token.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Requests per token.
    pub rate: Rate,
    /// Requests carrying no valid token, all together (each costs a store lookup or a log line).
    pub unauthenticated_rate: Rate,
    /// Watch streams (including the console's) one token may hold open at once.
    pub watches_per_token: usize,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            rate: Rate { per_second: 50.0, burst: 200 },
            unauthenticated_rate: Rate { per_second: 20.0, burst: 100 },
            watches_per_token: 100,
        }
    }
}

struct Cached {
    record: Option<TokenRecord>,
    fetched: Instant,
}

/// Authentication and per-token accounting of one server.
pub struct Authenticator {
    store: Arc<dyn AccessStore>,
    settings: AuthSettings,
    cache: Mutex<HashMap<String, Cached>>,
    touched: Mutex<HashMap<String, Instant>>,
    /// The internal token's hash and who it stands for.
    internal: Option<(String, Principal)>,
    requests: Buckets,
    unauthenticated: Buckets,
    watches: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn AccessStore>, settings: AuthSettings) -> Authenticator {
        Authenticator {
            store,
            requests: Buckets::new(settings.rate),
            unauthenticated: Buckets::new(settings.unauthenticated_rate),
            settings,
            cache: Mutex::default(),
            touched: Mutex::default(),
            internal: None,
            watches: Mutex::default(),
        }
    }

    /// Makes a token for the server's own clients, valid in this process only, with `role`
    /// everywhere; returns its text.
    pub fn add_internal_token(&mut self, name: &str, role: Role) -> String {
        let secret = tokens::generate();
        let principal = Principal { internal: true, ..Principal::token(name, role, None) };
        self.internal = Some((secret.hash, principal));
        secret.text
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Who `token` stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        Ok(self.authenticate_until(token).await?.0)
    }

    /// Who `token` stands for, and until when (`None`: until revoked). A token that is not
    /// the internal one nor found valid within the lookup cache's time (missing ones are the
    /// caller's to count) spends one request of the shared unauthenticated rate before anything
    /// is read: a flood of made-up tokens costs no store reads beyond that rate.
    pub async fn authenticate_until(&self, token: &str) -> Result<(Principal, Option<DateTime<Utc>>), AuthError> {
        if !tokens::well_formed(token) {
            self.take_unauthenticated().map_err(AuthError::TooMany)?;
            return Err(AuthError::Malformed);
        }
        let hash = tokens::hash(token);
        if let Some((internal, principal)) = &self.internal {
            if *internal == hash {
                return Ok((principal.clone(), None));
            }
        }
        let record = match self.cached(&hash) {
            Some(Some(record)) => record,
            cached => {
                self.take_unauthenticated().map_err(AuthError::TooMany)?;
                let record = match cached {
                    Some(known) => known,
                    None => self.lookup(&hash).await?,
                };
                record.ok_or(AuthError::Unknown)?
            }
        };
        let now = Utc::now();
        if let Some(at) = record.revoked_at {
            return Err(AuthError::Revoked { name: record.name, at });
        }
        if let Some(at) = record.expires_at.filter(|expiry| *expiry <= now) {
            return Err(AuthError::Expired { name: record.name, at });
        }
        self.touch(&record.name, now);
        Ok((Principal::token(&record.name, record.role, record.namespace), record.expires_at))
    }

    /// What a lookup within the cache's time found (`Some(None)`: no such token).
    fn cached(&self, hash: &str) -> Option<Option<TokenRecord>> {
        let now = Instant::now();
        self.lock_cache()
            .get(hash)
            .filter(|cached| now.duration_since(cached.fetched) < CACHE_FOR)
            .map(|cached| cached.record.clone())
    }

    /// Reads a token's record from the store and keeps it for [`CACHE_FOR`].
    async fn lookup(&self, hash: &str) -> Result<Option<TokenRecord>, AccessError> {
        let now = Instant::now();
        let record = self.store.token_by_hash(hash).await?;
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(hash.to_owned(), Cached { record: record.clone(), fetched: now });
        Ok(record)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets every cached lookup (after a token changed through this server).
    pub fn forget_cached(&self) {
        self.lock_cache().clear();
    }

    /// Writes the token's last use, when the last write is a minute old (in the background).
    fn touch(&self, name: &str, now: DateTime<Utc>) {
        let due = {
            let mut touched = self.touched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let instant = Instant::now();
            match touched.get(name) {
                Some(last) if instant.duration_since(*last) < TOUCH_EVERY => false,
                _ => {
                    touched.insert(name.to_owned(), instant);
                    true
                }
            }
        };
        if due {
            let store = self.store.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                if let Err(error) = store.touch_token(&name, now).await {
                    tracing::warn!(%error, token = %name, "cannot record the token's last use");
                }
            });
        }
    }

    /// Spends one request of `principal`'s rate, or says how long to wait. The server's own
    /// identity is not limited.
    pub fn take_request(&self, principal: &Principal) -> Result<(), Duration> {
        if principal.internal {
            return Ok(());
        }
        self.requests.take(&principal.name, Instant::now())
    }

    /// Spends one request of the shared rate of requests without a valid token.
    pub fn take_unauthenticated(&self) -> Result<(), Duration> {
        self.unauthenticated.take("", Instant::now())
    }

    /// A place for one more watch of `principal`, held as long as the watch runs; `None` when
    /// the token already holds [`AuthSettings::watches_per_token`].
    pub fn watch_permit(&self, principal: &Principal) -> Option<OwnedSemaphorePermit> {
        if principal.internal {
            return Arc::new(Semaphore::new(1)).try_acquire_owned().ok();
        }
        let semaphore = self
            .watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(principal.name.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.watches_per_token)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}
