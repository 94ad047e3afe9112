//! Who may start with empty data, and under which id: pure decisions that the node (before
//! its core starts) and the simulator (for its disk-loss faults) both call.
//!
//! A member that lost its data must never vote or count toward a majority under an id the
//! cluster has used: it could elect, or help commit past, a leader that lacks entries it once
//! acknowledged. So a member with empty data starts only
//! - under `existing`: as a learner that the cluster's committed configuration holds and that
//!   has never started before. Only the leader's word counts (a follower's view may be stale),
//!   and the start is recorded in the log first (`Command::Join`, checked again by the state
//!   machine with [`check_claim`]): the second start with empty data under one id — its data
//!   lost — is refused, and the member must be replaced (removed, added back under a new id);
//! - under `new`: once a majority of the initial members (itself included) says the cluster
//!   has not formed; or, when it has formed, if nothing shows that this member ever held data
//!   (it started late). What shows it: the member is recorded as holding data (a leader records
//!   every member it hears acknowledge its log, `Command::Seen`, and every recorded join), or
//!   the leader's match index for it. Then it is refused. Only a member that lost its data
//!   before any leader recorded it (within a round trip of its first acknowledgement) can go
//!   unnoticed.
//!
//! A member that is refused with `data_lost` exits with code 3; the operator replaces it.

use serde::{Deserialize, Serialize};

use crate::raft::{NodeId, PlantedBug};
use crate::store::claim::{check_claim, MemberState};

/// What one peer says about its cluster: the peer port's answer to `GET /raft/v1/members`
/// (JSON, ids in hex), and what the join decisions read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    /// The peer URL that was asked (filled in by the asker; not part of the answer).
    #[serde(skip)]
    pub peer_url: String,
    #[serde(with = "crate::base::wire::hex_id")]
    pub cluster_id: u64,
    /// The membership it has applied.
    pub members: Vec<PeerMember>,
    /// It leads, and has committed an entry of its term, so its committed view is current.
    #[serde(default)]
    pub leader: bool,
    /// Its cluster has elected a leader at least once (its term is past the bootstrap term).
    #[serde(default)]
    pub formed: bool,
    /// It has no data yet (it waits to bootstrap). For people reading the answer; no decision
    /// needs it.
    #[serde(default)]
    pub blank: bool,
}

/// One member in a [`PeerView`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMember {
    #[serde(with = "crate::base::wire::hex_id")]
    pub id: NodeId,
    pub name: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    pub voter: bool,
    /// A learner that has already started with empty data under its id (`Command::Join`).
    #[serde(default)]
    pub joined: bool,
    /// The answering leader's match index for it (0 elsewhere, and on a leader that has not
    /// heard from it since it was elected).
    #[serde(default)]
    pub matched: u64,
}

/// The member that starts with empty data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Joiner {
    pub name: String,
    pub peer_url: String,
}

/// What a member with empty data does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ask the leader at `via` to record the start of learner `id` (`Command::Join`); start as
    /// `id` once it is committed.
    Claim { via: String, cluster_id: u64, id: NodeId },
    /// Start as `id` at once. Only the planted bug `JoinOnFollowersWord` decides this.
    Admit { cluster_id: u64, id: NodeId },
    /// `new`: write the bootstrap entries and start.
    Bootstrap,
    /// Ask again later.
    Wait(String),
    /// Never start as asked. With `data_lost`, the member's id holds data it no longer has: it
    /// must be removed and added back under a new id.
    Refuse { data_lost: bool, reason: String },
}

