//! Cluster and member identity: parsing `--initial-cluster`, and the ids derived from it.
//! Every member of a new cluster derives the same ids from the same list and token, so no
//! coordination is needed to bootstrap; a different list or token gives a different cluster id,
//! and members of different clusters reject each other's messages.

/// A member id (the same type as the core's `NodeId`).
type NodeId = u64;

/// 64-bit FNV-1a, fed in pieces: tiny, fixed, and the same in every process and version
/// (unlike std's randomly seeded hasher). Ids and the membership hash are built on it.
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET_BASIS)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a::new()
    }
}

/// FNV-1a over `parts`, each followed by a 0xff byte (so that ("ab", "c") and ("a", "bc")
/// differ).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = Fnv1a::new();
    for part in parts {
        hash.write(part);
        hash.write(&[0xff]);
    }
    hash.finish()
}

/// Ids this member hands out (lease ids it picks), unique among its own for as long as its
/// clock does not go back, and apart from other members' unless two ids share their low 16
/// bits: etcd's request id generator (`idutil.Generator`). An id is the member id's low 16
/// bits, then 48 bits that start at the start time in milliseconds (40 bits) followed by a
/// zero byte, and count up by one an id. (Hashing the time of each request instead gives two
/// requests in the same clock tick the same id.)
pub struct IdGenerator {
    prefix: u64,
    suffix: std::sync::atomic::AtomicU64,
}

impl IdGenerator {
    const SUFFIX_BITS: u32 = 48;
    const COUNT_BITS: u32 = 8;

    pub fn new(member: NodeId, unix_ms: u64) -> IdGenerator {
        let low = |value: u64, bits: u32| value & ((1u64 << bits) - 1);
        IdGenerator {
            prefix: low(member, 16) << Self::SUFFIX_BITS,
            suffix: (low(unix_ms, Self::SUFFIX_BITS - Self::COUNT_BITS) << Self::COUNT_BITS).into(),
        }
    }

    /// The generator of a member starting now.
    pub fn starting_now(member: NodeId) -> IdGenerator {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        IdGenerator::new(member, unix_ms)
    }

    pub fn next(&self) -> u64 {
        let suffix = self.suffix.fetch_add(1, std::sync::atomic::Ordering::Relaxed).wrapping_add(1);
        self.prefix | (suffix & ((1u64 << Self::SUFFIX_BITS) - 1))
    }

    /// A lease id: positive (etcd's `& (1<<63 - 1)`, skipping 0, which means "none").
    pub fn next_lease(&self) -> i64 {
        let positive = |id: u64| (id & i64::MAX as u64) as i64;
        match positive(self.next()) {
            0 => positive(self.next()),
            id => id,
        }
    }
}

/// One `name=peerURL` of `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InitialMember {
    pub name: String,
    pub peer_url: String,
}

/// Parses `etcd-0=http://a:2380,etcd-1=http://b:2380`.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>, String> {
    let mut members = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) =
            item.split_once('=').ok_or_else(|| format!("--initial-cluster: '{item}' is not name=peerURL"))?;
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        if name.is_empty() {
            return Err(format!("--initial-cluster: '{item}' has an empty name"));
        }
        validate_url(url).map_err(|e| format!("--initial-cluster: {name}: {e}"))?;
        if members.iter().any(|m: &InitialMember| m.name == name) {
            return Err(format!("--initial-cluster: the name '{name}' appears twice"));
        }
        members.push(InitialMember { name: name.to_string(), peer_url: url.to_string() });
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    members.sort();
    Ok(members)
}

/// An `http://host:port` or `https://host:port` URL (no path).
pub fn validate_url(url: &str) -> Result<(), String> {
    let rest = host_port(url).ok_or_else(|| format!("'{url}' must start with http:// or https://"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("'{url}' has no port"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("'{url}' has no valid host"));
    }
    port.parse::<u16>().map_err(|_| format!("'{url}' has an invalid port"))?;
    Ok(())
}

/// `host:port` of an `http://host:port` or `https://host:port` URL.
pub fn host_port(url: &str) -> Option<&str> {
    url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).map(|r| r.trim_end_matches('/'))
}

