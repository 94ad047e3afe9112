//! `kuberaft dev`: a local cluster of real `kuberaft node` processes on 127.0.0.1, with a live
//! status table, for trying the store without Kubernetes. Member i is `etcd-{i}` with its client
//! port at base+10i and its peer port right after, exactly as a StatefulSet names its pods. The
//! data lives in a temporary directory removed at exit, or in `--data-dir`, where running again
//! resumes the same cluster. Ctrl-C or SIGTERM stops every member (SIGTERM, then SIGKILL after
//! a grace period), reaps it, and cleans up.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::table::{clean_cell, or_dash, render};
use super::{write_stdout, CliError, CACERT_ENV, CERT_ENV, ENDPOINTS_ENV, KEY_ENV};
use crate::base::wire::{Status, DEFAULT_CLIENT_PORT, DEFAULT_PEER_PORT};
use crate::client::{Client, ClientConfig, TlsOptions};

/// Members of a dev cluster, as for a RaftCluster.
pub const MAX_REPLICAS: u8 = 9;
/// Ports between consecutive members: room for the client and peer port of each.
pub const PORT_STRIDE: u16 = 10;
/// A member's peer port is this far above its client port, as 2380 is above 2379.
pub const PEER_PORT_OFFSET: u16 = DEFAULT_PEER_PORT - DEFAULT_CLIENT_PORT;
/// Every member listens and advertises on loopback only.
pub const DEV_HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// `--initial-cluster-token` of dev clusters.
pub const DEV_CLUSTER_TOKEN: &str = "kuberaft-dev";
/// Member names, as the operator's StatefulSet names its pods.
const MEMBER_NAME_PREFIX: &str = "etcd-";

/// How often the status is fetched (and redrawn on a terminal).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a status line is printed when stdout is not a terminal (a log file, CI).
const PLAIN_PRINT_INTERVAL: Duration = Duration::from_secs(5);
/// A status request must answer well within one refresh.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long members get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(50);
/// Lines of a member's log shown when it exits early.
const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// "Clear the screen, cursor home": redraw in place on a terminal.
const ANSI_CLEAR: &str = "\x1b[H\x1b[2J";

#[derive(Clone, Debug, Args)]
pub struct DevArgs {
    /// Number of members, 1 to 9.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_REPLICAS)))]
    pub replicas: u8,
    /// Keep the data here (one directory per member); running again with it resumes the cluster.
    /// Default: a temporary directory, removed at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client port of etcd-0; member i listens on base+10i (client) and base+10i+1 (peer).
    #[arg(long, default_value_t = DEFAULT_CLIENT_PORT)]
    pub base_port: u16,
    /// Where the members' logs go (etcd-<i>.log). Default: the data directory.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// TLS on both ports with a throwaway CA: members require certificates of it from clients
    /// and from each other; the CA, the members' and a client's certificate are written to
    /// <data-dir>/pki, minted anew each run.
    #[arg(long)]
    pub tls: bool,
    /// Open the live view (etcd-0's /ui) in a browser: $BROWSER if set, else xdg-open (open on
    /// macOS). Without a browser it says so and goes on.
    #[arg(long)]
    pub open: bool,
}

/// One member of the planned cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Both ports speak TLS (`--tls`).
    pub tls: bool,
}

impl DevMember {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://{DEV_HOST}:{}", self.scheme(), self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://{DEV_HOST}:{}", self.scheme(), self.peer_port)
    }
}