/// `--initial-cluster-state existing` with empty data.
pub fn decide_existing(me: &Joiner, views: &[PeerView], planted: Option<PlantedBug>) -> Decision {
    let leaders: Vec<&PeerView> = views.iter().filter(|v| v.leader).collect();
    let find = |view: &PeerView| view.members.iter().find(|m| m.peer_url == me.peer_url).cloned();
    let Some(leader) = leaders.first() else {
        if planted == Some(PlantedBug::JoinOnFollowersWord) {
            if let Some((view, m)) = views.iter().find_map(|v| find(v).map(|m| (v, m))) {
                return Decision::Admit { cluster_id: view.cluster_id, id: m.id };
            }
        }
        let listed = views.iter().filter(|v| find(v).is_some()).count();
        return Decision::Wait(if listed > 0 {
            format!("{listed} follower(s) list this member, but no leader answered; only the leader's word counts")
        } else {
            "no leader answered".to_string()
        });
    };
    if leaders.iter().any(|l| l.cluster_id != leader.cluster_id || l.members != leader.members) {
        return Decision::Wait("members that lead disagree about the cluster; asking again".into());
    }
    let Some(m) = find(leader) else {
        return Decision::Wait(format!(
            "the leader ({}) does not list {} as a member yet; add it first (`kuberaft member add`)",
            leader.peer_url, me.peer_url
        ));
    };
    if !m.name.is_empty() && m.name != me.name {
        return Decision::Refuse {
            data_lost: false,
            reason: format!("the cluster knows {} as member '{}', not '{}'", me.peer_url, m.name, me.name),
        };
    }
    let state = MemberState { voter: m.voter, learner: !m.voter, joined: m.joined, removed: false };
    match check_claim(m.id, state) {
        Ok(()) => Decision::Claim { via: leader.peer_url.clone(), cluster_id: leader.cluster_id, id: m.id },
        Err(refusal) => Decision::Refuse { data_lost: refusal.data_lost, reason: refusal.reason },
    }
}

