//! Lock clients beside the chaos clients (issue 14, lease safety under faults). Each takes the
//! lock `chaos-lock` as `kuberaft lock` does, through `kuberaft::client::concurrency` (a session
//! lease, one key per contender under the lock's name, ordered by create revision, each waiting
//! for the deletion of the key just before its own), holds it a short while and lets it go, over
//! and over, through whichever member answers (the client moves on when one fails). Some sessions
//! are given up on purpose, while holding or while waiting: their keep-alives stop and nothing is
//! revoked, so their leases must expire by themselves.
//!
//! Every holder renews its own lease and counts how long it may rely on it (`Validity`), as a
//! careful client would. The checks:
//! - mutual exclusion: no two holds overlap. A hold runs from the moment its holder knew it held
//!   the lock (the lock call had returned) to the moment it stopped relying on it: when it let go,
//!   or, for a holder that stopped renewing while holding, the end of its validity;
//! - no lease ends early: a keep-alive, a revoke or a time-to-live that says a lease is gone
//!   before the end of its validity as its holder counts it (and no revoke of it was sent);
//! - expiry: every lease whose keep-alives stopped is gone by the time the run's final leader
//!   was known + the TTL + the longest election timeout (a new leader's extension) + slack for the
//!   leader's lease tick and for the revoke to apply; and, at that point, no lease is left at all.
//!
//! Times are `Instant`s on one monotonic clock, reported in ms since the run's start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kuberaft::base::rng::Rng;
use kuberaft::client::concurrency::{Mutex as Lock, Session};
use kuberaft::client::{Client, ClientConfig, ClientError, Consistency};
use tokio::task::JoinHandle;

pub const LOCK_CLIENTS: usize = 3;
const LOCK_NAME: &str = "chaos-lock";
/// The sessions' TTL. The members' lowest allowed TTL is 1.5 × their longest election timeout,
/// rounded up: 1 s with the harness's default 150-300 ms.
const TTL_S: i64 = 3;
/// Taken off every validity: covers the member counting in whole milliseconds and the moment
/// between reading the clock and the request leaving.
const MARGIN: Duration = Duration::from_millis(500);
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);
/// One HTTP exchange; the client's deadline for a request, failover included, is three of these.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Any one call at most (a lock attempt, a keep-alive, an unlock, a revoke). A lock attempt cut
/// short is simply made again: entering again finds the contender's key already there.
const CALL_LIMIT: Duration = Duration::from_secs(3);
/// How long a contender waits for the lock in all before it gives its session up.
const WAIT_LIMIT: Duration = Duration::from_secs(20);
/// The leader looks for expired leases every 500 ms (src/node/runtime.rs `LEASE_TICK`).
const LEASE_TICK_SLACK: Duration = Duration::from_millis(500);
/// For the revoke to be committed and applied, and for the poll to see it.
const APPLY_SLACK: Duration = Duration::from_secs(1);
/// How long past the bound the final check keeps looking, to say how late a lease was.
const LATE_LOOK: Duration = Duration::from_secs(10);
/// No thread of this module runs longer than this, whatever happens to the run.
const LONGEST_RUN: Duration = Duration::from_secs(4 * 3600);

