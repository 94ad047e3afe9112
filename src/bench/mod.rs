//! `kuberaft bench`: load for a kuberaft cluster (its HTTP API) or an etcd cluster (its gRPC
//! API, with the `etcd` feature, or its JSON gateway), so that one tool measures both the same
//! way. It reaches a cluster only through `crate::client` (or etcd's client), as any user would.
//!
//! Like etcd's benchmark tool: `--conns` connections (clients of the target), `--clients`
//! concurrent workers sharing them round robin, each with one request in flight; keys of
//! `--key-size` bytes drawn uniformly from `--key-space` (the key indexes `--key-from` ..
//! `--key-from + --key-space`), values of `--val-size` bytes; the `load` scenario writes each key
//! of that range once instead, to fill a store or to write fresh keys. Latency
//! goes into an HDR histogram per worker (1 µs to 60 s, 3 significant digits), merged at the end.
//! A progress line goes to stderr every second; the result is a table or JSON on stdout.
//!
//! Watches (issue 14): `--watchers N` watch every key while the load runs and report the events
//! delivered per second (all watchers together) and the latency from a put's acknowledgement
//! to each watcher's receipt of its event; `--idle-watchers N` watch every key and never read,
//! so that a run with them shows what a slow watcher costs the writers.
//!
//! Leases (issue 14): `lease-grant` grants a lease of `--lease-ttl` seconds per request;
//! `lease-keepalive` grants each worker one lease before the measured run and then renews it
//! once per request (one request, one answer: on etcd a keep-alive stream opened, used once
//! and closed, as etcd's `KeepAliveOnce` and its `benchmark lease-keepalive` do). Both revoke
//! every lease they granted after the measured run (not measured), unless `--keep-leases`.

#[cfg(feature = "etcd")]
mod etcd;
mod gateway;
mod kuberaft;
pub mod observe;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::base::output::CliError;
use crate::base::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A kuberaft cluster, through its HTTP API.
    Kuberaft,
    /// An etcd cluster, through its gRPC API (needs a build with `--features etcd`).
    Etcd,
    /// An etcd cluster, through its JSON gateway (`/v3/kv/put`, ...), the HTTP API it serves
    /// beside gRPC: kuberaft's HTTP API against etcd's.
    #[serde(rename = "etcd-gateway")]
    EtcdGateway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Writes.
    Put,
    /// Linearizable reads (through the leader).
    Get,
    /// Serializable reads (answered by the member asked).
    Sget,
    /// `--read-ratio` linearizable reads, the rest writes.
    Mixed,
    /// Compare-and-swap writes: each worker writes its own keys, each write conditional on the
    /// revision the worker last saw for the key.
    Cas,
    /// Writes each key of the key space once, in order, shared by all workers, and ends when
    /// every key is written (`--duration` and `--total` do not apply): fills a store, or writes
    /// fresh keys (a `--key-from` past the keys that exist). A failed write is tried again, up
    /// to `LOAD_ATTEMPTS` times in all.
    Load,
    /// Lease grants: each request grants a new lease of `--lease-ttl` seconds (the cluster
    /// picks its id).
    LeaseGrant,
    /// Lease keep-alives: each worker is granted one lease before the measured run, then each
    /// request renews it once.
    LeaseKeepalive,
}

impl Scenario {
    /// The name on the command line (and in the JSON report): `put`, `lease-grant`, ...
    pub fn name(self) -> String {
        self.to_possible_value().map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    fn is_lease(self) -> bool {
        matches!(self, Scenario::LeaseGrant | Scenario::LeaseKeepalive)
    }
}

/// How often the `load` scenario tries to write one key before it counts it as lost.
pub const LOAD_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "kuberaft")]
    pub target: Target,
    /// Client URLs of the members (kuberaft: http://host:2379; etcd: http://host:2379).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "put")]
    pub scenario: Scenario,
    /// Concurrent workers, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Connections (clients of the target) that the workers share round robin.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// How many distinct keys; each request picks one uniformly (`load` writes each once).
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// The index of the first key of the key space: keys `--key-from` .. `--key-from +
    /// --key-space`.
    #[arg(long, default_value_t = 0)]
    pub key_from: u64,
    /// How long to measure, in seconds (ignored with `--total`).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests instead of after `--duration`.
    #[arg(long)]
    pub total: Option<u64>,
    /// The share of reads in `mixed`.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Write every key of the key space once before measuring (reads then find values).
    #[arg(long)]
    pub preload: bool,
    /// Timeout of one request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Random seed of the key choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, short = 'w', value_enum, default_value = "table")]
    pub output: Output,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Watchers of every key during the run (spread over the connections), whose deliveries are
    /// measured.
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Watchers of every key that never read what they are sent (slow consumers).
    #[arg(long, default_value_t = 0)]
    pub idle_watchers: usize,
    /// The TTL in seconds of the leases that `lease-grant` and `lease-keepalive` grant.
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: i64,
    /// Leave the leases `lease-grant` and `lease-keepalive` granted instead of revoking them
    /// after the run (they expire after `--lease-ttl`).
    #[arg(long)]
    pub keep_leases: bool,
    /// TLS and the user, as the client commands take them (etcd's `benchmark --cacert`,
    /// `--cert`, `--key`, `--user`).
    #[command(flatten)]
    pub security: crate::client::SecurityArgs,
}

