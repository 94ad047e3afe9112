//! Majority arithmetic over the voters of one configuration.

use std::collections::BTreeSet;

use super::types::NodeId;

pub use crate::base::quorum::majority;

/// The largest value that a majority of voters has reached, given each voter's value:
/// the index committed by a quorum of match indexes, or the ReadIndex round a quorum confirmed.
/// 0 for an empty voter set.
pub fn quorum_value(voters: &BTreeSet<NodeId>, mut value_of: impl FnMut(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return 0;
    }
    let mut values: Vec<u64> = voters.iter().map(|id| value_of(*id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[majority(values.len()) - 1]
}

/// Whether the voters for which `yes` holds form a majority.
pub fn has_majority(voters: &BTreeSet<NodeId>, mut yes: impl FnMut(NodeId) -> bool) -> bool {
    !voters.is_empty() && voters.iter().filter(|id| yes(**id)).count() >= majority(voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_value_is_the_majority_th_highest() {
        let voters: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into();
        let matched = |id: NodeId| [0, 9, 7, 5, 3, 1][id as usize];
        assert_eq!(quorum_value(&voters, matched), 5);
        let three: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(quorum_value(&three, matched), 7);
        assert_eq!(quorum_value(&BTreeSet::new(), matched), 0);
        assert!(has_majority(&three, |id| id != 3));
        assert!(!has_majority(&three, |id| id == 3));
    }
}