/// The throwaway certificates of `dev --tls`, as files: the CA, each member's certificate (for
/// both of its ports and its calls to the others, as etcd's members use theirs), and one for a
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// Mints a CA and the certificates into `dir` (replacing earlier ones: certificates are
    /// not part of a member's data, so a resumed cluster takes new ones).
    pub fn mint(dir: &Path, members: &[DevMember]) -> Result<DevPki, CliError> {
        let failed = |e: String| CliError::Failed(format!("cannot mint the dev cluster's certificates: {e}"));
        create_dir(dir, "certificate")?;
        let pki = DevPki { dir: dir.to_path_buf() };
        let ca = crate::base::pki::Authority::new("kuberaft dev CA").map_err(|e| failed(e.to_string()))?;
        let write = |path: PathBuf, text: &str| {
            std::fs::write(&path, text).map_err(|e| failed(format!("{}: {e}", path.display())))
        };
        write(pki.ca(), ca.cert_pem())?;
        let host = DEV_HOST.to_string();
        let holders = members.iter().map(|m| (m.name.as_str(), vec![host.as_str(), "localhost"]));
        for (name, hosts) in holders.chain([(DEV_CLIENT, Vec::new())]) {
            let issued = ca.issue(name, &hosts).map_err(|e| failed(e.to_string()))?;
            write(pki.cert(name), &issued.cert_pem)?;
            write(pki.key(name), &issued.key_pem)?;
        }
        Ok(pki)
    }

    /// How a client of the dev cluster connects.
    pub fn client_options(&self) -> TlsOptions {
        TlsOptions {
            cacert: Some(self.ca()),
            cert: Some(self.cert(DEV_CLIENT)),
            key: Some(self.key(DEV_CLIENT)),
            inline: None,
        }
    }
}

/// The name (and common name) of the client certificate of `dev --tls`.
pub const DEV_CLIENT: &str = "client";

/// The members of a dev cluster: names and ports, checked to fit in the port range.
pub fn plan_members(replicas: u8, base_port: u16) -> Result<Vec<DevMember>, CliError> {
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(CliError::Usage(format!("--replicas must be between 1 and {MAX_REPLICAS}, not {replicas}")));
    }
    if base_port == 0 {
        return Err(CliError::Usage("--base-port must be a real port (1-65535), not 0".to_string()));
    }
    (0..replicas)
        .map(|index| {
            let client_port = u16::from(index)
                .checked_mul(PORT_STRIDE)
                .and_then(|offset| base_port.checked_add(offset))
                .filter(|port| port.checked_add(PEER_PORT_OFFSET).is_some());
            match client_port {
                Some(client_port) => Ok(DevMember {
                    name: format!("{MEMBER_NAME_PREFIX}{index}"),
                    client_port,
                    peer_port: client_port + PEER_PORT_OFFSET,
                    tls: false,
                }),
                None => Err(CliError::Usage(format!(
                    "--base-port {base_port} leaves no room for {replicas} members ({PORT_STRIDE} ports each); \
                     choose a lower one"
                ))),
            }
        })
        .collect()
}

/// `etcd-0=http://127.0.0.1:2380,etcd-1=...`: the `--initial-cluster` of every member.
pub fn initial_cluster(members: &[DevMember]) -> String {
    members.iter().map(|member| format!("{}={}", member.name, member.peer_url())).collect::<Vec<_>>().join(",")
}

/// The arguments of `kuberaft node` for one member (with `pki`, TLS on both ports, each
/// requiring certificates of the dev CA).
pub fn node_args(member: &DevMember, initial_cluster: &str, data_dir: &Path, pki: Option<&DevPki>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["node".into(), "--name".into(), member.name.clone().into()];
    args.extend(["--data-dir".into(), data_dir.as_os_str().to_owned()]);
    for (flag, value) in [
        ("--listen-client-url", member.client_url()),
        ("--advertise-client-url", member.client_url()),
        ("--listen-peer-url", member.peer_url()),
        ("--advertise-peer-url", member.peer_url()),
        ("--initial-cluster", initial_cluster.to_string()),
        // "new" also on a resumed run: a member with durable state ignores the initial list.
        ("--initial-cluster-state", "new".to_string()),
        ("--initial-cluster-token", DEV_CLUSTER_TOKEN.to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    if let Some(pki) = pki {
        let (cert, key, ca) = (pki.cert(&member.name), pki.key(&member.name), pki.ca());
        for (flag, path) in [
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--trusted-ca-file", &ca),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &ca),
        ] {
            args.push(flag.into());
            args.push(path.as_os_str().to_owned());
        }
        args.extend(["--client-cert-auth".into(), "--peer-client-cert-auth".into()]);
    }
    args
}

/// The endpoint list to hand to clients.
pub fn endpoints(members: &[DevMember]) -> Vec<String> {
    members.iter().map(DevMember::client_url).collect()
}

/// What is printed above the live table.
pub fn banner(members: &[DevMember], data: &str, log_dir: &Path, pki: Option<&DevPki>) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "kuberaft dev: {} member(s) on {DEV_HOST}; data: {data}; logs: {}",
        members.len(),
        log_dir.display()
    );
    let view = view_url(members);
    match pki {
        None => {
            let _ = writeln!(text, "live view: {view}");
        }
        Some(_) => {
            let _ = writeln!(text, "live view: {view} (the members require the client certificate below)");
        }
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "  export {ENDPOINTS_ENV}={}", endpoints(members).join(","));
    if let Some(pki) = pki {
        let options = pki.client_options();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let (ca, cert, key) = (path(&options.cacert), path(&options.cert), path(&options.key));
        let _ = writeln!(text, "  export {CACERT_ENV}={ca} {CERT_ENV}={cert} {KEY_ENV}={key}");
        let _ = writeln!(text, "  # etcdctl: --cacert={ca} --cert={cert} --key={key}");
    }
    let _ = writeln!(text, "  kuberaft kv put hello world");
    let _ = writeln!(text, "  kuberaft kv get hello");
    let _ = writeln!(text, "  kuberaft endpoint status");
    let _ = writeln!(text);
    let _ = writeln!(text, "Ctrl-C stops every member.");
    text
}