/// One request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Get {
        linearizable: bool,
    },
    /// Put only if the key's mod revision is this (0: only if absent).
    Cas {
        revision: u64,
    },
    /// Grant a lease of `ttl` seconds (the cluster picks its id; the key is not used).
    LeaseGrant {
        ttl: i64,
    },
    /// Renew lease `id` once (an error when it does not exist; the key is not used).
    LeaseKeepAlive {
        id: i64,
    },
    /// Revoke lease `id` (the key is not used).
    LeaseRevoke {
        id: i64,
    },
}

/// What a request returned that the workers need: the key's revision after a write.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpResult {
    pub revision: u64,
    /// A compare-and-swap whose condition failed (an answer, not an error).
    pub compare_failed: bool,
    /// The id of the lease a grant made.
    pub lease: i64,
}

/// One request: `op` on `key` (with `value` for writes), on the driver's connection `conn`.
pub struct Call<'a> {
    pub conn: usize,
    pub op: Op,
    pub key: &'a [u8],
    pub value: Bytes,
}

/// A driver's answer, later.
pub type Answer<'a, T> = BoxFuture<'a, Result<T, String>>;

/// A watch's answers as they come: the mod revisions of each answer's events.
pub type EventStream = futures::stream::BoxStream<'static, Result<Vec<i64>, String>>;

/// A target's client: one request on one of its connections.
pub trait Driver: Send + Sync {
    fn request<'a>(&'a self, call: Call<'a>) -> Answer<'a, OpResult>;
    /// A watch of every key from now on, on connection `conn`.
    fn watch(&self, _conn: usize) -> Answer<'_, EventStream> {
        Box::pin(async { Err("this driver cannot watch".to_string()) })
    }
    /// The current mod revision of a key (0 when absent), read linearizably.
    fn revision<'a>(&'a self, conn: usize, key: &'a [u8]) -> Answer<'a, u64> {
        let call = Call { conn, op: Op::Get { linearizable: true }, key, value: Bytes::new() };
        Box::pin(async move { Ok(self.request(call).await?.revision) })
    }
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: Target,
    pub scenario: Scenario,
    pub clients: usize,
    pub conns: usize,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub key_from: u64,
    pub requests: u64,
    pub errors: u64,
    /// Compare-and-swap requests whose condition failed (answers, not errors).
    pub compare_failed: u64,
    pub seconds: f64,
    pub throughput: f64,
    /// Latencies of successful requests, in milliseconds.
    pub latency_ms: Latency,
    /// The first few error messages.
    pub sample_errors: Vec<String>,
    /// With `--watchers`: what they received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
    pub idle_watchers: usize,
    /// With `lease-grant` and `lease-keepalive`: the leases the run granted and revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<LeaseReport>,
    /// The CPU time of the members over the run, when they run on this machine (`observe`).
    pub cpu: Option<observe::CpuReport>,
    /// kuberaft: where the time went, from the leader's and a follower's `/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<observe::Breakdown>,
}

/// The leases of a `lease-grant` or `lease-keepalive` run.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseReport {
    pub ttl: i64,
    /// Leases granted: by the measured requests (`lease-grant`) or one per worker before them
    /// (`lease-keepalive`).
    pub granted: u64,
    /// Of them, revoked after the measured run (0 with `--keep-leases`).
    pub revoked: u64,
    /// The first few revocation errors.
    pub revoke_errors: Vec<String>,
}

/// What the watchers of a run received.
#[derive(Clone, Debug, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    /// Events received, all watchers together.
    pub events: u64,
    pub events_per_second: f64,
    /// From a put's acknowledgement to the receipt of its event, per event received (0 when
    /// the event came first).
    pub latency_ms: Latency,
    pub errors: Vec<String>,
}

/// The acknowledgement times of recent puts, by revision: a ring the workers write and the
/// watchers read without locks (a slot holds the revision and the time, in µs since the start).
struct Acks {
    start: Instant,
    revisions: Vec<AtomicU64>,
    times: Vec<AtomicU64>,
}

const ACK_SLOTS: usize = 1 << 20;

impl Acks {
    fn new(start: Instant) -> Acks {
        let slots = || (0..ACK_SLOTS).map(|_| AtomicU64::new(0)).collect();
        Acks { start, revisions: slots(), times: slots() }
    }

    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn acked(&self, revision: u64) {
        let slot = revision as usize % ACK_SLOTS;
        self.times[slot].store(self.micros(), Ordering::Relaxed);
        self.revisions[slot].store(revision, Ordering::Release);
    }

    /// The latency of an event of `revision` received now, if its put's acknowledgement is
    /// known (0 when the event came first).
    fn latency(&self, revision: u64) -> Option<u64> {
        let slot = revision as usize % ACK_SLOTS;
        if self.revisions[slot].load(Ordering::Acquire) != revision {
            return None;
        }
        Some(self.micros().saturating_sub(self.times[slot].load(Ordering::Relaxed)))
    }
}

