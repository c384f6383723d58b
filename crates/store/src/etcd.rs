//! The etcd [`Backend`] (etcd v3 API; tested against Debian's etcd 3.4).
//!
//! Keys: `<prefix>/<kind lowercase>/<namespace or _>/<name>` (prefix `/ciliate` by
//! default), values: the object's JSON without `resourceVersion`; the key's
//! `mod_revision` is the object's resourceVersion.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{BoxError, Error, Result};
use crate::object::{ObjectKey, RawObject, ResourceKind, DEFAULT_PREFIX};
use crate::store::{Backend, Lease, RawEvent, RawList, TaskStream, WriteMode};

const BACKEND: &str = "etcd";

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `http://127.0.0.1:2379`; several for a cluster.
    pub endpoints: Vec<String>,
    /// Root of our keys; `/ciliate`.
    pub prefix: String,
    /// For establishing a connection, and for the reachability check of `connect`.
    pub connect_timeout: Duration,
    /// For each single request (not for watches, which last).
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: DEFAULT_PREFIX.into(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdConfig {
    /// One endpoint, defaults otherwise.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            ..Self::default()
        }
    }
}

/// The etcd backend. Clones share one connection.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
    config: Arc<EtcdConfig>,
}

impl EtcdBackend {
    /// Connects and checks that etcd answers ([`Error::Unreachable`] otherwise).
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let backend = Self::connect_lazy(config).await?;
        backend.check().await?;
        Ok(backend)
    }

    /// Sets up the connection without waiting for etcd: requests fail with
    /// [`Error::Unreachable`] until it is there, and watches retry until it is.
    pub async fn connect_lazy(config: EtcdConfig) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| Error::Unreachable {
                backend: BACKEND,
                endpoints: config.endpoints.join(","),
                source: Box::new(e),
            })?;
        Ok(Self {
            client,
            config: Arc::new(config),
        })
    }

    /// Asks etcd for its status within the connect timeout.
    pub async fn check(&self) -> Result<()> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.config.connect_timeout, client.status()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.unreachable(Box::new(e))),
            Err(_) => Err(self.unreachable(timed_out(self.config.connect_timeout))),
        }
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The underlying client, for tools and tests that need raw access.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    fn unreachable(&self, source: BoxError) -> Error {
        Error::Unreachable {
            backend: BACKEND,
            endpoints: self.endpoints(),
            source,
        }
    }

    fn classify(&self, op: &'static str, key: &str, e: etcd_client::Error) -> Error {
        use etcd_client::Error as E;
        let unreachable = match &e {
            E::TransportError(_) | E::IoError(_) => true,
            // A connection that broke under a stream (etcd killed) comes back as
            // Unknown with the transport's error as its source.
            E::GRpcStatus(s) => match s.code() as i32 {
                grpc_code::UNAVAILABLE | grpc_code::DEADLINE_EXCEEDED => true,
                grpc_code::UNKNOWN => std::error::Error::source(s).is_some(),
                _ => false,
            },
            _ => false,
        };
        if unreachable {
            self.unreachable(Box::new(e))
        } else {
            Error::Backend {
                backend: BACKEND,
                op,
                key: key.to_string(),
                source: Box::new(e),
            }
        }
    }

    /// Runs one request with the request timeout and classifies its error.
    async fn call<T>(
        &self,
        op: &'static str,
        key: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(op, key, e)),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                op,
                key: key.to_string(),
                timeout: self.config.request_timeout,
            }),
        }
    }

    async fn list_at(&self, kind: ResourceKind) -> Result<(RawList, i64)> {
        let prefix = kind.prefix(&self.config.prefix);
        let mut client = self.client.clone();
        let response = self
            .call(
                "list",
                &prefix,
                client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        let mut items = Vec::with_capacity(response.kvs().len());
        let mut invalid = Vec::new();
        for kv in response.kvs() {
            match self.raw_object(kind, kv) {
                Ok(raw) => items.push(raw),
                Err(e) => invalid.push(e),
            }
        }
        let list = RawList {
            items,
            invalid,
            resource_version: revision.to_string(),
        };
        Ok((list, revision))
    }

    fn raw_object(&self, kind: ResourceKind, kv: &KeyValue) -> Result<RawObject> {
        Ok(RawObject {
            key: self.parse_key(kind, kv.key())?,
            value: kv.value().to_vec(),
            resource_version: kv.mod_revision().to_string(),
        })
    }

    fn parse_key(&self, kind: ResourceKind, key: &[u8]) -> Result<ObjectKey> {
        let path = String::from_utf8_lossy(key);
        ObjectKey::parse(kind, &self.config.prefix, &path)
    }

    async fn grant_and_put(
        &self,
        path: &str,
        value: Vec<u8>,
        ttl_secs: i64,
    ) -> Result<(i64, i64, i64)> {
        let mut client = self.client.clone();
        let grant = self
            .call("lease grant", path, client.lease_grant(ttl_secs, None))
            .await?;
        let put = self
            .call(
                "put",
                path,
                client.put(path, value, Some(PutOptions::new().with_lease(grant.id()))),
            )
            .await?;
        let revision = put
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        Ok((grant.id(), grant.ttl(), revision))
    }
}

