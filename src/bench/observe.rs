//! What `kuberaft bench` reads off the members around its measured run (issue 19):
//! - **CPU**: the processes that listen on the members' client addresses (the endpoints, and
//!   for kuberaft every member its status lists), found through `/proc` (`/proc/net/tcp*` for
//!   the listening socket's inode, `/proc/*/fd` for its owner), and their user plus system time
//!   (`/proc/PID/stat`) before and after, for either target, so cost is compared as well as
//!   speed. Members on another machine are not found, and then not counted.
//! - **Where the time goes** (kuberaft, through either of its APIs): the histograms of
//!   `node::latency` from every member's `/metrics`, scraped before and after: the leader's
//!   write path, the followers' appends and the writes they placed through the leader, every
//!   member's linearizable reads; the report gives
//!   each point's count, mean, p50 and p99 over the run.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

use serde::Serialize;

use crate::base::histogram::Parsed;
use crate::base::wire::Status;
use crate::client::{Client, ClientConfig, SecurityArgs};

/// The members' CPU time over the run.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// The processes measured (one per member on this machine).
    pub processes: usize,
    /// User plus system seconds, all of them together.
    pub seconds: f64,
    /// Per 10,000 requests of the run (successful or not).
    pub seconds_per_10k: f64,
}

/// One point of a path over the run.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub point: String,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The latency breakdown of a run, from the members' `/metrics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Breakdown {
    /// The member that led at the start.
    pub leader: String,
    /// The leader's write path (`kuberaft_write_seconds`), each point from the write's receipt;
    /// `replied` only for the writes the leader answered itself (a follower answers the writes
    /// it placed through the leader from its own apply, `node::forward`).
    pub writes: Vec<Point>,
    /// The followers' appends together (`kuberaft_append_seconds`).
    pub appends: Vec<Point>,
    /// The writes the followers placed through the leader, together (`kuberaft_placed_seconds`),
    /// each point from the follower taking the write.
    pub placed: Vec<Point>,
    /// The linearizable reads every member served, together (`kuberaft_read_seconds`).
    pub reads: Vec<Point>,
    /// How many linearizable reads each member served (name, count): reads served by every
    /// member rather than all by the leader.
    pub reads_by_member: Vec<(String, u64)>,
}

/// What was read before the run.
pub struct Observer {
    pids: Vec<u32>,
    cpu_before: Option<f64>,
    metrics: Option<Scrapes>,
}

struct Scrapes {
    client: Client,
    leader: String,
    /// Every member with a client URL: (name, client URL, `/metrics` before the run).
    members: Vec<(String, String, String)>,
}

impl Observer {
    /// Reads what it can before the run. The breakdown needs kuberaft's `/v1/status` and
    /// `/metrics`, whichever API the run uses (its JSON API, or etcd's gRPC on the same port);
    /// an etcd answers neither, and gets none.
    pub async fn start(endpoints: &[String], security: &SecurityArgs) -> Observer {
        let metrics = scrapes(endpoints, security).await;
        let mut addresses = endpoints.to_vec();
        addresses.extend(metrics.iter().flat_map(|s| s.members.iter().map(|(_, url, _)| url.clone())));
        let pids = member_processes(&addresses);
        let cpu_before = cpu_seconds(&pids);
        Observer { pids, cpu_before, metrics }
    }

    /// Reads again after a run of `requests` requests: the CPU report and the breakdown.
    pub async fn finish(self, requests: u64) -> (Option<CpuReport>, Option<Breakdown>) {
        let cpu = match (self.cpu_before, cpu_seconds(&self.pids)) {
            (Some(before), Some(after)) => {
                let seconds = (after - before).max(0.0);
                let per_10k = if requests > 0 { seconds * 10_000.0 / requests as f64 } else { 0.0 };
                Some(CpuReport { processes: self.pids.len(), seconds, seconds_per_10k: per_10k })
            }
            _ => None,
        };
        let breakdown = match self.metrics {
            Some(s) => s.breakdown().await,
            None => None,
        };
        (cpu, breakdown)
    }
}

