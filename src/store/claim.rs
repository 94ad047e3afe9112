//! The rule for starting with empty data under a member id, applied by the state machine to
//! `Command::Join` and by `node::join` to the leader's answer: only a learner that has never
//! started that way before may. Pure; touches nothing but the core's id type.

use crate::raft::NodeId;

/// Where an id stands in the committed membership, for [`check_claim`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberState {
    pub voter: bool,
    pub learner: bool,
    pub joined: bool,
    pub removed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRefusal {
    pub data_lost: bool,
    pub reason: String,
}

/// The rule for starting with empty data under `id` (the state machine applies it to
/// `Command::Join`; `decide_existing` uses it on the leader's answer): only a learner that
/// has not started that way before.
pub fn check_claim(id: NodeId, state: MemberState) -> Result<(), ClaimRefusal> {
    let lost = |why: &str| ClaimRefusal {
        data_lost: true,
        reason: format!(
            "this member's data directory is empty, but {why}: its data is lost, and it will not count toward \
             majorities with an empty log. Remove it (`kuberaft member remove {id:x}`) and add it back \
             (`kuberaft member add ...`); the operator does this by itself"
        ),
    };
    if state.removed {
        return Err(ClaimRefusal { data_lost: false, reason: format!("member {id:x} was removed from the cluster") });
    }
    if state.voter {
        return Err(lost(&format!("the cluster counts it as voter {id:x}")));
    }
    if !state.learner {
        return Err(ClaimRefusal { data_lost: false, reason: format!("member {id:x} is not in the cluster") });
    }
    if state.joined {
        return Err(lost(&format!("learner {id:x} has started with empty data before")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_granted_once_to_a_learner() {
        let learner = MemberState { learner: true, ..MemberState::default() };
        assert!(check_claim(5, learner).is_ok());
        assert!(check_claim(5, MemberState { joined: true, ..learner }).is_err_and(|r| r.data_lost));
        assert!(check_claim(5, MemberState { voter: true, ..MemberState::default() }).is_err_and(|r| r.data_lost));
        assert!(check_claim(5, MemberState::default()).is_err_and(|r| !r.data_lost));
        assert!(check_claim(5, MemberState { removed: true, ..MemberState::default() }).is_err_and(|r| !r.data_lost));
    }
}