/// gRPC status codes (tonic's `Code` as i32), without depending on tonic ourselves.
mod grpc_code {
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const UNAVAILABLE: i32 = 14;
}

fn timed_out(after: Duration) -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {after:?}"),
    ))
}

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn root(&self) -> &str {
        &self.config.prefix
    }

    fn get(&self, key: ObjectKey) -> BoxFuture<'_, Result<Option<RawObject>>> {
        Box::pin(async move {
            let path = key.path(&self.config.prefix);
            let mut client = self.client.clone();
            let response = self
                .call("get", &path, client.get(path.as_str(), None))
                .await?;
            Ok(response.kvs().first().map(|kv| RawObject {
                key,
                value: kv.value().to_vec(),
                resource_version: kv.mod_revision().to_string(),
            }))
        })
    }

    fn list(&self, kind: ResourceKind) -> BoxFuture<'_, Result<RawList>> {
        Box::pin(async move { Ok(self.list_at(kind).await?.0) })
    }

    fn write(
        &self,
        key: ObjectKey,
        value: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let path = key.path(&self.config.prefix);
            let keep_lease = Some(PutOptions::new().with_ignore_lease());
            let txn = match &mode {
                WriteMode::Create => Txn::new()
                    .when([Compare::version(path.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(path.as_str(), value, None)]),
                // ignore_lease keeps an existing key's lease (an agent's registration
                // stays bound to the agent when the operator writes its PodCIDRs);
                // etcd refuses it for a missing key, hence the two branches.
                WriteMode::Put => Txn::new()
                    .when([Compare::version(path.as_str(), CompareOp::Greater, 0)])
                    .and_then([TxnOp::put(path.as_str(), value.clone(), keep_lease)])
                    .or_else([TxnOp::put(path.as_str(), value, None)]),
                WriteMode::Update { resource_version } => {
                    let revision = resource_version
                        .parse::<i64>()
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or_else(|| Error::InvalidResourceVersion {
                            kind: key.kind.kind,
                            name: key.display_name(),
                            resource_version: resource_version.clone(),
                        })?;
                    Txn::new()
                        .when([Compare::mod_revision(
                            path.as_str(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::put(path.as_str(), value, keep_lease)])
                        .or_else([TxnOp::get(path.as_str(), None)])
                }
            };
            let mut client = self.client.clone();
            let response = self.call("write", &path, client.txn(txn)).await?;
            if response.succeeded() || mode == WriteMode::Put {
                let revision = response
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision);
                return Ok(revision.to_string());
            }
            let (kind, name) = (key.kind.kind, key.display_name());
            Err(match mode {
                WriteMode::Update { resource_version } => {
                    let exists = response
                        .op_responses()
                        .iter()
                        .any(|r| matches!(r, TxnOpResponse::Get(get) if !get.kvs().is_empty()));
                    if exists {
                        Error::Conflict {
                            kind,
                            name,
                            resource_version,
                        }
                    } else {
                        Error::NotFound { kind, name }
                    }
                }
                _ => Error::AlreadyExists { kind, name },
            })
        })
    }

    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let path = key.path(&self.config.prefix);
            let mut client = self.client.clone();
            let response = self
                .call("delete", &path, client.delete(path.as_str(), None))
                .await?;
            Ok(response.deleted() > 0)
        })
    }

    fn watch(&self, kind: ResourceKind) -> BoxStream<'static, Result<RawEvent>> {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(watch_task(self.clone(), kind, tx));
        TaskStream::new(rx, task).boxed()
    }

    fn write_with_lease(
        &self,
        key: ObjectKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Box<dyn Lease>>> {
        Box::pin(async move {
            let path = key.path(&self.config.prefix);
            let ttl_secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
                .unwrap_or(i64::MAX)
                .max(1);
            let (id, granted, _) = self.grant_and_put(&path, value.clone(), ttl_secs).await?;
            let state = Arc::new(Mutex::new(LeaseState {
                id,
                ttl_secs: granted,
                value,
            }));
            let task = tokio::spawn(keep_alive_task(self.clone(), path.clone(), state.clone()));
            let lease: Box<dyn Lease> = Box::new(EtcdLease {
                backend: self.clone(),
                key,
                path,
                state,
                task,
            });
            Ok(lease)
        })
    }
}