/// What one watcher received: events, latencies, why it stopped early.
type Receipts = (u64, Histogram<u64>, Option<String>);

/// One watcher's receipts until `stop`.
async fn watch_events(driver: Arc<dyn Driver>, conn: usize, acks: Arc<Acks>, stop: Arc<AtomicBool>) -> Receipts {
    use futures::StreamExt;
    let mut histogram = new_histogram();
    let mut events = 0u64;
    let mut stream = match driver.watch(conn).await {
        Ok(stream) => stream,
        Err(e) => return (0, histogram, Some(e)),
    };
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Err(_) => continue,
            Ok(None) => return (events, histogram, Some("the watch ended".to_string())),
            Ok(Some(Err(e))) => return (events, histogram, Some(e)),
            Ok(Some(Ok(revisions))) => {
                for revision in revisions {
                    events += 1;
                    if let Some(micros) = acks.latency(revision as u64) {
                        let _ = histogram.record(micros.clamp(1, 60_000_000));
                    }
                }
            }
        }
    }
    (events, histogram, None)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// The key of index `i`: decimal digits, zero-padded (or cut) to `size` bytes, so both targets
/// get the same printable keys.
pub fn key_of(i: u64, size: usize) -> Vec<u8> {
    let digits = format!("{i:0size$}");
    digits.as_bytes()[digits.len().saturating_sub(size)..].to_vec()
}

fn check(args: &BenchArgs) -> Result<(), CliError> {
    let usage = |m: String| Err(CliError::Usage(m));
    if args.clients == 0 || args.conns == 0 {
        return usage("--clients and --conns must be at least 1".into());
    }
    if args.key_size == 0 || args.key_size > 1024 {
        return usage("--key-size must be 1 to 1024".into());
    }
    if args.key_space == 0 {
        return usage("--key-space must be at least 1".into());
    }
    if args.watchers > 0 && !matches!(args.scenario, Scenario::Put | Scenario::Load | Scenario::Cas) {
        return usage("--watchers measure writes: use them with put, cas or load".into());
    }
    let Some(key_end) = args.key_from.checked_add(args.key_space) else {
        return usage("--key-from plus --key-space is too large".into());
    };
    if args.key_size < 20 && key_end > 10u64.pow(args.key_size as u32) {
        return usage(format!(
            "keys up to index {key_end} (--key-from plus --key-space) need keys longer than {} bytes",
            args.key_size
        ));
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return usage("--read-ratio must be between 0 and 1".into());
    }
    let bounded = args.total.is_some() || args.scenario == Scenario::Load;
    let positive = args.duration.is_finite() && args.duration > 0.0;
    if !bounded && !positive {
        return usage("--duration must be a positive number of seconds".into());
    }
    if args.total == Some(0) {
        return usage("--total must be at least 1".into());
    }
    if args.scenario.is_lease() && args.lease_ttl < 1 {
        return usage("--lease-ttl must be at least 1 second".into());
    }
    Ok(())
}

fn driver(args: &BenchArgs) -> Result<Arc<dyn Driver>, CliError> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    match args.target {
        Target::Kuberaft => {
            Ok(Arc::new(kuberaft::KuberaftDriver::new(&args.endpoints, args.conns, timeout, &args.security)?))
        }
        Target::EtcdGateway => {
            Ok(Arc::new(gateway::GatewayDriver::new(&args.endpoints, args.conns, timeout, &args.security)?))
        }
        #[cfg(feature = "etcd")]
        Target::Etcd => Ok(Arc::new(etcd::EtcdDriver::connect(&args.endpoints, args.conns, timeout, &args.security)?)),
        #[cfg(not(feature = "etcd"))]
        Target::Etcd => Err(CliError::Usage(
            "this kuberaft was built without etcd support: `cargo build --release --features etcd` (needs protoc)"
                .into(),
        )),
    }
}

/// Runs `kuberaft bench`.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let report = bench(&args).await?;
    let text = match args.output {
        Output::Json => crate::base::output::to_json_line(&report)?,
        Output::Table => table(&report),
    };
    crate::base::output::write_stdout(text.as_bytes())?;
    if report.requests > 0 && report.errors == report.requests {
        let first = report.sample_errors.first().cloned().unwrap_or_default();
        return Err(CliError::Failed(format!("every request failed (the first: {first})")));
    }
    Ok(())
}

/// Runs the benchmark the arguments describe and returns its report.
pub async fn bench(args: &BenchArgs) -> Result<Report, CliError> {
    check(args)?;
    let driver = driver(args)?;
    bench_with(args, driver, true).await
}

