//! The start of a member with empty data, as it talks to its peers: it asks the listed peers
//! what they know of the cluster, and bootstraps, claims a learner's place, or refuses, as the
//! pure decisions of `crate::node::join` say.

use std::time::Duration;

use axum::http::{Request, StatusCode};

use super::error::StartError;
use crate::base::ids::InitialMember;
use crate::http::client::{self, Dial, HttpClient};
use crate::node::join;
use crate::node::transport::{JoinAnswer, JoinRequest, JOIN_PATH, MEMBERS_PATH};
use crate::store::MemberMeta;

/// A peer's answer arrives whole within this time.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);
/// The most of a peer's answer that is read: a membership list of a few members, or a join's
/// outcome, is far smaller.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Asks every listed peer (but this member) what it knows of the cluster. This is the one
/// routine by which a member asks its peers about the cluster; `node::join` decides on the
/// answers.
async fn ask_peers(http: &HttpClient, initial: &[InitialMember], me: &str) -> (Vec<join::PeerView>, Vec<String>) {
    let mut views = Vec::new();
    let mut failures = Vec::new();
    for m in initial.iter().filter(|m| m.peer_url != me) {
        let request = Request::get(format!("{}{MEMBERS_PATH}", m.peer_url)).body(client::full(Vec::new()));
        let answer = match http.call(request, ANSWER_TIMEOUT, MAX_ANSWER_BYTES).await {
            Ok(answer) if answer.status.is_success() => {
                serde_json::from_slice::<join::PeerView>(&answer.body).map_err(|e| format!("a malformed answer: {e}"))
            }
            Ok(answer) => Err(format!("HTTP {}", answer.status)),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(view) => views.push(join::PeerView { peer_url: m.peer_url.clone(), ..view }),
            Err(e) => failures.push(format!("{}: {e}", m.peer_url)),
        }
    }
    (views, failures)
}

/// Dials as the peer transport does (`Flags::peer_dial`).
fn join_client(dial: Dial) -> HttpClient {
    HttpClient::new(dial)
}

/// `new` with empty data: bootstraps once a majority of the initial members (this one
/// included) confirms that the cluster has not formed; refuses if it has (`join::decide_new`).
/// Waits as long as it takes (a new cluster cannot elect before a majority runs anyway).
pub(super) async fn bootstrap_when_unformed(
    initial: &[InitialMember],
    me: &str,
    cluster_id: u64,
    member_id: u64,
    dial: Dial,
) -> Result<(), StartError> {
    let http = join_client(dial);
    let mut last_logged: Option<std::time::Instant> = None;
    loop {
        let (views, failures) = ask_peers(&http, initial, me).await;
        match join::decide_new(member_id, cluster_id, initial.len(), &views) {
            join::Decision::Bootstrap => return Ok(()),
            join::Decision::Refuse { data_lost: true, reason } => return Err(StartError::data_lost(reason)),
            join::Decision::Refuse { reason, .. } => return Err(StartError::from(reason)),
            join::Decision::Wait(why) => {
                if last_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::info!(unreachable = ?failures, "waiting to bootstrap: {why}");
                    last_logged = Some(std::time::Instant::now());
                }
            }
            other => return Err(StartError::from(format!("unexpected join decision {other:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `existing` with empty data: joins as the learner the leader lists under this member's peer
/// URL, once the leader has recorded the start (`join::decide_existing`, `Command::Join`).
/// Returns, with who it is, the members of the leader's view: their ids and peer URLs, which
/// this member needs before its log tells it the configuration (a sender's identity is checked
/// against the peer URL this member has for its id, `node::transport::check_identity`).
/// Never on a follower's word; a member whose id voted or started before is refused as data
/// lost. Gives up after 30 s without a decision (the pod restarts and asks again).
pub(super) async fn join_existing(
    me: &join::Joiner,
    initial: &[InitialMember],
    dial: Dial,
) -> Result<(MemberMeta, Vec<join::PeerMember>), StartError> {
    const ATTEMPTS: usize = 60;
    let http = join_client(dial);
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        let (views, failures) = ask_peers(&http, initial, &me.peer_url).await;
        match join::decide_existing(me, &views, None) {
            join::Decision::Claim { via, cluster_id, id } => {
                let request = JoinRequest { cluster_id: format!("{cluster_id:x}"), id: format!("{id:x}") };
                let request = Request::post(format!("{via}{JOIN_PATH}"))
                    .header("content-type", "application/json")
                    .body(client::full(serde_json::to_vec(&request).unwrap_or_default()));
                match http.call(request, ANSWER_TIMEOUT, MAX_ANSWER_BYTES).await {
                    Ok(answer) => {
                        let status = answer.status;
                        match serde_json::from_slice::<JoinAnswer>(&answer.body) {
                            Ok(answer) if answer.joined => {
                                tracing::info!(id = %format!("{id:x}"), leader = %via, "joining as a new learner");
                                let meta = MemberMeta { cluster_id, member_id: id, name: me.name.clone() };
                                let known = views.into_iter().find(|v| v.peer_url == via).map(|v| v.members);
                                return Ok((meta, known.unwrap_or_default()));
                            }
                            Ok(answer) if status == StatusCode::CONFLICT && answer.data_lost => {
                                return Err(StartError::data_lost(answer.reason))
                            }
                            Ok(answer) if status == StatusCode::CONFLICT => {
                                return Err(StartError::from(answer.reason))
                            }
                            _ => last = format!("{via} could not record the join ({status})"),
                        }
                    }
                    Err(e) => last = format!("{via}: {e}"),
                }
            }
            join::Decision::Refuse { data_lost: true, reason } => return Err(StartError::data_lost(reason)),
            join::Decision::Refuse { reason, .. } => return Err(StartError::from(reason)),
            join::Decision::Wait(why) => last = why,
            other => last = format!("unexpected join decision {other:?}"),
        }
        if attempt % 10 == 0 {
            tracing::info!(unreachable = ?failures, "waiting to join: {last}");
        }
        if attempt + 1 < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Err(StartError::from(format!(
        "cannot join: {last}. A member with empty data joins as a learner added for it (`kuberaft member add {} --peer-url {} --learner`), \
         on the leader's word",
        me.name, me.peer_url
    )))
}