/// The members' longest election timeout: what the harness gives them (the default `150-300`
/// unless the environment, which they inherit, says otherwise).
fn max_election_timeout() -> Duration {
    let ms = std::env::var("KUBERAFT_ELECTION_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.rsplit('-').next().and_then(|max| max.trim().parse::<u64>().ok()))
        .unwrap_or(300);
    Duration::from_millis(ms)
}

fn ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a session's own keep-alives told its holder. The holder relies on its lease until `end`:
/// the moment the last answered keep-alive (or the grant) was *sent*, + the TTL it answered − the
/// margin. Counting from the send time is the conservative rule: the leader renews only after the
/// request arrived (and after it confirmed with a quorum that it still leads), so its deadline is
/// at least the send time + TTL, and a new leader gives every lease its whole TTL again from its
/// promotion, which comes later still. Counting from the answer instead would let a slow answer
/// stretch the validity past the leader's deadline.
struct Validity {
    end: Instant,
    /// The last answered keep-alive (or the grant): when it was sent, and when its answer came.
    last_sent: Instant,
    last_ack: Instant,
    /// A keep-alive answered that the lease is gone (TTL 0), at this time.
    gone: Option<Instant>,
}

/// An open session: the lease (kept alive by `Session`'s own renewals too, which only make the
/// member's deadline later than what the holder counts) and the holder's keep-alives.
struct Live {
    session: Session,
    validity: Arc<Mutex<Validity>>,
    keeper: JoinHandle<()>,
}

impl Live {
    fn valid_until(&self) -> Instant {
        guard(&self.validity).end
    }
    fn gone(&self) -> bool {
        guard(&self.validity).gone.is_some()
    }
}

/// One hold of the lock.
#[derive(Clone, Debug)]
pub struct Hold {
    pub client: u64,
    pub lease: i64,
    /// The create revision of the holder's key.
    pub revision: i64,
    pub enter: Instant,
    pub leave: Instant,
    pub end: &'static str,
}

/// A lease whose keep-alives stopped without a revoke that was answered.
#[derive(Clone, Debug)]
pub struct Abandoned {
    pub client: u64,
    pub lease: i64,
    pub why: &'static str,
    /// When its keep-alives stopped.
    pub at: Instant,
    pub last_sent: Instant,
    pub last_ack: Instant,
    pub valid_until: Instant,
    /// A revoke was sent and its answer lost: the lease may be gone at any time since.
    pub revoke_sent: bool,
}

/// What the lock clients and the lease observer recorded.
pub struct LockLog {
    start: Instant,
    holds: Mutex<Vec<Hold>>,
    abandoned: Mutex<Vec<Abandoned>>,
    /// Abandoned leases seen gone during the run: the answer's time.
    gone: Mutex<BTreeMap<i64, Instant>>,
    problems: Mutex<Vec<String>>,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl LockLog {
    pub fn new(start: Instant) -> Arc<LockLog> {
        Arc::new(LockLog {
            start,
            holds: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            gone: Mutex::new(BTreeMap::new()),
            problems: Mutex::new(Vec::new()),
            counts: Mutex::new(BTreeMap::new()),
        })
    }
    /// Milliseconds since the run's start.
    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
    }
    fn count(&self, what: &str) {
        *guard(&self.counts).entry(what.to_string()).or_default() += 1;
    }
    fn problem(&self, what: String) {
        guard(&self.problems).push(what);
    }
    fn hold(&self, hold: Hold) {
        guard(&self.holds).push(hold);
    }
    /// A lease seen gone at `answered` (the answer's time: it went at some point before).
    fn seen_gone(&self, a: &Abandoned, answered: Instant, how: &str) {
        if guard(&self.gone).insert(a.lease, answered).is_some() {
            return;
        }
        if !a.revoke_sent && answered < a.valid_until {
            self.problem(format!(
                "lease {:x} (client {}) was gone by {} ms ({how}), before the end of its validity at {} ms \
                 (its last answered keep-alive was sent at {} ms; nothing revoked it)",
                a.lease,
                a.client,
                self.ms(answered),
                self.ms(a.valid_until),
                self.ms(a.last_sent)
            ));
        }
    }
}

fn kind(e: &ClientError) -> String {
    match e {
        ClientError::Api { status, code, .. } => format!("{status} {code}"),
        ClientError::Unavailable { .. } => "unavailable".to_string(),
        ClientError::OutcomeUnknown { .. } => "outcome unknown".to_string(),
        ClientError::Decode { .. } => "undecodable answer".to_string(),
        _ => "other".to_string(),
    }
}

/// The client rotated so that it tries `first` first.
fn client_from(urls: &[String], first: usize) -> Client {
    let first = first % urls.len();
    let endpoints: Vec<String> = urls[first..].iter().chain(&urls[..first]).cloned().collect();
    Client::with_config(endpoints, ClientConfig::with_request_timeout(REQUEST_TIMEOUT)).expect("client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The holder's own keep-alives, one at a time, until its owner aborts it or the lease is gone.
async fn keep_alive(client: Client, lease: i64, validity: Arc<Mutex<Validity>>, log: Arc<LockLog>) {
    let started = Instant::now();
    while started.elapsed() < LONGEST_RUN {
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        let sent = Instant::now();
        let answer = tokio::time::timeout(CALL_LIMIT, client.lease_keep_alive(lease)).await;
        let now = Instant::now();
        match answer {
            Ok(Ok(renewed)) if renewed.ttl > 0 => {
                let mut v = guard(&validity);
                v.end = v.end.max(sent + ttl(renewed.ttl) - MARGIN);
                v.last_sent = sent;
                v.last_ack = now;
            }
            Ok(Ok(_)) => {
                let mut v = guard(&validity);
                v.gone = Some(now);
                log.count("keep-alive: lease gone");
                if now < v.end {
                    log.problem(format!(
                        "a keep-alive of lease {lease:x} answered at {} ms that it is gone, before the end of its \
                         validity at {} ms (its last answered keep-alive was sent at {} ms; nothing revoked it)",
                        log.ms(now),
                        log.ms(v.end),
                        log.ms(v.last_sent)
                    ));
                }
                return;
            }
            Ok(Err(_)) | Err(_) => log.count("keep-alive failed"),
        }
    }
}

/// Grants a session's lease and starts the holder's keep-alives.
async fn open(client: &Client, log: &Arc<LockLog>) -> Option<Live> {
    let sent = Instant::now();
    let session = match tokio::time::timeout(CALL_LIMIT, Session::new(client, TTL_S)).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            // One whose outcome is unknown may have left a lease nobody renews: the final check
            // that no lease is left covers it.
            log.count(&format!("grant failed: {}", kind(&e)));
            return None;
        }
        Err(_) => {
            log.count("grant failed: timed out");
            return None;
        }
    };
    let validity =
        Validity { end: sent + ttl(session.ttl) - MARGIN, last_sent: sent, last_ack: Instant::now(), gone: None };
    let validity = Arc::new(Mutex::new(validity));
    let keeper = tokio::spawn(keep_alive(client.clone(), session.lease, validity.clone(), log.clone()));
    log.count("sessions");
    Some(Live { session, validity, keeper })
}

/// Stops every keep-alive of the session (the holder's and `Session`'s) without revoking, and
/// records the lease as abandoned; returns the end of its validity. In a current-thread runtime an
/// aborted task never runs again, so the validity cannot move after this.
fn abandon(live: Live, client: u64, why: &'static str, revoke_sent: bool, log: &LockLog) -> Instant {
    live.keeper.abort();
    let v = guard(&live.validity);
    let record = Abandoned {
        client,
        lease: live.session.lease,
        why,
        at: Instant::now(),
        last_sent: v.last_sent,
        last_ack: v.last_ack,
        valid_until: v.end,
        revoke_sent,
    };
    let gone = v.gone;
    drop(v);
    if let Some(at) = gone {
        log.seen_gone(&record, at, "a keep-alive");
    }
    guard(&log.abandoned).push(record);
    log.count(&format!("abandoned: {why}"));
    let valid_until = live.valid_until();
    drop(live.session);
    valid_until
}

/// Ends the session with a revoke; a revoke that is not answered leaves it abandoned.
async fn close(live: Live, client: u64, log: &LockLog) {
    live.keeper.abort();
    let (lease, valid_until) = (live.session.lease, live.valid_until());
    // `Session::close` stops its own renewals, then revokes.
    let Live { session, validity, keeper } = live;
    match tokio::time::timeout(CALL_LIMIT, session.close()).await {
        Ok(Ok(())) => log.count("revoked"),
        Ok(Err(ClientError::Api { code, .. })) if code == "lease_not_found" => {
            let now = Instant::now();
            log.count("revoke: already gone");
            if now < valid_until {
                log.problem(format!(
                    "a revoke of lease {lease:x} (client {client}) answered at {} ms that it is gone, before the end of \
                     its validity at {} ms",
                    log.ms(now),
                    log.ms(valid_until)
                ));
            }
        }
        _ => {
            log.count("revoke failed");
            // The session is gone with the future; `abandon` only needs its lease and validity.
            let v = guard(&validity);
            let record = Abandoned {
                client,
                lease,
                why: "its revoke was not answered",
                at: Instant::now(),
                last_sent: v.last_sent,
                last_ack: v.last_ack,
                valid_until: v.end,
                revoke_sent: true,
            };
            drop(v);
            guard(&log.abandoned).push(record);
            log.count("abandoned: its revoke was not answered");
        }
    }
    drop(keeper);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Hold, then delete the key and keep the session for the next round.
    Unlock,
    /// Hold, then revoke the session's lease.
    Revoke,
    /// Hold, then stop renewing and walk away, still counting itself the holder until its
    /// validity ends (as a client that hangs would).
    AbandonHolding,
    /// Give the session up after a short wait for the lock.
    AbandonWaiting,
}

/// One lock client: rounds of wait, hold, release on one lock until `stop`.
pub fn lock_client(id: u64, urls: Vec<String>, log: Arc<LockLog>, stop: Arc<AtomicBool>, seed: u64) {
    runtime().block_on(async {
        let client = client_from(&urls, id as usize);
        let mut rng = Rng::new(seed);
        let started = Instant::now();
        let mut live: Option<Live> = None;
        // A give-up while waiting that has not happened yet: the lock came first.
        let mut owed = false;
        // Bounded in count and time; each round returns within WAIT_LIMIT and a few call limits.
        for _ in 0..100_000 {
            if stop.load(Ordering::Relaxed) || started.elapsed() > LONGEST_RUN {
                break;
            }
            let session = match live.take() {
                Some(session) => session,
                None => match open(&client, &log).await {
                    Some(session) => session,
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let plan = if owed { Plan::AbandonWaiting } else { Plan::pick(&mut rng) };
            let mut gave_up_waiting = false;
            live = round(&client, id, session, plan, &mut rng, &log, &stop, &mut gave_up_waiting).await;
            owed = plan == Plan::AbandonWaiting && !gave_up_waiting;
            tokio::time::sleep(Duration::from_millis(rng.range(0, 50))).await;
        }
        // A session still open is abandoned: its lease must expire by itself.
        if let Some(session) = live {
            abandon(session, id, "open when the run stopped", false, &log);
        }
    });
}

impl Plan {
    fn pick(rng: &mut Rng) -> Plan {
        match rng.range(0, 100) {
            0..4 => Plan::AbandonWaiting,
            4..8 => Plan::AbandonHolding,
            8..60 => Plan::Unlock,
            _ => Plan::Revoke,
        }
    }
}

/// Waits for the lock with `live`, holds it and lets it go as `plan` says; returns the session
/// when it can serve the next round. `gave_up_waiting` is set when the session was given up on
/// purpose while waiting.
#[allow(clippy::too_many_arguments)]
async fn round(
    client: &Client,
    id: u64,
    live: Live,
    plan: Plan,
    rng: &mut Rng,
    log: &LockLog,
    stop: &AtomicBool,
    gave_up_waiting: &mut bool,
) -> Option<Live> {
    let give_up_after =
        if plan == Plan::AbandonWaiting { Duration::from_millis(rng.range(20, 800)) } else { WAIT_LIMIT };
    let began = Instant::now();
    // Attempt after attempt, each cut short at CALL_LIMIT; bounded by `give_up_after`.
    let held = loop {
        if stop.load(Ordering::Relaxed) {
            return Some(live);
        }
        if live.gone() {
            abandon(live, id, "a keep-alive said its lease is gone", false, log);
            return None;
        }
        let waited = began.elapsed();
        if waited >= give_up_after {
            let why = if plan == Plan::AbandonWaiting { "deliberately, while waiting" } else { "waited too long" };
            *gave_up_waiting = plan == Plan::AbandonWaiting;
            abandon(live, id, why, false, log);
            return None;
        }
        let limit = CALL_LIMIT.min(give_up_after - waited);
        match tokio::time::timeout(limit, Lock::lock(client, &live.session, LOCK_NAME)).await {
            Ok(Ok(held)) => break held,
            Ok(Err(e)) => {
                log.count(&format!("lock error: {}", kind(&e)));
                tokio::time::sleep(Duration::from_millis(rng.range(50, 200))).await;
            }
            Err(_) => log.count("lock attempt cut short"),
        }
    };
    // The lock call has returned: from now on this client knows it holds the lock, if its lease
    // is still valid.
    let enter = Instant::now();
    if enter >= live.valid_until() {
        // The answer came after the validity ran out: the lock may have gone with the lease.
        log.count("lock returned after the validity ran out");
        abandon(live, id, "its validity ran out while waiting", false, log);
        return None;
    }
    log.count("acquisitions");
    // A give-up while waiting whose lock came first: this round holds and unlocks, and the next
    // round tries again to give up while waiting.
    let plan = if plan == Plan::AbandonWaiting { Plan::Unlock } else { plan };
    let (lease, revision) = (live.session.lease, held.revision);
    let record = |leave: Instant, end: &'static str| Hold { client: id, lease, revision, enter, leave, end };
    // The key that holds the lock must be there: a key gone while the lease is valid means the
    // lease ended early (`Mutex::lock` itself does not look).
    if let Ok(Ok(None)) = tokio::time::timeout(CALL_LIMIT, client.get(held.key(), Consistency::Linearizable)).await {
        let now = Instant::now();
        let valid_until = live.valid_until();
        log.count("own key gone after the lock returned");
        if now < valid_until {
            log.problem(format!(
                "client {id}: the lock returned at {} ms but its key {} was gone at {} ms, before the end of the \
                 validity of lease {lease:x} at {} ms",
                log.ms(enter),
                held.key(),
                log.ms(now),
                log.ms(valid_until)
            ));
        }
        log.hold(record(now.min(valid_until), "its key was gone"));
        abandon(live, id, "its key was gone", false, log);
        return None;
    }
    // Holding: at most 600 ms, ending early when the validity is about to run out.
    let hold_for = Duration::from_millis(rng.range(20, 600));
    let hold_for = if plan == Plan::AbandonHolding { hold_for / 2 } else { hold_for };
    let ran_out = loop {
        let now = Instant::now();
        if now + Duration::from_millis(20) >= live.valid_until() {
            break true;
        }
        if now >= enter + hold_for {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if ran_out {
        // No keep-alive was answered for a whole validity: the lease may be gone, and the lock
        // with it. The hold ends at the validity's end at the latest; the session is given up.
        let leave = Instant::now().min(live.valid_until());
        log.hold(record(leave, "validity ran out while holding"));
        abandon(live, id, "its validity ran out while holding", false, log);
        return None;
    }
    if plan == Plan::AbandonHolding {
        let valid_until = abandon(live, id, "deliberately, while holding", false, log);
        log.hold(record(valid_until, "abandoned while holding (held until its validity ended)"));
        return None;
    }
    // Letting go: the hold ends before the release is sent.
    let leave = Instant::now().min(live.valid_until());
    if plan == Plan::Unlock {
        log.hold(record(leave, "unlocked"));
        match tokio::time::timeout(CALL_LIMIT, held.unlock(client)).await {
            Ok(Ok(())) => {
                log.count("unlocked");
                // The session serves the next round while most of its validity is left.
                if !live.gone() && live.valid_until() > Instant::now() + ttl(TTL_S) / 2 {
                    return Some(live);
                }
            }
            Ok(Err(e)) => log.count(&format!("unlock error: {}", kind(&e))),
            Err(_) => log.count("unlock timed out"),
        }
    } else {
        log.hold(record(leave, "revoked"));
    }
    close(live, id, log).await;
    None
}

/// Asks after every abandoned lease until it is seen gone, until `stop`.
pub fn lease_observer(urls: Vec<String>, log: Arc<LockLog>, stop: Arc<AtomicBool>) {
    runtime().block_on(async {
        let client = client_from(&urls, 1);
        let started = Instant::now();
        // Bounded in count and time; each pass asks about at most 20 leases, each call limited.
        for _ in 0..1_000_000 {
            if stop.load(Ordering::Relaxed) || started.elapsed() > LONGEST_RUN {
                return;
            }
            let pending: Vec<Abandoned> = {
                let gone = guard(&log.gone);
                guard(&log.abandoned).iter().filter(|a| !gone.contains_key(&a.lease)).take(20).cloned().collect()
            };
            for a in pending {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(Ok(answer)) =
                    tokio::time::timeout(CALL_LIMIT, client.lease_time_to_live(a.lease, false)).await
                {
                    if answer.ttl == -1 {
                        log.seen_gone(&a, Instant::now(), "time-to-live");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// min / median / max of some milliseconds, or "none".
fn spread(mut ms: Vec<u64>) -> String {
    if ms.is_empty() {
        return "none".to_string();
    }
    ms.sort_unstable();
    format!("{}/{}/{} ms (min/median/max of {})", ms[0], ms[ms.len() / 2], ms[ms.len() - 1], ms.len())
}

/// The final checks, once the run's final leader is known (`final_leader_at`) and every lock client
/// and the observer have stopped: the problems found (empty: clean) and a report line. Takes about
/// the expiry bound (a few seconds) to watch the abandoned leases go.
pub fn check(log: &LockLog, urls: &[String], final_leader_at: Instant) -> (Vec<String>, String) {
    let abandoned = guard(&log.abandoned).clone();
    let bound = ttl(TTL_S) + max_election_timeout() + LEASE_TICK_SLACK + APPLY_SLACK;
    let deadline = final_leader_at + bound;
    // Expiry: every abandoned lease not yet seen gone is asked after until it is, or until well
    // past the bound (to say how late). An answer that it still exists to a question sent after
    // the deadline breaks the bound; an answer that it is gone says it went at most that late.
    let mut late: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut gone_after: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut pending: BTreeSet<i64> = {
        let gone = guard(&log.gone);
        abandoned.iter().map(|a| a.lease).filter(|l| !gone.contains_key(l)).collect()
    };
    let watched = pending.len();
    let mut left: Option<Vec<i64>> = None;
    runtime().block_on(async {
        let client = client_from(urls, 0);
        for _ in 0..1_000 {
            if pending.is_empty() || Instant::now() > deadline + LATE_LOOK {
                break;
            }
            for lease in pending.clone() {
                let sent = Instant::now();
                let Ok(Ok(answer)) = tokio::time::timeout(CALL_LIMIT, client.lease_time_to_live(lease, false)).await
                else {
                    continue;
                };
                let answered = Instant::now();
                if answer.ttl == -1 {
                    gone_after.insert(lease, answered);
                    if let Some(a) = abandoned.iter().find(|a| a.lease == lease) {
                        log.seen_gone(a, answered, "time-to-live, final check");
                    }
                    pending.remove(&lease);
                } else if sent > deadline {
                    late.entry(lease).or_insert(sent);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then no lease may be left at all (one whose grant's answer was lost included).
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
        for _ in 0..50 {
            if let Ok(Ok(answer)) = tokio::time::timeout(CALL_LIMIT, client.leases()).await {
                left = Some(answer.leases.iter().map(|l| l.id).collect());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut problems = guard(&log.problems).clone();
    for (lease, at) in &late {
        let a = abandoned.iter().find(|a| a.lease == *lease);
        problems.push(format!(
            "lease {lease:x} (client {:?}, abandoned {:?} at {} ms) still existed at {} ms, past the bound at {} ms \
             (final leader known at {} ms + {} ms); {}",
            a.map(|a| a.client),
            a.map(|a| a.why),
            a.map_or(0, |a| log.ms(a.at)),
            log.ms(*at),
            log.ms(deadline),
            log.ms(final_leader_at),
            bound.as_millis(),
            match gone_after.get(lease) {
                Some(t) => format!("gone by {} ms", log.ms(*t)),
                None => format!("still there {} s past the bound", LATE_LOOK.as_secs()),
            }
        ));
    }
    for lease in pending.iter().filter(|l| !late.contains_key(l)) {
        problems.push(format!("no member answered whether abandoned lease {lease:x} is gone after the run"));
    }
    match &left {
        Some(left) if !left.is_empty() => {
            let ids: Vec<String> = left.iter().map(|l| format!("{l:x}")).collect();
            problems.push(format!(
                "leases left once the bound had passed ({} ms after the final leader was known): {}",
                bound.as_millis(),
                ids.join(", ")
            ));
        }
        Some(_) => {}
        None => problems.push("no member listed the leases after the run".to_string()),
    }
    // Mutual exclusion: in order of entry, each hold must begin after every earlier one ended.
    let mut holds = guard(&log.holds).clone();
    holds.sort_by_key(|h| h.enter);
    let show = |h: &Hold| {
        format!(
            "client {} lease {:x} (key created at revision {}) [{} .. {}] ms, {}",
            h.client,
            h.lease,
            h.revision,
            log.ms(h.enter),
            log.ms(h.leave),
            h.end
        )
    };
    let mut overlaps = 0;
    let mut latest: Option<&Hold> = None;
    for h in &holds {
        if let Some(before) = latest {
            if h.enter < before.leave {
                overlaps += 1;
                if overlaps <= 10 {
                    problems.push(format!(
                        "two holders at once for {} ms: {} and {}",
                        (before.leave - h.enter).as_millis(),
                        show(before),
                        show(h)
                    ));
                }
            }
        }
        if latest.is_none_or(|l| h.leave > l.leave) {
            latest = Some(h);
        }
    }
    if overlaps > 10 {
        problems.push(format!("... {overlaps} overlapping holds in all"));
    }
    // The report.
    let counts = guard(&log.counts).clone();
    let count = |what: &str| counts.get(what).copied().unwrap_or(0);
    let mut ends: BTreeMap<&str, u64> = BTreeMap::new();
    for h in &holds {
        *ends.entry(h.end).or_default() += 1;
    }
    let held_ms: u128 = holds.iter().map(|h| (h.leave - h.enter).as_millis()).sum();
    let mut why: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &abandoned {
        *why.entry(a.why).or_default() += 1;
    }
    // Seen gone during the run (the final check's sightings are counted from the final leader).
    let gone: BTreeMap<i64, Instant> =
        guard(&log.gone).iter().filter(|(l, _)| !gone_after.contains_key(l)).map(|(l, t)| (*l, *t)).collect();
    let after_abandon: Vec<u64> = abandoned
        .iter()
        .filter_map(|a| gone.get(&a.lease).map(|g| g.saturating_duration_since(a.at).as_millis() as u64))
        .collect();
    let after_ack: Vec<u64> = abandoned
        .iter()
        .filter_map(|a| gone.get(&a.lease).map(|g| g.saturating_duration_since(a.last_ack).as_millis() as u64))
        .collect();
    let final_gone: Vec<u64> =
        gone_after.values().map(|g| g.saturating_duration_since(final_leader_at).as_millis() as u64).collect();
    let others: Vec<String> = counts
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "sessions" | "acquisitions"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let verdict = if problems.is_empty() {
        "no two holds overlap, no lease ended early, every abandoned lease went in time".to_string()
    } else {
        format!("{} PROBLEMS", problems.len())
    };
    let report = format!(
        "locks: {LOCK_CLIENTS} clients on one lock, TTL {TTL_S} s, validity = keep-alive sent + TTL - {} ms: \
         {} sessions, {} acquisitions, {} holds ({:.1} s held in all) {ends:?}\n  \
         leases abandoned: {} {why:?}; abandoned -> seen gone during the run: {}; \
         last keep-alive answer -> seen gone: {}\n  \
         expiry bound (final leader + {} ms): {watched} abandoned leases still to watch when the final leader \
         was known, gone {} after it, {} late, {} leases left after the bound; {verdict}\n  \
         lock clients' other outcomes: {}\n",
        MARGIN.as_millis(),
        count("sessions"),
        count("acquisitions"),
        holds.len(),
        held_ms as f64 / 1000.0,
        abandoned.len(),
        spread(after_abandon),
        spread(after_ack),
        bound.as_millis(),
        spread(final_gone),
        late.len(),
        left.as_ref().map_or("unknown".to_string(), |l| l.len().to_string()),
        others.join(", ")
    );
    (problems, report)
}