/// Runs the benchmark on `driver` (arguments already checked); with `observe`, reads the
/// members' CPU time and `/metrics` around the measured run (`observe`).
async fn bench_with(args: &BenchArgs, driver: Arc<dyn Driver>, observe: bool) -> Result<Report, CliError> {
    let load = args.scenario == Scenario::Load;
    let value = Bytes::from(vec![b'v'; args.val_size]);
    if args.preload {
        preload(args, &driver, &value).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(AtomicU64::new(if load { u64::MAX } else { args.total.unwrap_or(u64::MAX) }));
    // `load`: the offset in the key space of the next key to write.
    let next = Arc::new(AtomicU64::new(0));
    // The idle watchers first: they are open (and not reading) for the whole run.
    let mut idle = Vec::new();
    for i in 0..args.idle_watchers {
        idle.push(driver.watch(i % args.conns).await.map_err(|e| CliError::Failed(format!("an idle watcher: {e}")))?);
    }
    let acks = (args.watchers > 0).then(|| Arc::new(Acks::new(Instant::now())));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    if let Some(acks) = &acks {
        for i in 0..args.watchers {
            let task = watch_events(driver.clone(), i % args.conns, acks.clone(), watch_stop.clone());
            watchers.push(tokio::spawn(task));
        }
        // Let the watches open before the load starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // `lease-keepalive`: each worker's lease, granted before the measured run.
    let own_leases = match args.scenario {
        Scenario::LeaseKeepalive => grant_worker_leases(args, &driver).await?,
        _ => Vec::new(),
    };
    let observer = if observe { Some(observe::Observer::start(&args.endpoints, &args.security).await) } else { None };
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.clients);
    for worker in 0..args.clients {
        let (driver, value, stop, done, failed, budget, next) =
            (driver.clone(), value.clone(), stop.clone(), done.clone(), failed.clone(), budget.clone(), next.clone());
        let args = args.clone();
        let acks = acks.clone();
        let lease = own_leases.get(worker).copied();
        workers.push(tokio::spawn(async move {
            let counters = Counters {
                stop: &stop,
                done: &done,
                failed: &failed,
                budget: &budget,
                next: &next,
                acks: acks.as_deref(),
            };
            work(worker, &args, driver.as_ref(), value, lease, counters).await
        }));
    }
    let deadline = (args.total.is_none() && !load).then(|| started + Duration::from_secs_f64(args.duration));
    let label = format!("{:?} {} c={}", args.target, args.scenario.name(), args.clients).to_lowercase();
    let mut last = (started, 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let finished = workers.iter().all(|w| w.is_finished());
        if deadline.is_some_and(|d| now >= d) || finished {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if !args.quiet && now.duration_since(last.0) >= Duration::from_secs(1) {
            let count = done.load(Ordering::Relaxed);
            let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            let of = if load { format!(" of {}", args.key_space) } else { String::new() };
            crate::base::output::write_stderr(&format!(
                "\r[{label}] {:>5.1}s {count:>9}{of} requests {rate:>9.0}/s errors {}   ",
                now.duration_since(started).as_secs_f64(),
                failed.load(Ordering::Relaxed)
            ));
            last = (now, count);
        }
    }
    let mut histogram = new_histogram();
    let mut compare_failed = 0;
    let mut sample_errors = Vec::new();
    let mut granted = own_leases;
    for worker in workers {
        let outcome = worker.await.map_err(|e| CliError::Failed(format!("a worker failed: {e}")))?;
        histogram.add(&outcome.histogram).map_err(|e| CliError::Failed(format!("merge histograms: {e}")))?;
        compare_failed += outcome.compare_failed;
        granted.extend(outcome.granted);
        for error in outcome.errors {
            if sample_errors.len() < 5 && !sample_errors.contains(&error) {
                sample_errors.push(error);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let measured = histogram.len() + failed.load(Ordering::Relaxed);
    let (cpu, breakdown) = match observer {
        Some(observer) => observer.finish(measured).await,
        None => (None, None),
    };
    if !args.quiet {
        crate::base::output::write_stderr("\n");
    }
    // The watchers get a moment for the last events, then stop.
    let watch = if args.watchers > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        watch_stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut latency = new_histogram();
        let mut errors = Vec::new();
        for w in watchers {
            let (events, histogram, error) = w.await.map_err(|e| CliError::Failed(format!("a watcher failed: {e}")))?;
            total += events;
            latency.add(&histogram).map_err(|e| CliError::Failed(format!("merge histograms: {e}")))?;
            if let Some(e) = error.filter(|e| errors.len() < 5 && !errors.contains(e)) {
                errors.push(e);
            }
        }
        Some(WatchReport {
            watchers: args.watchers,
            events: total,
            events_per_second: total as f64 / seconds,
            latency_ms: Latency::of(&latency),
            errors,
        })
    } else {
        None
    };
    drop(idle);
    // The leases go after the measured run (not measured), unless they are to stay.
    let leases = if args.scenario.is_lease() {
        let (revoked, revoke_errors) =
            if args.keep_leases { (0, Vec::new()) } else { revoke(args, &driver, &granted).await };
        Some(LeaseReport { ttl: args.lease_ttl, granted: granted.len() as u64, revoked, revoke_errors })
    } else {
        None
    };
    let errors = failed.load(Ordering::Relaxed);
    let requests = histogram.len() + errors;
    Ok(Report {
        target: args.target,
        scenario: args.scenario,
        clients: args.clients,
        conns: args.conns,
        key_size: args.key_size,
        val_size: args.val_size,
        key_space: args.key_space,
        key_from: args.key_from,
        requests,
        errors,
        compare_failed,
        seconds,
        throughput: histogram.len() as f64 / seconds,
        latency_ms: Latency::of(&histogram),
        sample_errors,
        watch,
        idle_watchers: args.idle_watchers,
        leases,
        cpu,
        breakdown,
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: bounds that cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 digits is valid"))
}

struct WorkerOutcome {
    histogram: Histogram<u64>,
    compare_failed: u64,
    errors: Vec<String>,
    /// `lease-grant`: the leases this worker granted.
    granted: Vec<i64>,
}

/// What the workers share: when to stop, what they did, and what is left.
#[derive(Clone, Copy)]
struct Counters<'a> {
    stop: &'a AtomicBool,
    done: &'a AtomicU64,
    failed: &'a AtomicU64,
    /// Requests left (`--total`).
    budget: &'a AtomicU64,
    /// `load`: the offset of the next key to write.
    next: &'a AtomicU64,
    /// Put acknowledgements, when watchers measure their latency.
    acks: Option<&'a Acks>,
}

async fn work(
    worker: usize,
    args: &BenchArgs,
    driver: &dyn Driver,
    value: Bytes,
    lease: Option<i64>,
    counters: Counters<'_>,
) -> WorkerOutcome {
    let Counters { stop, done, failed, budget, next, acks } = counters;
    let conn = worker % args.conns;
    let mut rng = Rng::new(args.seed.wrapping_mul(0x9e37_79b9).wrapping_add(worker as u64));
    let mut histogram = new_histogram();
    let mut outcome_errors = Vec::new();
    let mut compare_failed = 0;
    let mut granted = Vec::new();
    // CAS: this worker's keys (i ≡ worker mod clients) and the revision it last saw of each.
    let own_keys = (args.key_space / args.clients as u64).max(1);
    let mut revisions: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    // `load`: the key this worker writes and how often it tried it already.
    let mut loading: Option<(u64, u32)> = None;
    while !stop.load(Ordering::Relaxed) {
        if budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_err() {
            break;
        }
        let (index, op) = match args.scenario {
            Scenario::Load => {
                let (index, attempts) = match loading {
                    Some((index, attempts)) if attempts < LOAD_ATTEMPTS => (index, attempts),
                    _ => match next.fetch_add(1, Ordering::Relaxed) {
                        offset if offset < args.key_space => (offset, 0),
                        _ => break,
                    },
                };
                loading = Some((index, attempts + 1));
                (index, Op::Put)
            }
            Scenario::Put => (rng.range(0, args.key_space), Op::Put),
            Scenario::Get => (rng.range(0, args.key_space), Op::Get { linearizable: true }),
            Scenario::Sget => (rng.range(0, args.key_space), Op::Get { linearizable: false }),
            Scenario::Mixed => {
                let read = (rng.next_u64() as f64 / u64::MAX as f64) < args.read_ratio;
                let op = if read { Op::Get { linearizable: true } } else { Op::Put };
                (rng.range(0, args.key_space), op)
            }
            Scenario::Cas => {
                let index = (rng.range(0, own_keys) * args.clients as u64 + worker as u64) % args.key_space;
                let key = key_of(args.key_from + index, args.key_size);
                let revision = match revisions.get(&index) {
                    Some(&revision) => revision,
                    None => match driver.revision(conn, &key).await {
                        Ok(revision) => revision,
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if outcome_errors.len() < 5 {
                                outcome_errors.push(e);
                            }
                            continue;
                        }
                    },
                };
                (index, Op::Cas { revision })
            }
            Scenario::LeaseGrant => (0, Op::LeaseGrant { ttl: args.lease_ttl }),
            Scenario::LeaseKeepalive => match lease {
                Some(id) => (0, Op::LeaseKeepAlive { id }),
                None => break,
            },
        };
        let key = key_of(args.key_from + index, args.key_size);
        let started = Instant::now();
        match driver.request(Call { conn, op, key: &key, value: value.clone() }).await {
            Ok(result) => {
                let micros = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                let _ = histogram.record(micros);
                done.fetch_add(1, Ordering::Relaxed);
                loading = None;
                if let (Some(acks), Op::Put | Op::Cas { .. }) = (acks, op) {
                    if !result.compare_failed {
                        acks.acked(result.revision);
                    }
                }
                if let Op::LeaseGrant { .. } = op {
                    granted.push(result.lease);
                }
                if result.compare_failed {
                    compare_failed += 1;
                    revisions.remove(&index);
                } else if matches!(op, Op::Cas { .. }) {
                    revisions.insert(index, result.revision);
                }
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                revisions.remove(&index);
                if outcome_errors.len() < 5 {
                    outcome_errors.push(e);
                }
            }
        }
    }
    WorkerOutcome { histogram, compare_failed, errors: outcome_errors, granted }
}

/// `lease-keepalive`: one lease per worker, granted on the worker's connection before the
/// measured run. If any grant fails, the others are revoked and the run does not start.
async fn grant_worker_leases(args: &BenchArgs, driver: &Arc<dyn Driver>) -> Result<Vec<i64>, CliError> {
    let grants = (0..args.clients).map(|worker| {
        let driver = driver.clone();
        let call = Call {
            conn: worker % args.conns,
            op: Op::LeaseGrant { ttl: args.lease_ttl },
            key: &[],
            value: Bytes::new(),
        };
        async move { driver.request(call).await.map(|r| r.lease) }
    });
    let answers = futures::future::join_all(grants).await;
    let granted: Vec<i64> = answers.iter().filter_map(|a| a.as_ref().ok().copied()).collect();
    if let Some(Err(e)) = answers.into_iter().find(Result::is_err) {
        revoke(args, driver, &granted).await;
        return Err(CliError::Failed(format!("granting the workers' leases: {e}")));
    }
    Ok(granted)
}

/// Revokes `leases` with `--clients` workers: how many went, and the first few errors.
async fn revoke(args: &BenchArgs, driver: &Arc<dyn Driver>, leases: &[i64]) -> (u64, Vec<String>) {
    let next = Arc::new(AtomicU64::new(0));
    let leases: Arc<[i64]> = leases.into();
    let mut tasks = Vec::new();
    for worker in 0..args.clients.min(leases.len()) {
        let (driver, next, leases, conn) = (driver.clone(), next.clone(), leases.clone(), worker % args.conns);
        tasks.push(tokio::spawn(async move {
            let (mut revoked, mut errors) = (0u64, Vec::new());
            while let Some(&id) = leases.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                let call = Call { conn, op: Op::LeaseRevoke { id }, key: &[], value: Bytes::new() };
                match driver.request(call).await {
                    Ok(_) => revoked += 1,
                    Err(e) if errors.len() < 5 => errors.push(format!("revoke lease {id:x}: {e}")),
                    Err(_) => {}
                }
            }
            (revoked, errors)
        }));
    }
    let (mut revoked, mut errors) = (0, Vec::new());
    for task in tasks {
        match task.await {
            Ok((n, e)) => {
                revoked += n;
                errors.extend(e);
            }
            Err(e) => errors.push(format!("a revoking worker failed: {e}")),
        }
    }
    errors.truncate(5);
    (revoked, errors)
}

/// Writes every key once, with all workers, before the measured run.
async fn preload(args: &BenchArgs, driver: &Arc<dyn Driver>, value: &Bytes) -> Result<(), CliError> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for worker in 0..args.clients {
        let (driver, value, next, errors) = (driver.clone(), value.clone(), next.clone(), errors.clone());
        let first_error = first_error.clone();
        let (conn, key_space, key_from, key_size) = (worker % args.conns, args.key_space, args.key_from, args.key_size);
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= key_space {
                    break;
                }
                let key = key_of(key_from + index, key_size);
                if let Err(e) = driver.request(Call { conn, op: Op::Put, key: &key, value: value.clone() }).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| CliError::Failed(format!("preload: {e}")))?;
    }
    match errors.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => {
            let first = first_error.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
            Err(CliError::Failed(format!("preload: {n} of {} writes failed, the first with: {first}", args.key_space)))
        }
    }
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let l = &r.latency_ms;
    let mut out = if r.scenario.is_lease() {
        format!("{:?} {}: {} clients on {} conns\n", r.target, r.scenario.name(), r.clients, r.conns)
    } else {
        format!(
            "{:?} {}: {} clients on {} conns, {}-byte keys ({} of them from index {}), {}-byte values\n",
            r.target,
            r.scenario.name(),
            r.clients,
            r.conns,
            r.key_size,
            r.key_space,
            r.key_from,
            r.val_size
        )
    }
    .to_lowercase();
    out.push_str(&format!(
        "requests {}  errors {}  compare-failed {}  in {:.2} s  =>  {:.0} requests/s\n",
        r.requests, r.errors, r.compare_failed, r.seconds, r.throughput
    ));
    out.push_str(&format!(
        "latency ms  mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
        l.mean, l.p50, l.p90, l.p99, l.p999, l.max
    ));
    for e in &r.sample_errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if let Some(leases) = &r.leases {
        let kept = leases.granted - leases.revoked;
        out.push_str(&format!(
            "leases: {} granted with a TTL of {} s, {} revoked after the run, {} left\n",
            leases.granted, leases.ttl, leases.revoked, kept
        ));
        for e in &leases.revoke_errors {
            out.push_str(&format!("error: {e}\n"));
        }
    }
    if r.idle_watchers > 0 {
        out.push_str(&format!("with {} idle watchers of every key (never reading)\n", r.idle_watchers));
    }
    if let Some(cpu) = &r.cpu {
        out.push_str(&format!(
            "members' cpu: {:.2} s in {} processes  =>  {:.3} cpu seconds per 10k requests\n",
            cpu.seconds, cpu.processes, cpu.seconds_per_10k
        ));
    }
    if let Some(breakdown) = &r.breakdown {
        out.push_str(&observe::table(breakdown));
    }
    if let Some(w) = &r.watch {
        let l = &w.latency_ms;
        out.push_str(&format!(
            "watch: {} watchers received {} events  =>  {:.0} events/s; put ack to event ms  mean {:.3}  p50 {:.3}  p99 {:.3}  max {:.3}\n",
            w.watchers, w.events, w.events_per_second, l.mean, l.p50, l.p99, l.max
        ));
        for e in &w.errors {
            out.push_str(&format!("watch error: {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_are_distinct() {
        assert_eq!(key_of(42, 8), b"00000042".to_vec());
        assert_eq!(key_of(123_456_789, 4), b"6789".to_vec());
        let keys: std::collections::BTreeSet<Vec<u8>> = (0..10_000).map(|i| key_of(i, 8)).collect();
        assert_eq!(keys.len(), 10_000);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let args = |extra: &[&str]| {
            #[derive(clap::Parser)]
            struct Wrap {
                #[command(flatten)]
                bench: BenchArgs,
            }
            let parsed: Wrap = clap::Parser::parse_from(std::iter::once("bench").chain(extra.iter().copied()));
            parsed.bench
        };
        assert!(check(&args(&[])).is_ok());
        for bad in [
            &["--clients", "0"][..],
            &["--key-size", "0"],
            &["--key-space", "0"],
            &["--key-size", "2", "--key-space", "1000"],
            &["--read-ratio", "1.5"],
            &["--total", "0"],
            &["--duration", "0"],
            &["--key-size", "4", "--key-space", "10", "--key-from", "9991"],
            &["--key-size", "30", "--key-space", "10", "--key-from", &u64::MAX.to_string()],
        ] {
            assert!(matches!(check(&args(bad)), Err(CliError::Usage(_))), "{bad:?}");
        }
        // The last key of 0..10000 fits in 4 digits; a load needs no duration.
        assert!(check(&args(&["--key-size", "4", "--key-space", "10", "--key-from", "9990"])).is_ok());
        assert!(check(&args(&["--scenario", "load", "--duration", "0"])).is_ok());
    }

    /// A driver that records the keys it wrote and fails the first attempt at the keys in
    /// `fail_first` (`fail_always`: every attempt).
    #[derive(Default)]
    struct Recorder {
        written: std::sync::Mutex<Vec<Vec<u8>>>,
        fail_first: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
        fail_always: std::collections::BTreeSet<Vec<u8>>,
    }

    impl Driver for Recorder {
        fn request<'a>(&'a self, call: Call<'a>) -> Answer<'a, OpResult> {
            Box::pin(async move {
                let key = call.key.to_vec();
                if self.fail_always.contains(&key) || self.fail_first.lock().expect("lock").remove(&key) {
                    return Err(format!("refused {}", String::from_utf8_lossy(&key)));
                }
                assert_eq!(call.value.len(), 100, "values of --val-size bytes");
                self.written.lock().expect("lock").push(key);
                Ok(OpResult::default())
            })
        }
    }

    fn parse(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let common = ["bench", "--quiet", "--clients", "8", "--val-size", "100", "--key-size", "6"];
        let parsed: Wrap = clap::Parser::parse_from(common.iter().chain(extra));
        parsed.bench
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_writes_each_key_of_its_range_once_and_tries_failed_ones_again() {
        let args = parse(&["--scenario", "load", "--key-from", "1000", "--key-space", "500", "--total", "3"]);
        let recorder = Arc::new(Recorder {
            fail_first: std::sync::Mutex::new((1000..1500).step_by(7).map(|i| key_of(i, 6)).collect()),
            fail_always: [key_of(1499, 6)].into(),
            ..Recorder::default()
        });
        let report = bench_with(&args, recorder.clone(), false).await.expect("a report");
        let mut written = recorder.written.lock().expect("lock").clone();
        written.sort();
        let expected: Vec<Vec<u8>> = (1000..1499).map(|i| key_of(i, 6)).collect();
        assert_eq!(written, expected, "every key of 1000..1500 once, but the one that always fails");
        // The first attempts at 1000, 1007, ..., 1497 (72 keys) failed and the second ones
        // succeeded; every attempt at 1499 failed.
        let errors = 72 + LOAD_ATTEMPTS as u64;
        assert_eq!((report.requests, report.errors), (499 + errors, errors));
        assert_eq!((report.key_from, report.key_space, report.scenario), (1000, 500, Scenario::Load));
        assert_eq!(report.sample_errors.len(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puts_draw_their_keys_from_the_shifted_key_space() {
        let args = parse(&["--scenario", "put", "--key-from", "2000", "--key-space", "20", "--total", "400"]);
        let recorder = Arc::new(Recorder::default());
        let report = bench_with(&args, recorder.clone(), false).await.expect("a report");
        assert_eq!((report.requests, report.errors), (400, 0));
        let written: std::collections::BTreeSet<Vec<u8>> =
            recorder.written.lock().expect("lock").iter().cloned().collect();
        let expected: std::collections::BTreeSet<Vec<u8>> = (2000..2020).map(|i| key_of(i, 6)).collect();
        assert_eq!(written, expected, "400 random puts over 20 keys hit each of them, and no other");
    }

    /// A lessor: grants, renewals per lease, revocations; refuses the keep-alive of a lease it
    /// does not hold.
    #[derive(Default)]
    struct Lessor {
        state: std::sync::Mutex<LessorState>,
    }

    #[derive(Default)]
    struct LessorState {
        next: i64,
        /// Live leases and the keep-alives each received.
        live: std::collections::BTreeMap<i64, u64>,
        ttls: Vec<i64>,
        revoked: Vec<i64>,
        /// Grants it still makes (None: any number).
        grants_left: Option<u32>,
    }

    impl Driver for Lessor {
        fn request<'a>(&'a self, call: Call<'a>) -> Answer<'a, OpResult> {
            Box::pin(async move {
                let mut state = self.state.lock().expect("lock");
                match call.op {
                    Op::LeaseGrant { ttl } => {
                        if let Some(left) = &mut state.grants_left {
                            *left = left.checked_sub(1).ok_or("too many leases")?;
                        }
                        state.next += 1;
                        let id = 0x100 + state.next;
                        state.live.insert(id, 0);
                        state.ttls.push(ttl);
                        Ok(OpResult { lease: id, ..OpResult::default() })
                    }
                    Op::LeaseKeepAlive { id } => match state.live.get_mut(&id) {
                        Some(renewals) => {
                            *renewals += 1;
                            Ok(OpResult { lease: id, ..OpResult::default() })
                        }
                        None => Err(format!("no lease {id:x}")),
                    },
                    Op::LeaseRevoke { id } => {
                        state.live.remove(&id).ok_or_else(|| format!("no lease {id:x}"))?;
                        state.revoked.push(id);
                        Ok(OpResult::default())
                    }
                    op => Err(format!("a lease scenario asked for {op:?}")),
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_grant_grants_one_lease_per_request_and_revokes_them_after_unless_kept() {
        let lessor = Arc::new(Lessor::default());
        let args = parse(&["--scenario", "lease-grant", "--lease-ttl", "30", "--total", "300"]);
        let report = bench_with(&args, lessor.clone(), false).await.expect("a report");
        assert_eq!((report.requests, report.errors), (300, 0));
        let leases = report.leases.as_ref().expect("a lease report");
        assert_eq!((leases.ttl, leases.granted, leases.revoked), (30, 300, 300), "{:?}", leases.revoke_errors);
        {
            let state = lessor.state.lock().expect("lock");
            assert_eq!(state.ttls, vec![30; 300], "one grant of --lease-ttl seconds per request");
            assert!(state.live.is_empty(), "every lease revoked: {:?}", state.live);
            let revoked: std::collections::BTreeSet<i64> = state.revoked.iter().copied().collect();
            assert_eq!(revoked, (0x101..0x101 + 300).collect(), "each granted lease revoked once");
        }
        let kept = parse(&["--scenario", "lease-grant", "--total", "50", "--keep-leases"]);
        let report = bench_with(&kept, lessor.clone(), false).await.expect("a report");
        let leases = report.leases.as_ref().expect("a lease report");
        assert_eq!((leases.ttl, leases.granted, leases.revoked), (60, 50, 0));
        assert_eq!(lessor.state.lock().expect("lock").live.len(), 50, "--keep-leases keeps them");
        assert!(table(&report).starts_with("kuberaft lease-grant: 8 clients"), "{}", table(&report));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!((json["scenario"].as_str(), json["leases"]["granted"].as_u64()), (Some("lease-grant"), Some(50)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_keepalive_renews_one_lease_per_worker_granted_before_the_run() {
        let lessor = Arc::new(Lessor::default());
        let args = parse(&["--scenario", "lease-keepalive", "--total", "400", "--keep-leases"]);
        let report = bench_with(&args, lessor.clone(), false).await.expect("a report");
        assert_eq!((report.requests, report.errors), (400, 0), "{:?}", report.sample_errors);
        let leases = report.leases.as_ref().expect("a lease report");
        assert_eq!((leases.granted, leases.revoked), (8, 0));
        let renewals: Vec<u64> = lessor.state.lock().expect("lock").live.values().copied().collect();
        assert_eq!(renewals.len(), 8, "one lease per worker");
        assert_eq!(renewals.iter().sum::<u64>(), 400, "every request one keep-alive: {renewals:?}");
        // Without --keep-leases the workers' leases go after the run.
        let args = parse(&["--scenario", "lease-keepalive", "--total", "40"]);
        let lessor = Arc::new(Lessor::default());
        let report = bench_with(&args, lessor.clone(), false).await.expect("a report");
        assert_eq!(report.leases.as_ref().map(|l| (l.granted, l.revoked)), Some((8, 8)));
        assert!(lessor.state.lock().expect("lock").live.is_empty());
        // When a worker's lease cannot be granted the run does not start, and the leases
        // granted to the others are revoked.
        let lessor = Arc::new(Lessor::default());
        lessor.state.lock().expect("lock").grants_left = Some(5);
        let refused = bench_with(&args, lessor.clone(), false).await;
        assert!(matches!(&refused, Err(CliError::Failed(m)) if m.contains("leases")), "{:?}", refused.err());
        let state = lessor.state.lock().expect("lock");
        assert_eq!((state.live.len(), state.revoked.len()), (0, 5));
    }
}