/// Every member of the cluster the endpoints reach, with its `/metrics` now.
async fn scrapes(endpoints: &[String], security: &SecurityArgs) -> Option<Scrapes> {
    let config = ClientConfig { tls: security.tls(), ..ClientConfig::default() };
    let client = Client::with_config(endpoints.to_vec(), config).ok()?;
    let (leader, found) = members_to_scrape(&client.statuses().await)?;
    let mut members = Vec::new();
    for (name, url) in found {
        let before = client.metrics_of(&url).await.unwrap_or_default();
        members.push((name, url, before));
    }
    members.iter().any(|(name, _, before)| *name == leader && !before.is_empty()).then_some(Scrapes {
        client,
        leader,
        members,
    })
}

/// The leader's name and every member's (name, client URL), from the answers of the endpoints:
/// each endpoint that answered is a member by its own name, and the members each answer lists
/// by a client URL are too. A member's answer may list another without its client URL (one
/// that started after it and has not been heard from yet), and it is still found when it is one
/// of the endpoints. `None` when no answer names a leader.
fn members_to_scrape(statuses: &[(String, crate::client::Result<Status>)]) -> Option<(String, Vec<(String, String)>)> {
    let answers: Vec<(&String, &Status)> =
        statuses.iter().filter_map(|(endpoint, status)| Some((endpoint, status.as_ref().ok()?))).collect();
    let leader = answers.iter().map(|(_, s)| s.leader.clone()).find(|leader| !leader.is_empty())?;
    let mut members: Vec<(String, String)> = Vec::new();
    let listed = answers.iter().flat_map(|(_, s)| s.members.iter().map(|m| (&m.name, &m.client_url)));
    for (name, url) in answers.iter().map(|(endpoint, s)| (&s.name, *endpoint)).chain(listed) {
        if !url.is_empty() && !members.iter().any(|(known, _)| known == name) {
            members.push((name.clone(), url.clone()));
        }
    }
    Some((leader, members))
}

impl Scrapes {
    /// Reads every member again: the leader's writes, the followers' appends and placed writes,
    /// everyone's reads.
    async fn breakdown(self) -> Option<Breakdown> {
        let mut runs: Vec<(String, String, String)> = Vec::new();
        for (name, url, before) in self.members {
            let after = self.client.metrics_of(&url).await.unwrap_or_default();
            runs.push((name, before, after));
        }
        let of = |which: &dyn Fn(&str) -> bool| -> Vec<(&str, &str)> {
            runs.iter()
                .filter(|(name, _, after)| which(name) && !after.is_empty())
                .map(|(_, b, a)| (b.as_str(), a.as_str()))
                .collect()
        };
        let leader = self.leader.as_str();
        let leaders = of(&|name| name == leader);
        if leaders.is_empty() {
            return None;
        }
        let reads_by_member = runs
            .iter()
            .map(|(name, before, after)| {
                let index = points(&[(before, after)], "kuberaft_read_seconds");
                (name.clone(), index.first().map_or(0, |p| p.count))
            })
            .collect();
        Some(Breakdown {
            leader: self.leader.clone(),
            writes: points(&leaders, "kuberaft_write_seconds"),
            appends: points(&of(&|name| name != leader), "kuberaft_append_seconds"),
            placed: points(&of(&|name| name != leader), "kuberaft_placed_seconds"),
            reads: points(&of(&|_| true), "kuberaft_read_seconds"),
            reads_by_member,
        })
    }
}

