//! etcd's concurrency recipes (clientv3/concurrency) on leases and watches: a session is a lease
//! kept alive in the background; a mutex or an election is a prefix under which each contender
//! writes one key bound to its session, `<prefix>/<lease id in hex>`. Contenders are ordered by
//! the create revision of their keys: the lowest holds the lock (or leads), and each of the
//! others waits for the deletion of the key just before its own (no herd on every change).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Client, ClientError, Result};
use crate::base::wire::kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest,
};
use crate::base::wire::watch::{EventType, WatchCreateRequest};
use crate::base::wire::Consistency;

/// A lease kept alive every third of its TTL until the session is closed or dropped.
pub struct Session {
    client: Client,
    pub lease: i64,
    pub ttl: i64,
    keeper: JoinHandle<()>,
    /// Becomes true once the lease is known gone, or may be (etcd's `Session.Done`).
    lost: watch::Receiver<bool>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive in the background.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        let sent = Instant::now();
        let granted = client.lease_grant(ttl, 0).await?;
        let (keeper_client, lease) = (client.clone(), granted.id);
        let ttl_span = Duration::from_secs(u64::try_from(granted.ttl).unwrap_or(1).max(1));
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(async move {
            // One renewal every third of the TTL; a failed one is tried again at the next, so
            // a short outage costs nothing while the TTL lasts. The lease is counted valid
            // until the send time of the last renewal answered + the TTL (the server renews
            // after it received the request): past that, or on an answer that it is gone,
            // the session is lost.
            let mut valid_until = sent + ttl_span;
            loop {
                tokio::time::sleep(ttl_span / 3).await;
                let sent = Instant::now();
                let renewed = tokio::time::timeout(ttl_span / 3, keeper_client.lease_keep_alive(lease)).await;
                match renewed {
                    Ok(Ok(renewed)) if renewed.ttl <= 0 => break,
                    Ok(Ok(_)) => valid_until = sent + ttl_span,
                    _ if Instant::now() >= valid_until => break,
                    _ => {}
                }
            }
            let _ = lost_tx.send(true);
        });
        Ok(Session { client: client.clone(), lease, ttl: granted.ttl, keeper, lost })
    }

    /// A session on a lease that the caller keeps alive (etcd's `WithLease` and `Orphan`, as
    /// etcd's v3lock and v3election services use it): no renewals here, and it is never
    /// counted lost; a contender still checks that its key is there once it is first.
    pub fn orphan(client: &Client, lease: i64) -> Session {
        let (_, lost) = watch::channel(false);
        Session { client: client.clone(), lease, ttl: 0, keeper: tokio::spawn(async {}), lost }
    }

    /// Returns once the session's lease is gone or its validity ran out without a renewal:
    /// a lock or leadership held through it may have passed to another.
    pub async fn done(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// The lease is gone, or may be.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops the renewals and revokes the lease: every key bound to it goes.
    pub async fn close(self) -> Result<()> {
        self.keeper.abort();
        self.client.lease_revoke(self.lease).await.map(|_| ())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

fn prefix_key(prefix: &str, lease: i64) -> String {
    format!("{prefix}/{lease:x}")
}

/// Writes this session's key under `prefix` (if it is not there yet) and returns its create
/// revision.
async fn enter(client: &Client, session: &Session, prefix: &str, value: &str) -> Result<i64> {
    let key = prefix_key(prefix, session.lease);
    let mut absent = Compare::new(&key, CompareTarget::Create, CompareResult::Equal);
    absent.create_revision = Some(0);
    let put = PutRequest {
        key: Some(key.clone()),
        value: Some(value.to_string()),
        lease: session.lease,
        ..Default::default()
    };
    let get = RangeRequest { key: Some(key.clone()), ..Default::default() };
    let txn = TxnRequest {
        compare: vec![absent],
        success: vec![RequestOp::RequestPut(put)],
        failure: vec![RequestOp::RequestRange(get)],
    };
    let answer = client.txn(&txn).await?;
    if answer.succeeded {
        return Ok(answer.header.revision);
    }
    match answer.responses.first() {
        Some(ResponseOp::ResponseRange(r)) => match r.kvs.first() {
            Some(kv) => Ok(kv.create_revision),
            None => Err(ClientError::Setup(format!("the key {key} vanished while entering"))),
        },
        _ => Err(ClientError::Setup("an unexpected txn answer".to_string())),
    }
}

/// The key under `prefix` created last before `revision`, if any.
async fn predecessor(client: &Client, prefix: &str, revision: i64) -> Result<(Option<KeyValue>, i64)> {
    let range = RangeRequest {
        key: Some(format!("{prefix}/")),
        prefix: true,
        max_create_revision: revision - 1,
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Create,
        limit: 1,
        ..Default::default()
    };
    let answer = client.range(&range, Consistency::Linearizable).await?;
    Ok((answer.kvs.into_iter().next(), answer.header.revision))
}

/// Waits until `key` is deleted, watching from `after + 1`.
async fn wait_deleted(client: &Client, key: &str, after: i64) -> Result<()> {
    let request = WatchCreateRequest { key: Some(key.to_string()), start_revision: after + 1, ..Default::default() };
    let mut watch = client.watch(request).await?;
    // Bounded by the predecessor's lease: its key goes when its holder stops renewing.
    loop {
        let answer = watch.next().await?;
        if answer.events.iter().any(|e| e.kind == EventType::Delete) {
            return Ok(());
        }
    }
}

/// Waits until this session's key is the first (lowest create revision) under `prefix`, and
/// checks that it is still there (its lease may have ended while it waited; etcd's Lock
/// answers "session expired" then).
async fn wait_first(client: &Client, session: &Session, prefix: &str, mine: i64) -> Result<()> {
    loop {
        match predecessor(client, prefix, mine).await? {
            (None, _) => {
                let key = prefix_key(prefix, session.lease);
                let get = RangeRequest { key: Some(key.clone()), ..Default::default() };
                let still = client.range(&get, Consistency::Linearizable).await?;
                return match still.kvs.first() {
                    Some(kv) if kv.create_revision == mine && !session.is_lost() => Ok(()),
                    _ => Err(ClientError::SessionExpired(format!(
                        "the key {key} is gone: its lease ended while this contender waited"
                    ))),
                };
            }
            (Some(before), at) => {
                let key = text(before.key_bytes());
                wait_deleted(client, &key, at).await?;
            }
        }
    }
}

/// etcd's `concurrency.Mutex`: held once `lock` returns, until `unlock` or the session's end.
pub struct Mutex {
    prefix: String,
    key: String,
    pub revision: i64,
}

impl Mutex {
    /// Waits for the lock `name` (bounded only by the holders before: each waits for its
    /// predecessor's key to go).
    pub async fn lock(client: &Client, session: &Session, name: &str) -> Result<Mutex> {
        let revision = enter(client, session, name, "").await?;
        wait_first(client, session, name, revision).await?;
        Ok(Mutex { prefix: name.to_string(), key: prefix_key(name, session.lease), revision })
    }

    /// The key that holds the lock.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.prefix
    }

    /// Releases the lock: deletes this session's key.
    pub async fn unlock(self, client: &Client) -> Result<()> {
        client.delete(&self.key, None).await.map(|_| ())
    }
}

/// etcd's `concurrency.Election`: `campaign` returns once this session leads, with its
/// proposal as the value of its key.
pub async fn campaign(client: &Client, session: &Session, name: &str, proposal: &str) -> Result<i64> {
    let revision = enter(client, session, name, proposal).await?;
    wait_first(client, session, name, revision).await?;
    Ok(revision)
}

/// The current leader of election `name` (its key of lowest create revision), and the
/// revision the answer was read at.
pub async fn leader(client: &Client, name: &str) -> Result<(Option<KeyValue>, i64)> {
    let range = RangeRequest {
        key: Some(format!("{name}/")),
        prefix: true,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        limit: 1,
        ..Default::default()
    };
    let answer = client.range(&range, Consistency::Linearizable).await?;
    Ok((answer.kvs.into_iter().next(), answer.header.revision))
}

/// The text of a key or value of an answer.
pub fn text(bytes: Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
}

/// Writes `value` as the leader's proposal, if `key` (created at `revision`) still leads:
/// etcd's `Election.Proclaim`. Returns whether it did.
pub async fn proclaim(client: &Client, key: &str, revision: i64, lease: i64, value: &str) -> Result<bool> {
    let mut mine = Compare::new(key, CompareTarget::Create, CompareResult::Equal);
    mine.create_revision = Some(revision);
    let put = PutRequest { key: Some(key.to_string()), value: Some(value.to_string()), lease, ..Default::default() };
    let txn = TxnRequest { compare: vec![mine], success: vec![RequestOp::RequestPut(put)], failure: Vec::new() };
    Ok(client.txn(&txn).await?.succeeded)
}

/// Deletes `key` if it is still the one created at `revision`: etcd's `Election.Resign`.
/// Returns the revision of the answer.
pub async fn resign(client: &Client, key: &str, revision: i64) -> Result<i64> {
    let mut mine = Compare::new(key, CompareTarget::Create, CompareResult::Equal);
    mine.create_revision = Some(revision);
    let delete = DeleteRangeRequest { key: Some(key.to_string()), ..Default::default() };
    let txn =
        TxnRequest { compare: vec![mine], success: vec![RequestOp::RequestDeleteRange(delete)], failure: Vec::new() };
    Ok(client.txn(&txn).await?.header.revision)
}

/// etcd's `Election.Observe`: sends the leader of election `name` (its key-value and the
/// revision it was read at) now if there is one, then each time another key leads or the
/// leader proclaims a new value, until `tx` is closed or the watch fails.
pub async fn observe(client: &Client, name: &str, tx: tokio::sync::mpsc::Sender<(KeyValue, i64)>) -> Result<()> {
    let request = WatchCreateRequest { key: Some(format!("{name}/")), prefix: true, ..Default::default() };
    let mut watch = client.watch(request).await?;
    let mut last: Option<(Vec<u8>, i64)> = None;
    // Until the receiver goes: one look at the leader per change under the prefix.
    loop {
        if let (Some(kv), revision) = leader(client, name).await? {
            let seen = (kv.key_bytes().unwrap_or_default(), kv.mod_revision);
            if last.as_ref() != Some(&seen) {
                last = Some(seen);
                if tx.send((kv, revision)).await.is_err() {
                    return Ok(());
                }
            }
        }
        tokio::select! {
            next = watch.next() => { next?; }
            _ = tx.closed() => return Ok(()),
        }
    }
}
