//! An in-memory [`Backend`] with etcd's semantics (one revision counter, leases that
//! survive plain puts), for unit tests of the store's consumers. Lease TTLs are not
//! simulated: a leased key lives until its guard is revoked or dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::{self, BoxFuture};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::object::{ObjectKey, RawObject, ResourceKind, DEFAULT_PREFIX};
use crate::store::{Backend, Lease, RawEvent, RawList, WriteMode};

/// See the module docs. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Entry>,
    revision: u64,
    next_lease: u64,
    watchers: Vec<(ResourceKind, mpsc::UnboundedSender<crate::Result<RawEvent>>)>,
}

struct Entry {
    raw: RawObject,
    lease: Option<u64>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn emit(&mut self, kind: ResourceKind, event: &RawEvent) {
        self.watchers
            .retain(|(k, tx)| *k != kind || tx.send(Ok(event.clone())).is_ok());
    }

    fn set(&mut self, key: ObjectKey, value: Vec<u8>, lease: Option<u64>) -> String {
        self.revision += 1;
        let raw = RawObject {
            key,
            value,
            resource_version: self.revision.to_string(),
        };
        self.objects.insert(
            raw.key.path(DEFAULT_PREFIX),
            Entry {
                raw: raw.clone(),
                lease,
            },
        );
        self.emit(raw.key.kind, &RawEvent::Upsert(raw));
        self.revision.to_string()
    }

    fn remove(&mut self, path: &str) -> bool {
        let Some(entry) = self.objects.remove(path) else {
            return false;
        };
        self.revision += 1;
        let key = entry.raw.key.clone();
        self.emit(
            key.kind,
            &RawEvent::Delete {
                key,
                last: Some(entry.raw),
            },
        );
        true
    }

    fn write(&mut self, key: ObjectKey, value: Vec<u8>, mode: &WriteMode) -> Result<String> {
        let path = key.path(DEFAULT_PREFIX);
        let existing = self.objects.get(&path);
        match mode {
            WriteMode::Create if existing.is_some() => {
                return Err(Error::AlreadyExists {
                    kind: key.kind.kind,
                    name: key.display_name(),
                })
            }
            WriteMode::Update { resource_version } => {
                if resource_version.parse::<u64>().is_err() {
                    return Err(Error::InvalidResourceVersion {
                        kind: key.kind.kind,
                        name: key.display_name(),
                        resource_version: resource_version.clone(),
                    });
                }
                match existing {
                    None => {
                        return Err(Error::NotFound {
                            kind: key.kind.kind,
                            name: key.display_name(),
                        })
                    }
                    Some(e) if e.raw.resource_version != *resource_version => {
                        return Err(Error::Conflict {
                            kind: key.kind.kind,
                            name: key.display_name(),
                            resource_version: resource_version.clone(),
                        })
                    }
                    Some(_) => {}
                }
            }
            _ => {}
        }
        let lease = existing.and_then(|e| e.lease);
        Ok(self.set(key, value, lease))
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn root(&self) -> &str {
        DEFAULT_PREFIX
    }

    fn get(&self, key: ObjectKey) -> BoxFuture<'_, Result<Option<RawObject>>> {
        let found = self
            .lock()
            .objects
            .get(&key.path(DEFAULT_PREFIX))
            .map(|e| e.raw.clone());
        Box::pin(future::ready(Ok(found)))
    }

    fn list(&self, kind: ResourceKind) -> BoxFuture<'_, Result<RawList>> {
        let inner = self.lock();
        let prefix = kind.prefix(DEFAULT_PREFIX);
        let list = RawList {
            items: inner
                .objects
                .range(prefix.clone()..)
                .take_while(|(path, _)| path.starts_with(&prefix))
                .map(|(_, e)| e.raw.clone())
                .collect(),
            invalid: Vec::new(),
            resource_version: inner.revision.to_string(),
        };
        Box::pin(future::ready(Ok(list)))
    }

    fn write(
        &self,
        key: ObjectKey,
        value: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'_, Result<String>> {
        let result = self.lock().write(key, value, &mode);
        Box::pin(future::ready(result))
    }

    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, Result<bool>> {
        let existed = self.lock().remove(&key.path(DEFAULT_PREFIX));
        Box::pin(future::ready(Ok(existed)))
    }

    fn watch(&self, kind: ResourceKind) -> BoxStream<'static, Result<RawEvent>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        let prefix = kind.prefix(DEFAULT_PREFIX);
        for (_, e) in inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
        {
            let _ = tx.send(Ok(RawEvent::Upsert(e.raw.clone())));
        }
        let _ = tx.send(Ok(RawEvent::Synced));
        inner.watchers.push((kind, tx));
        stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    fn write_with_lease(
        &self,
        key: ObjectKey,
        value: Vec<u8>,
        _ttl: Duration,
    ) -> BoxFuture<'_, Result<Box<dyn Lease>>> {
        let mut inner = self.lock();
        inner.next_lease += 1;
        let id = inner.next_lease;
        inner.set(key.clone(), value, Some(id));
        drop(inner);
        let lease: Box<dyn Lease> = Box::new(MemoryLease {
            backend: self.clone(),
            key,
            id,
        });
        Box::pin(future::ready(Ok(lease)))
    }
}

struct MemoryLease {
    backend: MemoryBackend,
    key: ObjectKey,
    id: u64,
}

impl MemoryLease {
    fn end(&self) {
        let mut inner = self.backend.lock();
        let leased: Vec<String> = inner
            .objects
            .iter()
            .filter(|(_, e)| e.lease == Some(self.id))
            .map(|(path, _)| path.clone())
            .collect();
        for path in leased {
            inner.remove(&path);
        }
    }
}

impl Lease for MemoryLease {
    fn update(
        &self,
        value: Vec<u8>,
        resource_version: Option<String>,
    ) -> BoxFuture<'_, Result<String>> {
        let mut inner = self.backend.lock();
        let result = match resource_version {
            None => Ok(inner.set(self.key.clone(), value, Some(self.id))),
            Some(resource_version) => inner
                .write(
                    self.key.clone(),
                    value,
                    &WriteMode::Update { resource_version },
                )
                .inspect(|_| {
                    if let Some(entry) = inner.objects.get_mut(&self.key.path(DEFAULT_PREFIX)) {
                        entry.lease = Some(self.id);
                    }
                }),
        };
        Box::pin(future::ready(result))
    }

    fn revoke(&self) -> BoxFuture<'_, Result<()>> {
        self.end();
        Box::pin(future::ready(Ok(())))
    }

    fn release(&self) {
        self.end();
    }

    /// TTLs are not simulated: the key stays.
    fn abandon(&self) {}
}