/// The live view of the cluster: etcd-0's `/ui` (any member's shows every member).
pub fn view_url(members: &[DevMember]) -> String {
    members.first().map(|m| format!("{}/ui", m.client_url())).unwrap_or_default()
}

/// The commands that may open `url` in a browser, in order: `$BROWSER` (a command, as
/// xdg-utils reads it; `%s` is replaced by the URL, else the URL is its last argument), then
/// the platform's opener.
pub fn browser_commands(url: &str, browser_env: Option<&str>) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    // $BROWSER may list several commands separated by ':'.
    for entry in browser_env.unwrap_or_default().split(':').map(str::trim).filter(|e| !e.is_empty()) {
        let mut words: Vec<String> = entry.split_whitespace().map(str::to_string).collect();
        if words.iter().any(|w| w.contains("%s")) {
            words = words.into_iter().map(|w| w.replace("%s", url)).collect();
        } else {
            words.push(url.to_string());
        }
        commands.push(words);
    }
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    commands.push(vec![opener.to_string(), url.to_string()]);
    commands
}

/// Opens `url` with the first browser command that starts; the browser runs on by itself (a
/// thread reaps it). What happened, as a line for the user.
fn open_browser(url: &str) -> String {
    for command in browser_commands(url, std::env::var("BROWSER").ok().as_deref()) {
        let Some((program, args)) = command.split_first() else { continue };
        let started =
            Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        if let Ok(mut child) = started {
            std::thread::spawn(move || child.wait());
            return format!("opened {url} with {program}\n");
        }
    }
    format!("no browser to open here (set $BROWSER, or install xdg-open); open {url} yourself\n")
}

/// What `dev` knows about one member at one refresh.
#[derive(Debug)]
pub enum MemberView {
    Up(Box<Status>),
    /// Running, but its status request failed.
    Unreachable(String),
    /// The process has ended.
    Exited(String),
}

/// MEMBER, ROLE, TERM, LEADER, COMMIT, APPLIED, NOTE; "down" for members that do not answer.
pub fn status_table(members: &[DevMember], views: &[MemberView]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .zip(views)
        .map(|(member, view)| match view {
            MemberView::Up(status) => vec![
                member.name.clone(),
                status.role.to_string(),
                status.term.to_string(),
                or_dash(&status.leader),
                status.commit_index.to_string(),
                status.applied_index.to_string(),
                clean_cell(&status.errors.join("; ")),
            ],
            MemberView::Unreachable(why) | MemberView::Exited(why) => {
                let mut row = vec![member.name.clone(), "down".to_string()];
                row.extend(std::iter::repeat_n("-".to_string(), 4));
                row.push(clean_cell(why));
                row
            }
        })
        .collect();
    render(&["MEMBER", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "NOTE"], &rows)
}

/// One line per refresh for logs: `etcd-0 leader term=2 commit=9 applied=9 | etcd-1 down`.
pub fn status_line(elapsed: Duration, members: &[DevMember], views: &[MemberView]) -> String {
    let parts: Vec<String> = members
        .iter()
        .zip(views)
        .map(|(member, view)| match view {
            MemberView::Up(status) => format!(
                "{} {} term={} commit={} applied={}",
                member.name, status.role, status.term, status.commit_index, status.applied_index
            ),
            MemberView::Unreachable(_) | MemberView::Exited(_) => format!("{} down", member.name),
        })
        .collect();
    format!("[{:>5}s] {}\n", elapsed.as_secs(), parts.join(" | "))
}

