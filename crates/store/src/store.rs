//! The seam: [`Backend`] (dyn-compatible, raw JSON values, one impl per source) and
//! [`Store`] (typed, what the agent and operator use).

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::object::{decode, encode, Object, ObjectKey, RawObject, ResourceKind};

/// A change to an object of type `T`, as a Kubernetes informer reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<T> {
    /// The object was created or changed (or was there when the watch (re)listed).
    Upsert(T),
    /// The object is gone; `last` is its last value when it was known and decodable.
    Delete {
        namespace: Option<String>,
        name: String,
        last: Option<T>,
    },
    /// Everything that existed at the list has been reported: the consumer's view is
    /// complete. Sent after the initial list and again after every re-list (after the
    /// backend was unreachable), each time followed by changes only.
    Synced,
}

/// [`Event`] before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Upsert(RawObject),
    Delete {
        key: ObjectKey,
        last: Option<RawObject>,
    },
    Synced,
}

/// How [`Backend::write`] treats an existing object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with [`Error::AlreadyExists`] if it exists.
    Create,
    /// Create or overwrite. An existing key keeps its lease.
    Put,
    /// Overwrite only if the object's resource version is still this one
    /// ([`Error::Conflict`], [`Error::NotFound`] otherwise). Keeps the lease.
    Update { resource_version: String },
}

/// A list with the resource version it was taken at.
#[derive(Debug, Default)]
pub struct RawList {
    pub items: Vec<RawObject>,
    /// Keys under the kind's prefix that are not object keys (reported, not fatal).
    pub invalid: Vec<Error>,
    pub resource_version: String,
}

/// One source of cluster state (etcd now; the Kubernetes API later). Dyn-compatible:
/// [`Store`] holds an `Arc<dyn Backend>` and does the typing, so a new source is one
/// impl of this trait and no change to the agent.
///
/// Values are the objects' JSON without `metadata.resourceVersion`; resource versions
/// are opaque strings the backend hands out.
pub trait Backend: Send + Sync + 'static {
    /// `etcd`, `memory`: for messages.
    fn name(&self) -> &'static str;

    /// The root of keys, for messages: `/ciliate`.
    fn root(&self) -> &str;

    fn get(&self, key: ObjectKey) -> BoxFuture<'_, Result<Option<RawObject>>>;

    /// All objects of a kind, in all namespaces, ordered by key.
    fn list(&self, kind: ResourceKind) -> BoxFuture<'_, Result<RawList>>;

    /// Writes a value; returns the new resource version.
    fn write(
        &self,
        key: ObjectKey,
        value: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'_, Result<String>>;

    /// Deletes; true if the object existed.
    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, Result<bool>>;

    /// Every object of the kind as `Upsert`, then `Synced`, then every change in order,
    /// with no change lost or repeated between list and watch. Never ends by itself:
    /// when the backend is unreachable it yields the error, retries, re-lists (reporting
    /// what changed meanwhile, deletes included) and sends `Synced` again.
    fn watch(&self, kind: ResourceKind) -> BoxStream<'static, Result<RawEvent>>;

    /// Writes the value bound to a lease of `ttl` that the backend keeps alive until the
    /// returned handle is revoked or dropped; if this process dies the lease expires
    /// and the key is deleted.
    fn write_with_lease(
        &self,
        key: ObjectKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Box<dyn Lease>>>;
}

/// A backend's lease (see [`LeaseGuard`]).
pub trait Lease: Send + Sync {
    /// Writes a new value for the leased key under the same lease; returns its resource
    /// version. With `resource_version`, only if the key still has that version
    /// ([`Error::Conflict`] or [`Error::NotFound`] otherwise). The value written is also
    /// what is written again if the lease is ever lost and granted anew; a refused
    /// write does not change that.
    fn update(
        &self,
        value: Vec<u8>,
        resource_version: Option<String>,
    ) -> BoxFuture<'_, Result<String>>;

    /// Ends the lease now, deleting the key; waits for the backend to confirm.
    fn revoke(&self) -> BoxFuture<'_, Result<()>>;

    /// Stops keeping the lease alive and revokes it in the background (used on drop;
    /// needs a tokio runtime, otherwise the lease simply expires).
    fn release(&self);

    /// Stops keeping the lease alive without revoking it: the key lives until the
    /// lease's TTL runs out (a backend without TTLs keeps it).
    fn abandon(&self);
}

/// A key kept alive by a lease. Dropping it (or [`LeaseGuard::revoke`]) deletes the key;
/// [`LeaseGuard::abandon`] stops the keepalive and lets it expire; if the process dies the
/// lease expires after its TTL and watchers see `Delete`.
pub struct LeaseGuard<T> {
    lease: Option<Box<dyn Lease>>,
    key: ObjectKey,
    _object: PhantomData<fn(T)>,
}

impl<T: Object> LeaseGuard<T> {
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    /// Writes a new value of the object (same name) under the same lease, with
    /// [`Store::put`]'s rules: an object carrying `metadata.resourceVersion` is written
    /// only if the stored one is still that version ([`Error::Conflict`] otherwise, or
    /// [`Error::NotFound`] if it is gone: get it again and retry); clear the field to
    /// overwrite. The written value is what the backend writes again if the lease is
    /// lost and granted anew.
    pub async fn update(&self, object: &T) -> Result<T> {
        let key = ObjectKey::of(object)?;
        if key != self.key {
            return Err(Error::InvalidName {
                kind: T::KIND,
                name: key.display_name(),
                reason: "a lease guard only updates the object it was made for",
            });
        }
        let value = encode(object, &key)?;
        let expected = object.resource_version().map(str::to_string);
        let rv = self.lease().update(value, expected).await?;
        Ok(with_resource_version(object, rv))
    }

    /// Stops keeping the lease alive without revoking it: the key stays until the
    /// lease's TTL runs out. For a process that stops but means to come back within
    /// the TTL, so that the others keep what they know about it meanwhile.
    pub fn abandon(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.abandon();
        }
    }

    /// Revokes the lease and waits until the backend has deleted the key.
    pub async fn revoke(mut self) -> Result<()> {
        let lease = self
            .lease
            .take()
            .expect("lease present until revoke or drop");
        lease.revoke().await
    }

    fn lease(&self) -> &dyn Lease {
        self.lease
            .as_deref()
            .expect("lease present until revoke or drop")
    }
}