/// `--initial-cluster-state new` with empty data, for member `id` of a cluster of
/// `initial_size` whose id is `cluster_id`.
pub fn decide_new(id: NodeId, cluster_id: u64, initial_size: usize, views: &[PeerView]) -> Decision {
    let ours: Vec<&PeerView> = views.iter().filter(|v| v.cluster_id == cluster_id).collect();
    let held_data = |v: &&&PeerView| v.members.iter().any(|m| m.id == id && (m.joined || (v.leader && m.matched > 0)));
    if let Some(formed) = ours.iter().find(held_data) {
        return if formed.formed {
            Decision::Refuse {
                data_lost: true,
                reason: format!(
                    "this member's data directory is empty, but its cluster has formed and counts it as member {id:x} \
                     (as {} says): its data is lost, and it will not vote with an empty log. Remove it \
                     (`kuberaft member remove {id:x}`) and add it back (`kuberaft member add ...`), then start it with \
                     --initial-cluster-state existing; the operator does this by itself",
                    formed.peer_url
                ),
            }
        } else {
            Decision::Wait(format!("{} says this member held data, but the cluster has not formed", formed.peer_url))
        };
    }
    if let Some(formed) = ours.iter().find(|v| v.formed) {
        if !formed.members.iter().any(|m| m.id == id) {
            return Decision::Refuse {
                data_lost: false,
                reason: format!(
                    "the cluster has formed without this member (as {} says); add it with `kuberaft member add` and \
                     start it with --initial-cluster-state existing",
                    formed.peer_url
                ),
            };
        }
        // It formed while this member had not started: it joins with the bootstrap entries,
        // as a member that was down since the start.
        return Decision::Bootstrap;
    }
    let unformed = ours.len() + 1;
    let majority = crate::base::quorum::majority(initial_size);
    if unformed >= majority {
        Decision::Bootstrap
    } else {
        Decision::Wait(format!(
            "{unformed} of the {initial_size} initial members (this one included) confirmed the cluster has not formed; \
             waiting for {majority}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Joiner {
        Joiner { name: "etcd-2".into(), peer_url: "http://c:2380".into() }
    }

    fn member(id: NodeId, name: &str, voter: bool, joined: bool) -> PeerMember {
        PeerMember { id, name: name.into(), peer_url: format!("http://{}:2380", &name[5..]), voter, joined, matched: 0 }
    }

    fn view(url: &str, leader: bool, members: Vec<PeerMember>) -> PeerView {
        PeerView { peer_url: url.into(), cluster_id: 7, leader, formed: true, members, blank: false }
    }

    fn cluster(third: PeerMember) -> Vec<PeerMember> {
        let mut m = vec![member(1, "etcd-a", true, false), member(2, "etcd-b", true, false)];
        m.push(PeerMember { peer_url: "http://c:2380".into(), ..third });
        m
    }

    #[test]
    fn existing_joins_only_as_a_learner_that_never_started_and_only_on_the_leaders_word() {
        let learner = cluster(member(9, "etcd-2", false, false));
        // The leader's word: claim the learner id.
        let d = decide_existing(&me(), &[view("http://a:2380", true, learner.clone())], None);
        assert_eq!(d, Decision::Claim { via: "http://a:2380".into(), cluster_id: 7, id: 9 });
        // Only followers answer: wait, even though they list it.
        let d = decide_existing(&me(), &[view("http://b:2380", false, learner.clone())], None);
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
        // ... unless the planted bug takes a follower's word.
        let d = decide_existing(
            &me(),
            &[view("http://b:2380", false, learner.clone())],
            Some(PlantedBug::JoinOnFollowersWord),
        );
        assert_eq!(d, Decision::Admit { cluster_id: 7, id: 9 });
        // A voter id, or a learner that started before: data lost.
        for third in [member(3, "etcd-2", true, false), member(9, "etcd-2", false, true)] {
            let d = decide_existing(&me(), &[view("http://a:2380", true, cluster(third))], None);
            assert!(matches!(d, Decision::Refuse { data_lost: true, .. }), "{d:?}");
        }
        // Not listed yet: wait; listed under another name: refuse (not data loss).
        let d = decide_existing(&me(), &[view("http://a:2380", true, learner[..2].to_vec())], None);
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
        let d =
            decide_existing(&me(), &[view("http://a:2380", true, cluster(member(9, "etcd-x", false, false)))], None);
        assert!(matches!(d, Decision::Refuse { data_lost: false, .. }), "{d:?}");
        // Two members that lead (one stale) and disagree: wait.
        let d = decide_existing(
            &me(),
            &[view("http://a:2380", true, learner.clone()), view("http://b:2380", true, learner[..2].to_vec())],
            None,
        );
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
    }

    #[test]
    fn new_bootstraps_only_with_a_majority_that_has_not_formed_and_refuses_a_formed_cluster() {
        let unformed = |url: &str| PeerView { peer_url: url.into(), cluster_id: 7, ..PeerView::default() };
        assert!(matches!(decide_new(3, 7, 3, &[]), Decision::Wait(_)));
        assert_eq!(decide_new(3, 7, 3, &[unformed("http://a:2380")]), Decision::Bootstrap);
        assert!(matches!(decide_new(3, 7, 5, &[unformed("http://a:2380")]), Decision::Wait(_)));
        // Answers from another cluster do not count.
        let other = PeerView { cluster_id: 8, ..unformed("http://a:2380") };
        assert!(matches!(decide_new(3, 7, 3, &[other]), Decision::Wait(_)));
        // A formed cluster whose leader has heard from this member: data lost, whatever others say.
        let heard = PeerMember { matched: 12, ..member(3, "etcd-c", true, false) };
        let formed = view("http://b:2380", true, vec![heard.clone()]);
        let d = decide_new(3, 7, 3, &[unformed("http://a:2380"), formed.clone()]);
        assert!(matches!(d, Decision::Refuse { data_lost: true, .. }), "{d:?}");
        // A follower's match index means nothing.
        let d = decide_new(3, 7, 3, &[view("http://b:2380", false, vec![heard])]);
        assert_eq!(d, Decision::Bootstrap, "a member that starts late joins the formed cluster");
        // Not listed at all: refused, but not as lost data.
        let d = decide_new(4, 7, 3, &[formed]);
        assert!(matches!(d, Decision::Refuse { data_lost: false, .. }), "{d:?}");
    }

    #[test]
    fn a_view_travels_as_json_with_hex_ids_and_a_malformed_id_is_refused() {
        let view = PeerView {
            peer_url: "http://asked:2380".into(),
            cluster_id: 0xabc,
            members: vec![member(0x1f, "etcd-1", true, false)],
            leader: true,
            formed: true,
            blank: false,
        };
        let json = serde_json::to_value(&view).expect("encode");
        assert_eq!(json["clusterId"], "abc");
        assert_eq!(json["members"][0]["id"], "1f");
        assert_eq!(json["members"][0]["peerURL"], view.members[0].peer_url);
        assert!(json.get("peerUrl").is_none() && json.get("peer_url").is_none(), "the asked URL is not sent");
        let back: PeerView = serde_json::from_value(json.clone()).expect("decode");
        assert_eq!(back, PeerView { peer_url: String::new(), ..view });
        let mut bad = json;
        bad["members"][0]["id"] = "not hex".into();
        assert!(serde_json::from_value::<PeerView>(bad).is_err());
    }
}