/// The last `count` lines of `text`.
pub fn tail_lines(text: &str, count: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

/// Checks the flags and plans the members.
pub fn validate(args: &DevArgs) -> Result<Vec<DevMember>, CliError> {
    let members = plan_members(args.replicas, args.base_port)?;
    Ok(members.into_iter().map(|m| DevMember { tls: args.tls, ..m }).collect())
}

/// A kept data directory resumes its cluster only as it ran: with TLS exactly when it ran with
/// `--tls` (its members' peer URLs in the log say http:// or https://). A run with `--tls`
/// leaves `<data>/pki`.
pub fn check_resume(data: &Path, members: &[DevMember]) -> Result<(), CliError> {
    let ran = members.iter().any(|m| data.join(&m.name).read_dir().is_ok_and(|mut entries| entries.next().is_some()));
    let tls = members.first().is_some_and(|m| m.tls);
    match (ran, data.join("pki").is_dir(), tls) {
        (true, false, true) => Err(CliError::Usage(format!(
            "{} holds a cluster that ran without --tls; run it without --tls, or use another --data-dir",
            data.display()
        ))),
        (true, true, false) => Err(CliError::Usage(format!(
            "{} holds a cluster that ran with --tls; run it with --tls, or use another --data-dir",
            data.display()
        ))),
        _ => Ok(()),
    }
}

/// Refuses to start when any port is taken, with one message naming every taken port.
fn check_ports_free(members: &[DevMember]) -> Result<(), CliError> {
    let mut problems = Vec::new();
    for member in members {
        for (kind, port) in [("client", member.client_port), ("peer", member.peer_port)] {
            // Bound and closed at once: only to learn whether the member will be able to bind.
            if let Err(err) = TcpListener::bind((DEV_HOST, port)) {
                let why = if err.kind() == std::io::ErrorKind::AddrInUse {
                    "already in use".to_string()
                } else {
                    err.to_string()
                };
                problems.push(format!("{DEV_HOST}:{port} ({kind} port of {}): {why}", member.name));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(CliError::Failed(format!(
        "cannot start the dev cluster: {}. Is another cluster running? Stop it or choose another --base-port.",
        problems.join("; ")
    )))
}

/// Where the members' data lives for this run.
enum DataDir {
    /// Removed when dropped (at exit).
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temporary(dir) => dir.path(),
            DataDir::Kept(path) => path,
        }
    }

    fn describe(&self) -> String {
        match self {
            DataDir::Temporary(dir) => format!("{} (temporary, removed at exit)", dir.path().display()),
            DataDir::Kept(path) => format!("{} (kept)", path.display()),
        }
    }
}

/// A member process and what `dev` has learned about its end.
struct RunningMember {
    member: DevMember,
    child: Child,
    log_path: PathBuf,
    /// How it ended ("exit status: 1"), once it has.
    exit: Option<String>,
}

impl RunningMember {
    /// Notices (once) that the process ended; returns its report when it just did.
    fn check_exit(&mut self) -> Option<String> {
        if self.exit.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => self.record_exit(status.to_string()),
            Ok(None) => None,
            // Cannot learn its state: count it as gone rather than poll it forever.
            Err(err) => self.record_exit(format!("cannot be waited for: {err}")),
        }
    }

    fn record_exit(&mut self, how: String) -> Option<String> {
        let report = exit_report(&self.member.name, &how, &self.log_path);
        self.exit = Some(how);
        Some(report)
    }

    fn is_running(&mut self) -> bool {
        let _ = self.check_exit();
        self.exit.is_none()
    }
}

/// Stops SIGINT/SIGTERM from killing `dev` and reports them instead.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, CliError> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|err| CliError::Failed(format!("cannot handle {name}: {err}")))
        };
        Ok(StopSignals {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Runs the dev cluster until a signal (exit 0) or until every member has exited (exit 1).
pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let members = validate(&args)?;
    check_ports_free(&members)?;
    // Before any child exists, so that a Ctrl-C from now on always leads to a clean stop.
    let mut signals = StopSignals::install()?;
    let exe = std::env::current_exe()
        .map_err(|err| CliError::Failed(format!("cannot find the kuberaft executable to start members: {err}")))?;

    let data = match &args.data_dir {
        Some(path) => {
            create_dir(path, "data")?;
            DataDir::Kept(path.clone())
        }
        None => DataDir::Temporary(
            tempfile::Builder::new()
                .prefix("kuberaft-dev-")
                .tempdir()
                .map_err(|err| CliError::Failed(format!("cannot create a temporary data directory: {err}")))?,
        ),
    };
    let log_dir = args.log_dir.clone().unwrap_or_else(|| data.path().to_path_buf());
    create_dir(&log_dir, "log")?;

    check_resume(data.path(), &members)?;
    let pki = if args.tls { Some(DevPki::mint(&data.path().join("pki"), &members)?) } else { None };
    let cluster = initial_cluster(&members);
    let mut running: Vec<RunningMember> = Vec::with_capacity(members.len());
    for member in &members {
        let member_dir = data.path().join(&member.name);
        let log_path = log_dir.join(format!("{}.log", member.name));
        let started = create_dir(&member_dir, "member data")
            .and_then(|()| spawn_member(&exe, node_args(member, &cluster, &member_dir, pki.as_ref()), &log_path));
        match started {
            Ok(child) => running.push(RunningMember { member: member.clone(), child, log_path, exit: None }),
            Err(err) => {
                stop_all(&mut running).await;
                return Err(CliError::Failed(format!("cannot start {}: {}", member.name, err.message())));
            }
        }
    }

    let mut banner = banner(&members, &data.describe(), &log_dir, pki.as_ref());
    if args.open {
        banner.push_str(&open_browser(&view_url(&members)));
    }
    let status_config = ClientConfig {
        tls: pki.as_ref().map(DevPki::client_options).unwrap_or_default(),
        ..ClientConfig::with_request_timeout(STATUS_TIMEOUT)
    };
    let status_client = Client::with_config(endpoints(&members), status_config)?;
    let outcome = supervise(&members, &mut running, &mut signals, &banner, status_client).await;
    stop_all(&mut running).await;
    let data_note = match data {
        DataDir::Temporary(dir) => {
            let path = dir.path().display().to_string();
            match dir.close() {
                Ok(()) => format!("removed {path}"),
                Err(err) => format!("could not remove {path}: {err}"),
            }
        }
        DataDir::Kept(path) => format!("data kept in {}; run again with the same --data-dir to resume", path.display()),
    };
    write_stdout(format!("stopped every member; {data_note}\n").as_bytes())?;
    outcome
}

fn create_dir(path: &Path, what: &str) -> Result<(), CliError> {
    std::fs::create_dir_all(path)
        .map_err(|err| CliError::Failed(format!("cannot create the {what} directory {}: {err}", path.display())))
}

/// Starts one member, its stdout and stderr appended to `log_path`.
///
/// The child gets its own process group, so a terminal's Ctrl-C reaches only `dev`, which then
/// stops the members in order. On Linux it also gets SIGTERM if `dev` dies without stopping it
/// (PR_SET_PDEATHSIG), so no member outlives a killed `dev`. The death signal follows the
/// spawning *thread*: spawn only from the thread that lives as long as `dev` (the main thread,
/// which runs the current-thread runtime of `cli::run`).
fn spawn_member(exe: &Path, node_args: Vec<OsString>, log_path: &Path) -> Result<Child, CliError> {
    let log_error =
        |err: std::io::Error| CliError::Failed(format!("cannot open the log {}: {err}", log_path.display()));
    let stdout = OpenOptions::new().create(true).append(true).open(log_path).map_err(log_error)?;
    let stderr = stdout.try_clone().map_err(log_error)?;
    let mut command = Command::new(exe);
    command.args(node_args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: the closure runs in the forked child before exec and calls only prctl and
            // getppid, which are async-signal-safe; it allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // `dev` died between fork and prctl: the death signal would never come.
                    if u32::try_from(libc::getppid()).ok() != Some(parent) {
                        return Err(std::io::Error::other("kuberaft dev exited"));
                    }
                    Ok(())
                });
            }
        }
    }
    command.spawn().map_err(|err| CliError::Failed(format!("cannot run {}: {err}", exe.display())))
}