// ---- watch ----

/// Why a watch round ended.
enum Exit {
    /// The consumer dropped the stream.
    Closed,
    Failed(Error),
}

impl From<Error> for Exit {
    fn from(e: Error) -> Self {
        Exit::Failed(e)
    }
}

type Events = mpsc::Sender<Result<RawEvent>>;

async fn send(tx: &Events, item: Result<RawEvent>) -> Result<(), Exit> {
    tx.send(item).await.map_err(|_| Exit::Closed)
}

async fn watch_task(backend: EtcdBackend, kind: ResourceKind, tx: Events) {
    // What the consumer has been told exists, by key: the base for reporting changes
    // after a re-list, and the `last` of deletes.
    let mut known: HashMap<String, RawObject> = HashMap::new();
    let mut backoff = Backoff::default();
    loop {
        let error = match watch_round(&backend, kind, &mut known, &tx, &mut backoff).await {
            Err(Exit::Closed) => return,
            Err(Exit::Failed(e)) => e,
            Ok(never) => match never {},
        };
        tracing::warn!(kind = kind.kind, error = %crate::report(&error), "watch interrupted; will re-list");
        if tx.send(Err(error)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// List, report the difference to what the consumer knows, `Synced`, then watch from
/// the list's revision + 1: etcd delivers every change after the list exactly once.
async fn watch_round(
    backend: &EtcdBackend,
    kind: ResourceKind,
    known: &mut HashMap<String, RawObject>,
    tx: &Events,
    backoff: &mut Backoff,
) -> Result<Infallible, Exit> {
    let root = backend.config.prefix.clone();
    let prefix = kind.prefix(&root);
    let (listed, revision) = backend.list_at(kind).await?;
    *backoff = Backoff::default();

    for event in relist(known, listed.items, &root) {
        send(tx, Ok(event)).await?;
    }
    for e in listed.invalid {
        send(tx, Err(e)).await?;
    }
    send(tx, Ok(RawEvent::Synced)).await?;

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_prev_key();
    let mut client = backend.client.clone();
    let mut stream = backend
        .call(
            "watch",
            &prefix,
            client.watch(prefix.as_str(), Some(options)),
        )
        .await?;
    loop {
        let response = tokio::select! {
            r = stream.message() => r.map_err(|e| backend.classify("watch", &prefix, e))?,
            () = tx.closed() => return Err(Exit::Closed),
        };
        let Some(response) = response else {
            return Err(Exit::Failed(Error::Backend {
                backend: BACKEND,
                op: "watch",
                key: prefix,
                source: "etcd ended the watch stream".into(),
            }));
        };
        if response.canceled() {
            return Err(Exit::Failed(Error::Backend {
                backend: BACKEND,
                op: "watch",
                key: prefix,
                source: format!(
                    "etcd canceled the watch: {:?} (compacted to revision {})",
                    response.cancel_reason(),
                    response.compact_revision()
                )
                .into(),
            }));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = match backend.parse_key(kind, kv.key()) {
                Ok(key) => key,
                Err(e) => {
                    send(tx, Err(e)).await?;
                    continue;
                }
            };
            let path = key.path(&root);
            match event.event_type() {
                EventType::Put => {
                    let raw = RawObject {
                        key,
                        value: kv.value().to_vec(),
                        resource_version: kv.mod_revision().to_string(),
                    };
                    known.insert(path, raw.clone());
                    send(tx, Ok(RawEvent::Upsert(raw))).await?;
                }
                EventType::Delete => {
                    let last = known.remove(&path).or_else(|| {
                        event.prev_kv().map(|prev| RawObject {
                            key: key.clone(),
                            value: prev.value().to_vec(),
                            resource_version: prev.mod_revision().to_string(),
                        })
                    });
                    send(tx, Ok(RawEvent::Delete { key, last })).await?;
                }
            }
        }
    }
}

/// Replaces what the consumer knows with a fresh list and returns the events that tell
/// it the difference: deletes of what is gone, upserts of what is new or changed.
fn relist(
    known: &mut HashMap<String, RawObject>,
    listed: Vec<RawObject>,
    root: &str,
) -> Vec<RawEvent> {
    let mut fresh: HashMap<String, RawObject> = HashMap::with_capacity(listed.len());
    let mut events = Vec::new();
    for raw in listed {
        let path = raw.key.path(root);
        let unchanged = known
            .get(&path)
            .is_some_and(|old| old.resource_version == raw.resource_version);
        if !unchanged {
            events.push(RawEvent::Upsert(raw.clone()));
        }
        fresh.insert(path, raw);
    }
    let mut gone: Vec<(String, RawObject)> = known
        .drain()
        .filter(|(path, _)| !fresh.contains_key(path))
        .collect();
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    let deletes = gone.into_iter().map(|(_, last)| RawEvent::Delete {
        key: last.key.clone(),
        last: Some(last),
    });
    events.splice(0..0, deletes);
    *known = fresh;
    events
}

/// 100 ms doubling to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        now
    }
}

// ---- leases ----

struct LeaseState {
    id: i64,
    ttl_secs: i64,
    value: Vec<u8>,
}

struct EtcdLease {
    backend: EtcdBackend,
    key: ObjectKey,
    path: String,
    state: Arc<Mutex<LeaseState>>,
    task: JoinHandle<()>,
}

fn lock(state: &Mutex<LeaseState>) -> std::sync::MutexGuard<'_, LeaseState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(msg) => msg.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == grpc_code::NOT_FOUND,
        _ => false,
    }
}