impl<T> Drop for LeaseGuard<T> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl<T> std::fmt::Debug for LeaseGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The result of [`Store::list`]: the objects that decoded, and an error for each that
/// did not (reported, not fatal).
#[derive(Debug)]
pub struct ObjectList<T> {
    pub items: Vec<T>,
    pub invalid: Vec<Error>,
    pub resource_version: String,
}

/// The typed face of a [`Backend`]: what agents and the operator hold. Cheap to clone.
///
/// `put` follows Kubernetes' update rules: an object carrying
/// `metadata.resourceVersion` (as every object from `get`, `list` and `watch` does) is
/// written only if it has not changed since ([`Error::Conflict`] otherwise); clear the
/// field to overwrite unconditionally.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Store {
    pub fn new(backend: impl Backend) -> Self {
        Self {
            backend: Arc::new(backend),
        }
    }

    pub fn from_backend(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Connects to etcd and checks it answers ([`Error::Unreachable`] otherwise).
    pub async fn etcd(config: crate::EtcdConfig) -> Result<Self> {
        Ok(Self::new(crate::EtcdBackend::connect(config).await?))
    }

    /// A fresh in-memory store, for tests of consumers.
    pub fn memory() -> Self {
        Self::new(crate::MemoryBackend::new())
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The object, or None. `namespace` must be given exactly for namespaced kinds.
    pub async fn get<T: Object>(&self, namespace: Option<&str>, name: &str) -> Result<Option<T>> {
        let key = ObjectKey::new(T::RESOURCE, namespace, name)?;
        match self.backend.get(key).await? {
            Some(raw) => decode(&raw, self.backend.root()).map(Some),
            None => Ok(None),
        }
    }

    /// All objects of the kind, in all namespaces, ordered by namespace and name.
    pub async fn list<T: Object>(&self) -> Result<ObjectList<T>> {
        let raw = self.backend.list(T::RESOURCE).await?;
        let mut list = ObjectList {
            items: Vec::with_capacity(raw.items.len()),
            invalid: raw.invalid,
            resource_version: raw.resource_version,
        };
        for item in &raw.items {
            match decode(item, self.backend.root()) {
                Ok(object) => list.items.push(object),
                Err(e) => list.invalid.push(e),
            }
        }
        Ok(list)
    }

    /// Creates or updates; returns the object as stored (with its new resourceVersion).
    pub async fn put<T: Object>(&self, object: &T) -> Result<T> {
        let mode = match object.resource_version() {
            Some(rv) => WriteMode::Update {
                resource_version: rv.to_string(),
            },
            None => WriteMode::Put,
        };
        self.write(object, mode).await
    }

    /// Compare-and-swap: writes the object only if it is unchanged since it was read
    /// (its `metadata.resourceVersion`, which must be set, is still the stored one);
    /// [`Error::Conflict`] otherwise (get it again and retry), [`Error::NotFound`] if it
    /// is gone. Keeps the key's lease, so an object an agent registered with
    /// [`Store::put_with_lease`] stays bound to the agent.
    pub async fn update<T: Object>(&self, object: &T) -> Result<T> {
        let Some(rv) = object.resource_version() else {
            return Err(Error::InvalidResourceVersion {
                kind: T::KIND,
                name: ObjectKey::of(object)?.display_name(),
                resource_version: String::new(),
            });
        };
        let mode = WriteMode::Update {
            resource_version: rv.to_string(),
        };
        self.write(object, mode).await
    }

    /// Creates; [`Error::AlreadyExists`] if the name is taken.
    pub async fn create<T: Object>(&self, object: &T) -> Result<T> {
        self.write(object, WriteMode::Create).await
    }

    /// Deletes; true if the object existed.
    pub async fn delete<T: Object>(&self, namespace: Option<&str>, name: &str) -> Result<bool> {
        let key = ObjectKey::new(T::RESOURCE, namespace, name)?;
        self.backend.delete(key).await
    }

    /// Every object as `Upsert`, then `Synced`, then changes (see [`Backend::watch`]).
    /// An object that does not decode is reported as an `Err` item and skipped; so are
    /// backend errors, after which the stream retries by itself. Drop the stream to stop.
    pub fn watch<T: Object>(&self) -> BoxStream<'static, Result<Event<T>>> {
        let root = self.backend.root().to_string();
        self.backend
            .watch(T::RESOURCE)
            .map(move |item| match item? {
                RawEvent::Upsert(raw) => decode(&raw, &root).map(Event::Upsert),
                RawEvent::Delete { key, last } => Ok(Event::Delete {
                    last: last.and_then(|raw| decode(&raw, &root).ok()),
                    namespace: key.namespace,
                    name: key.name,
                }),
                RawEvent::Synced => Ok(Event::Synced),
            })
            .boxed()
    }

    /// Writes the object bound to a lease of `ttl` (etcd rounds up to whole seconds and
    /// to its minimum, about 2 s), kept alive until the guard is dropped or revoked.
    /// Overwrites an existing object of that name (a restarted agent re-registering).
    pub async fn put_with_lease<T: Object>(
        &self,
        object: &T,
        ttl: Duration,
    ) -> Result<LeaseGuard<T>> {
        let key = ObjectKey::of(object)?;
        let value = encode(object, &key)?;
        let lease = self
            .backend
            .write_with_lease(key.clone(), value, ttl)
            .await?;
        Ok(LeaseGuard {
            lease: Some(lease),
            key,
            _object: PhantomData,
        })
    }

    async fn write<T: Object>(&self, object: &T, mode: WriteMode) -> Result<T> {
        let key = ObjectKey::of(object)?;
        let value = encode(object, &key)?;
        let rv = self.backend.write(key, value, mode).await?;
        Ok(with_resource_version(object, rv))
    }
}

fn with_resource_version<T: Object>(object: &T, rv: String) -> T {
    let mut object = object.clone();
    object.metadata_mut().resource_version = Some(rv);
    object
}

/// A stream fed by a background task, which is aborted when the stream is dropped.
pub(crate) struct TaskStream<T> {
    rx: mpsc::Receiver<T>,
    task: JoinHandle<()>,
}

impl<T> TaskStream<T> {
    pub(crate) fn new(rx: mpsc::Receiver<T>, task: JoinHandle<()>) -> Self {
        Self { rx, task }
    }
}

impl<T> Stream for TaskStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Drop for TaskStream<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