/// The live loop: refresh the status every second until a signal or until every member exited.
async fn supervise(
    members: &[DevMember],
    running: &mut [RunningMember],
    signals: &mut StopSignals,
    banner: &str,
    status_client: Client,
) -> Result<(), CliError> {
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_plain_print: Option<Instant> = None;
    // Exit reports stay on screen under the banner: a redraw must not erase them.
    let mut reports: Vec<String> = Vec::new();
    if !terminal {
        write_stdout(banner.as_bytes())?;
    }
    let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            name = signals.recv() => return stopping(name),
            _ = ticker.tick() => {}
        }
        for member in running.iter_mut() {
            if let Some(report) = member.check_exit() {
                if !terminal {
                    write_stdout(report.as_bytes())?;
                }
                reports.push(report);
            }
        }
        if running.iter().all(|member| member.exit.is_some()) {
            if terminal {
                write_stdout(reports.concat().as_bytes())?;
            }
            return Err(CliError::Failed("every member exited; see their logs above".to_string()));
        }
        let statuses = tokio::select! {
            name = signals.recv() => return stopping(name),
            statuses = status_client.statuses() => statuses,
        };
        let views: Vec<MemberView> = running
            .iter()
            .zip(statuses)
            .map(|(member, (_, status))| match (&member.exit, status) {
                (Some(exit), _) => MemberView::Exited(format!("exited ({exit})")),
                (None, Ok(status)) => MemberView::Up(Box::new(status)),
                (None, Err(_)) => MemberView::Unreachable("not answering (yet)".to_string()),
            })
            .collect();
        if terminal {
            let mut screen = format!("{ANSI_CLEAR}{banner}\n");
            for report in &reports {
                screen.push_str(report);
            }
            screen.push_str(&status_table(members, &views));
            write_stdout(screen.as_bytes())?;
        } else if last_plain_print.is_none_or(|at| at.elapsed() >= PLAIN_PRINT_INTERVAL) {
            last_plain_print = Some(Instant::now());
            write_stdout(status_line(started.elapsed(), members, &views).as_bytes())?;
        }
    }
}