async fn revoke(backend: &EtcdBackend, path: &str, id: i64) -> Result<()> {
    let mut client = backend.client.clone();
    match tokio::time::timeout(backend.config.request_timeout, client.lease_revoke(id)).await {
        Ok(Ok(_)) => Ok(()),
        // Expired already: the key is gone either way.
        Ok(Err(e)) if lease_not_found(&e) => Ok(()),
        Ok(Err(e)) => Err(backend.classify("lease revoke", path, e)),
        Err(_) => Err(Error::Timeout {
            backend: BACKEND,
            op: "lease revoke",
            key: path.to_string(),
            timeout: backend.config.request_timeout,
        }),
    }
}

/// Keeps the lease alive (a keepalive every TTL/3). If the lease is lost anyway (etcd
/// unreachable for longer than the TTL), grants a new one and writes the value again,
/// so the registration comes back when etcd does.
async fn keep_alive_task(backend: EtcdBackend, path: String, state: Arc<Mutex<LeaseState>>) {
    let mut backoff = Backoff::default();
    loop {
        let (id, ttl_secs) = {
            let s = lock(&state);
            (s.id, s.ttl_secs)
        };
        let period = Duration::from_millis((ttl_secs.max(1) as u64 * 1000 / 3).max(300));
        let mut client = backend.client.clone();
        let lost = match tokio::time::timeout(
            backend.config.request_timeout,
            client.lease_keep_alive(id),
        )
        .await
        {
            Ok(Ok((mut keeper, mut responses))) => {
                backoff = Backoff::default();
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(period) => {
                            if keeper.keep_alive().await.is_err() {
                                break false;
                            }
                        }
                        response = responses.message() => match response {
                            Ok(Some(r)) if r.ttl() > 0 => {}
                            Ok(Some(_)) => break true,
                            Ok(None) => break false,
                            Err(e) => {
                                tracing::warn!(key = %path, error = %e, "lease keepalive interrupted");
                                break false;
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) if lease_not_found(&e) => true,
            Ok(Err(e)) => {
                tracing::warn!(key = %path, error = %e, "cannot keep the lease alive; retrying");
                false
            }
            Err(_) => {
                tracing::warn!(key = %path, "no answer to lease keepalive; retrying");
                false
            }
        };
        if !lost {
            tokio::time::sleep(backoff.next()).await;
            continue;
        }
        tracing::warn!(key = %path, lease = id, "lease expired; granting a new one and writing the key again");
        loop {
            let value = lock(&state).value.clone();
            match backend.grant_and_put(&path, value, ttl_secs).await {
                Ok((id, ttl_secs, _)) => {
                    let mut s = lock(&state);
                    s.id = id;
                    s.ttl_secs = ttl_secs;
                    break;
                }
                Err(e) => {
                    tracing::warn!(key = %path, error = %crate::report(&e), "cannot register again; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }
}

impl Lease for EtcdLease {
    fn update(
        &self,
        value: Vec<u8>,
        resource_version: Option<String>,
    ) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let id = lock(&self.state).id;
            let put = TxnOp::put(
                self.path.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(id)),
            );
            let txn = match &resource_version {
                None => Txn::new().and_then([put]),
                Some(rv) => {
                    let revision = rv.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| {
                        Error::InvalidResourceVersion {
                            kind: self.key.kind.kind,
                            name: self.key.display_name(),
                            resource_version: rv.clone(),
                        }
                    })?;
                    Txn::new()
                        .when([Compare::mod_revision(
                            self.path.as_str(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([put])
                        .or_else([TxnOp::get(self.path.as_str(), None)])
                }
            };
            let mut client = self.backend.client.clone();
            let response = self
                .backend
                .call("write", &self.path, client.txn(txn))
                .await?;
            if !response.succeeded() {
                let (kind, name) = (self.key.kind.kind, self.key.display_name());
                let exists = response
                    .op_responses()
                    .iter()
                    .any(|r| matches!(r, TxnOpResponse::Get(get) if !get.kvs().is_empty()));
                return Err(if exists {
                    Error::Conflict {
                        kind,
                        name,
                        resource_version: resource_version.unwrap_or_default(),
                    }
                } else {
                    Error::NotFound { kind, name }
                });
            }
            // Written: this is what a lost lease writes again.
            lock(&self.state).value = value;
            Ok(response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision)
                .to_string())
        })
    }

    fn revoke(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.task.abort();
            let id = lock(&self.state).id;
            revoke(&self.backend, &self.path, id).await
        })
    }

    fn release(&self) {
        self.task.abort();
        let id = lock(&self.state).id;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(key = %self.path, "no runtime to revoke the lease on drop; it will expire");
            return;
        };
        let (backend, path) = (self.backend.clone(), self.path.clone());
        runtime.spawn(async move {
            if let Err(e) = revoke(&backend, &path, id).await {
                tracing::warn!(key = %path, error = %crate::report(&e), "cannot revoke the lease; it will expire");
            }
        });
    }

    fn abandon(&self) {
        self.task.abort();
    }
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CiliateNode;
    use crate::Object;

    fn raw(name: &str, rv: u32) -> RawObject {
        RawObject {
            key: ObjectKey::new(CiliateNode::RESOURCE, None, name).unwrap(),
            value: b"{}".to_vec(),
            resource_version: rv.to_string(),
        }
    }

    #[test]
    fn relist_reports_only_the_difference() {
        let mut known = HashMap::new();
        let first = relist(
            &mut known,
            vec![raw("a", 1), raw("b", 2), raw("c", 3)],
            "/ciliate",
        );
        assert_eq!(first.len(), 3);
        let events = relist(
            &mut known,
            vec![raw("a", 1), raw("c", 7), raw("d", 8)],
            "/ciliate",
        );
        assert_eq!(
            events,
            vec![
                RawEvent::Delete {
                    key: raw("b", 2).key,
                    last: Some(raw("b", 2))
                },
                RawEvent::Upsert(raw("c", 7)),
                RawEvent::Upsert(raw("d", 8)),
            ]
        );
        assert_eq!(known.len(), 3);
        assert!(relist(
            &mut known,
            vec![raw("a", 1), raw("c", 7), raw("d", 8)],
            "/ciliate"
        )
        .is_empty());
    }
}