/// Each point of the histogram family `name` over the run, summed over the members' scrapes
/// `(before, after)`, in the order the members list them.
fn points(scrapes: &[(&str, &str)], name: &str) -> Vec<Point> {
    let mut order: Vec<String> = Vec::new();
    let mut sums: std::collections::BTreeMap<String, Parsed> = std::collections::BTreeMap::new();
    for (before, after) in scrapes {
        let earlier = Parsed::all(before, name, "point");
        for point in after
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_count{{")))
            .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        {
            if !order.contains(&point) {
                order.push(point);
            }
        }
        for (point, later) in Parsed::all(after, name, "point") {
            let run = later.since(&earlier.get(&point).cloned().unwrap_or_default());
            sums.entry(point).and_modify(|sum| sum.add(&run)).or_insert(run);
        }
    }
    let ms = |s: Option<f64>| s.unwrap_or(0.0) * 1000.0;
    order
        .into_iter()
        .filter_map(|point| {
            let run = sums.remove(&point)?;
            Some(Point {
                count: run.count as u64,
                mean_ms: ms(run.mean()),
                p50_ms: ms(run.quantile(0.5)),
                p99_ms: ms(run.quantile(0.99)),
                point,
            })
        })
        .collect()
}

/// The processes listening on the endpoints' addresses on this machine (each once).
pub fn member_processes(endpoints: &[String]) -> Vec<u32> {
    let addresses: Vec<SocketAddr> = endpoints.iter().filter_map(|e| socket_address(e)).collect();
    let inodes = listening_inodes(&addresses);
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut pids = owners(&inodes);
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `http://host:port` (or `host:port`) as a socket address.
fn socket_address(endpoint: &str) -> Option<SocketAddr> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    authority.to_socket_addrs().ok()?.next()
}

/// The inodes of listening TCP sockets bound to one of `addresses` (or to the wildcard on
/// their port).
fn listening_inodes(addresses: &[SocketAddr]) -> Vec<u64> {
    find_listeners(addresses, || ["/proc/net/tcp", "/proc/net/tcp6"].iter().filter_map(|f| read_listing(f)).collect())
}

/// How many times the socket listings are read before an address is taken to have no listener
/// on this machine (a member elsewhere).
const LISTING_READS: usize = 10;

/// One read of the listings does not always hold every listening socket: at the start of put
/// runs at 64 clients (3 members on this machine, about 1,800 earlier connections in TIME-WAIT),
/// `read_to_string` of `/proc/net/tcp` lacked one member's client listener in 5 starts of 6, and
/// that member's CPU went uncounted (the kernel writes the listing a piece per `read`, resuming by
/// position in tables that change as connections open and close). So each listing is read in
/// large pieces (`read_listing`), and read again until every address has its listener, or
/// `LISTING_READS` times, keeping what each read found: 8 starts of 8 found all three.
/// `listings` gives one read of every listing.
fn find_listeners(addresses: &[SocketAddr], mut listings: impl FnMut() -> Vec<String>) -> Vec<u64> {
    let mut inodes = Vec::new();
    let mut heard = vec![false; addresses.len()];
    for _ in 0..LISTING_READS {
        for text in listings() {
            for (local, inode) in text.lines().skip(1).filter_map(listening_socket) {
                let mut wanted = false;
                for (address, heard) in addresses.iter().zip(heard.iter_mut()) {
                    if address.port() == local.port() && (address.ip() == local.ip() || local.ip().is_unspecified()) {
                        *heard = true;
                        wanted = true;
                    }
                }
                if wanted && !inodes.contains(&inode) {
                    inodes.push(inode);
                }
            }
        }
        if heard.iter().all(|h| *h) {
            break;
        }
    }
    inodes
}

/// Reads a socket listing in pieces of up to 1 MiB: the fewer pieces, the fewer places where
/// the kernel must find its way back into a changing table.
fn read_listing(path: &str) -> Option<String> {
    use std::io::Read;
    const PIECE: usize = 1 << 20;
    let mut file = std::fs::File::open(path).ok()?;
    let mut bytes = vec![0u8; PIECE];
    let mut len = 0;
    loop {
        if bytes.len() - len < PIECE {
            bytes.resize(len + PIECE, 0);
        }
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    bytes.truncate(len);
    String::from_utf8(bytes).ok()
}

/// One line of `/proc/net/tcp*`: its local address and inode, when it listens.
fn listening_socket(line: &str) -> Option<(SocketAddr, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&"0A") {
        return None;
    }
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes().to_be_bytes()),
        32 => {
            // Four 32-bit words, each in the host's (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), fields.get(9)?.parse().ok()?))
}

/// The processes holding a socket of `inodes` (`/proc/*/fd`, as far as this user may look).
fn owners(inodes: &[u64]) -> Vec<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| wanted.iter().any(|w| Path::new(w) == target)));
        if holds {
            out.push(pid);
        }
    }
    out
}