fn stopping(signal_name: &str) -> Result<(), CliError> {
    write_stdout(format!("\n{signal_name}: stopping every member...\n").as_bytes())
}

/// SIGTERM to every running member, SIGKILL to those still running after the grace period,
/// and every process reaped.
async fn stop_all(running: &mut [RunningMember]) {
    for member in running.iter_mut() {
        if !member.is_running() {
            continue;
        }
        match i32::try_from(member.child.id()) {
            // SAFETY: kill(2) with a pid of our own unreaped child: the pid cannot have been
            // reused, because the child is reaped only through `member.child`.
            Ok(pid) => unsafe {
                libc::kill(pid, libc::SIGTERM);
            },
            Err(_) => {
                let _ = member.child.kill();
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        let mut all_stopped = true;
        for member in running.iter_mut() {
            all_stopped &= !member.is_running();
        }
        if all_stopped {
            return;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    for member in running.iter_mut() {
        if member.is_running() {
            super::write_stderr(&format!(
                "{} did not stop within {} s; killing it\n",
                member.member.name,
                STOP_GRACE.as_secs()
            ));
            let _ = member.child.kill();
            // After SIGKILL the wait is short; it reaps the process.
            if let Ok(status) = member.child.wait() {
                member.exit = Some(status.to_string());
            }
        }
    }
}

/// "etcd-1 exited (exit status: 1); last lines of its log:" and the tail of the log.
fn exit_report(name: &str, how: &str, log_path: &Path) -> String {
    let mut report = format!("{name} exited ({how}); last lines of {}:\n", log_path.display());
    match read_tail(log_path) {
        Ok(text) if text.trim().is_empty() => report.push_str("    (the log is empty)\n"),
        Ok(text) => {
            for line in tail_lines(&text, LOG_TAIL_LINES) {
                let _ = writeln!(report, "    {}", clean_cell(line));
            }
        }
        Err(err) => {
            let _ = writeln!(report, "    (cannot read the log: {err})");
        }
    }
    report
}

/// The end of a log file, as text (invalid UTF-8 replaced).
fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