/// The host of a URL (an IPv6 address without its brackets).
pub fn url_host(url: &str) -> Option<&str> {
    let (host, _) = host_port(url)?.rsplit_once(':')?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether a URL is `https://`.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The cluster id: the sorted initial list and the token.
pub fn cluster_id(members: &[InitialMember], token: &str) -> u64 {
    let mut parts: Vec<&[u8]> = vec![b"kuberaft-cluster", token.as_bytes()];
    for m in members {
        parts.push(m.name.as_bytes());
        parts.push(m.peer_url.as_bytes());
    }
    nonzero(fnv1a(&parts))
}

/// The id of an initial member: the same on every member that bootstraps from the same list.
pub fn initial_member_id(cluster_id: u64, member: &InitialMember) -> u64 {
    nonzero(fnv1a(&[b"kuberaft-member", &cluster_id.to_le_bytes(), member.name.as_bytes(), member.peer_url.as_bytes()]))
}

/// The id of a member added later: includes the time so that an id is never reused, even for
/// a member re-added under the same name and URL.
pub fn added_member_id(cluster_id: u64, name: &str, peer_url: &str, nanos: u128) -> u64 {
    nonzero(fnv1a(&[
        b"kuberaft-added",
        &cluster_id.to_le_bytes(),
        name.as_bytes(),
        peer_url.as_bytes(),
        &nanos.to_le_bytes(),
    ]))
}

fn nonzero(id: NodeId) -> NodeId {
    if id == 0 {
        1
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_sorts_and_rejects_bad_items() {
        let m = parse_initial_cluster("b=http://127.0.0.1:2380, a=http://127.0.0.2:2380/").unwrap();
        assert_eq!(m[0].name, "a");
        assert_eq!(m[0].peer_url, "http://127.0.0.2:2380");
        assert!(parse_initial_cluster("").is_err());
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=ftp://x:1").is_err());
        assert!(parse_initial_cluster("a=http://x").is_err());
        assert!(parse_initial_cluster("a=http://x:1,a=http://y:1").is_err());
    }

    #[test]
    fn urls_are_http_or_https_with_a_host_and_port() {
        assert_eq!(validate_url("https://etcd-0.etcd:2380"), Ok(()));
        assert_eq!(host_port("https://etcd-0.etcd:2380/"), Some("etcd-0.etcd:2380"));
        assert_eq!(url_host("https://etcd-0.etcd:2380"), Some("etcd-0.etcd"));
        assert_eq!(url_host("http://[::1]:2380"), Some("::1"));
        assert!(is_https("https://a:1") && !is_https("http://a:1"));
        assert!(validate_url("httpss://a:1").is_err());
    }

    #[test]
    fn ids_depend_on_list_and_token_but_not_on_order() {
        let one = parse_initial_cluster("a=http://h:1,b=http://h:2").unwrap();
        let same = parse_initial_cluster("b=http://h:2,a=http://h:1").unwrap();
        let other = parse_initial_cluster("a=http://h:1,b=http://h:3").unwrap();
        assert_eq!(cluster_id(&one, "t"), cluster_id(&same, "t"));
        assert_ne!(cluster_id(&one, "t"), cluster_id(&other, "t"));
        assert_ne!(cluster_id(&one, "t"), cluster_id(&one, "u"));
        let c = cluster_id(&one, "t");
        assert_ne!(initial_member_id(c, &one[0]), initial_member_id(c, &one[1]));
        assert_ne!(added_member_id(c, "a", "http://h:1", 1), added_member_id(c, "a", "http://h:1", 2));
    }

    /// Ids drawn at one clock reading, from several threads at once, all differ (hashing the
    /// time of each request gave two grants in one tick the same lease id: "lease already
    /// exists"); they carry the member's low 16 bits, so two members' differ; lease ids are
    /// positive; a member restarted a millisecond later draws none of the ids it drew before
    /// (fewer than 256 of them).
    #[test]
    fn generated_ids_differ_within_one_clock_tick_across_threads_and_members() {
        use std::collections::BTreeSet;
        let ms = 1_700_000_000_000u64;
        let ids = IdGenerator::new(0xabcd_0000_0000_1234, ms);
        let drawn: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> =
                (0..4).map(|_| scope.spawn(|| (0..2_000).map(|_| ids.next()).collect::<Vec<u64>>())).collect();
            workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
        });
        let distinct: BTreeSet<u64> = drawn.iter().copied().collect();
        assert_eq!(distinct.len(), 8_000, "every id differs");
        assert!(drawn.iter().all(|id| id >> 48 == 0x1234), "the member's low 16 bits lead every id");
        let other = IdGenerator::new(0x1235, ms);
        assert!((0..8_000).map(|_| other.next()).all(|id| !distinct.contains(&id)), "another member's differ");

        let high = IdGenerator::new(0xffff, ms);
        assert!((0..1_000).map(|_| high.next_lease()).all(|id| id > 0), "lease ids are positive");
        let before = IdGenerator::new(7, ms);
        let first: BTreeSet<u64> = (0..255).map(|_| before.next()).collect();
        let restarted = IdGenerator::new(7, ms + 1);
        assert!((0..1_000).map(|_| restarted.next()).all(|id| !first.contains(&id)), "none repeats after a restart");
    }
}