/// User plus system CPU seconds of `pids` together (`None` if there are none, or one is gone).
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let ticks = clock_ticks();
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        total += stat_cpu_ticks(&stat)? as f64 / ticks;
    }
    Some(total)
}

/// The resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`; 0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime plus stime (fields 14 and 15) of a `/proc/PID/stat` line, whose second field (the
/// command, in parentheses) may hold spaces.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`; 100 on Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The points of a breakdown as table lines: `label  point  mean / p50 / p99 ms (count)`.
pub fn lines(out: &mut String, label: &str, points: &[Point]) {
    let used: Vec<&Point> = points.iter().filter(|p| p.count > 0).collect();
    if used.is_empty() {
        return;
    }
    out.push_str(&format!("{label}\n"));
    let mut previous = 0.0;
    for p in used {
        out.push_str(&format!(
            "  {:<13} mean {:>8.3}  p50 {:>8.3}  p99 {:>8.3} ms  (+{:.3} on the mean before it; {} of them)\n",
            p.point,
            p.mean_ms,
            p.p50_ms,
            p.p99_ms,
            (p.mean_ms - previous).max(0.0),
            p.count
        ));
        previous = p.mean_ms;
    }
}

/// The breakdown as table lines, section by section.
pub fn table(b: &Breakdown) -> String {
    let mut out = String::new();
    lines(&mut out, &format!("write path at the leader {} (from receipt)", b.leader), &b.writes);
    lines(&mut out, "appends at the followers (from taking the append)", &b.appends);
    lines(&mut out, "writes the followers placed through the leader (from taking the write)", &b.placed);
    lines(&mut out, "linearizable reads, every member (from the read's start)", &b.reads);
    if b.reads_by_member.iter().any(|(_, n)| *n > 0) {
        let each: Vec<String> = b.reads_by_member.iter().map(|(name, n)| format!("{name} {n}")).collect();
        out.push_str(&format!("  served by: {}\n", each.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_of_this_process_is_found_with_its_cpu_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let pids = member_processes(&[format!("http://{address}")]);
        assert_eq!(pids, vec![std::process::id()]);
        let before = cpu_seconds(&pids).expect("cpu time");
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(&pids).expect("cpu time");
        assert!(after > before, "{before} then {after}");
        assert!(rss_kib(std::process::id()) > 0);
        assert_eq!(rss_kib(u32::MAX), 0);
        // Nothing listens on a port just closed.
        drop(listener);
        assert!(member_processes(&[format!("http://{address}")]).is_empty());
        assert_eq!(cpu_seconds(&[]), None);
    }

    /// A listing line of a socket listening on 127.0.0.`host`:2379 with inode `inode`.
    fn listening_line(host: u8, inode: u64) -> String {
        format!("   0: {host:02X}00007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1")
    }

    #[test]
    fn a_listener_one_listing_lacks_is_found_in_the_next() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        let members: Vec<SocketAddr> = (1..=3).map(|h| format!("127.0.0.{h}:2379").parse().expect("address")).collect();
        // The first listing lacks the second member's socket, as one read at a benchmark's start did.
        let listings = [
            format!("{header}\n{}\n{}\n", listening_line(1, 11), listening_line(3, 33)),
            format!("{header}\n{}\n{}\n{}\n", listening_line(1, 11), listening_line(2, 22), listening_line(3, 33)),
        ];
        let mut reads = 0;
        let found = find_listeners(&members, || {
            reads += 1;
            vec![listings[(reads - 1).min(1)].clone()]
        });
        assert_eq!(found, vec![11, 33, 22], "every member once");
        assert_eq!(reads, 2, "read again only until every address is found");

        // An address nobody here listens on (a member on another machine): a bounded number of
        // reads, and what was found.
        let elsewhere: SocketAddr = "127.0.0.9:2379".parse().expect("address");
        let mut reads = 0;
        let found = find_listeners(&[members[0], elsewhere], || {
            reads += 1;
            vec![listings[1].clone()]
        });
        assert_eq!(found, vec![11]);
        assert_eq!(reads, LISTING_READS);
    }

    #[test]
    fn proc_lines_parse() {
        let v4 = "   0: 0100007F:0947 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1";
        assert_eq!(listening_socket(v4), Some(("127.0.0.1:2375".parse().expect("addr"), 12345)));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(listening_socket(&established), None);
        let v6 = "   0: 00000000000000000000000000000000:0947 00000000000000000000000000000000:0000 0A 0 0 0 0 0 777 1";
        assert_eq!(listening_socket(v6), Some(("[::]:2375".parse().expect("addr"), 777)));
        assert_eq!(listening_socket("garbage"), None);
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(stat_cpu_ticks(stat), Some(300));
        assert_eq!(stat_cpu_ticks("42 (x"), None);
    }

    #[test]
    fn every_member_an_endpoint_reaches_is_scraped_also_one_not_yet_listed_by_its_client_url() {
        use crate::base::wire::Member;
        let member = |name: &str, client_url: &str| Member {
            id: String::new(),
            name: name.into(),
            peer_url: String::new(),
            client_url: client_url.into(),
            voter: true,
        };
        // etcd-1 started last: etcd-0 and etcd-2 know it, but not yet its client URL.
        let listing = vec![member("etcd-0", "http://a"), member("etcd-1", ""), member("etcd-2", "http://c")];
        let status = |name: &str, leader: &str| Status {
            name: name.into(),
            leader: leader.into(),
            members: listing.clone(),
            ..Status::default()
        };
        let down = crate::client::ClientError::Setup("down".into());
        let statuses = vec![
            ("http://c".to_string(), Ok(status("etcd-2", "etcd-2"))),
            ("http://b".to_string(), Ok(status("etcd-1", ""))),
            ("http://a".to_string(), Err(down)),
        ];
        let (leader, members) = members_to_scrape(&statuses).expect("a leader is named");
        assert_eq!(leader, "etcd-2");
        let found: Vec<(&str, &str)> = members.iter().map(|(n, u)| (n.as_str(), u.as_str())).collect();
        assert_eq!(found, [("etcd-2", "http://c"), ("etcd-1", "http://b"), ("etcd-0", "http://a")]);
        // With no answer naming a leader there is no breakdown to read.
        assert!(members_to_scrape(&statuses[1..]).is_none());
    }

    #[test]
    fn points_are_what_happened_between_two_scrapes_in_the_members_order() {
        let h = crate::base::histogram::Histogram::default();
        let render = |h: &crate::base::histogram::Histogram, point: &str, out: &mut String| {
            h.render(out, "kuberaft_write_seconds", &format!("point=\"{point}\""));
        };
        let (mut before, mut after) = (String::new(), String::new());
        h.observe(std::time::Duration::from_millis(50));
        render(&h, "proposed", &mut before);
        for _ in 0..3 {
            h.observe(std::time::Duration::from_micros(100));
        }
        let later = crate::base::histogram::Histogram::default();
        later.observe(std::time::Duration::from_micros(400));
        render(&h, "proposed", &mut after);
        render(&later, "replied", &mut after);
        let points = points(&[(&before, &after)], "kuberaft_write_seconds");
        assert_eq!(points.iter().map(|p| p.point.as_str()).collect::<Vec<_>>(), ["proposed", "replied"]);
        assert_eq!(points[0].count, 3);
        assert!((points[0].mean_ms - 0.1).abs() < 1e-6, "{:?}", points[0]);
        assert_eq!(points[1].count, 1);
        let mut table = String::new();
        lines(&mut table, "write path", &points);
        assert!(table.starts_with("write path\n  proposed "), "{table}");
        assert!(table.contains("(+0.300 on the mean before it; 1 of them)"), "{table}");
    }
}
