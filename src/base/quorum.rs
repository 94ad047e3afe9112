//! Majority arithmetic, the one rule that the core, the join decisions and the operator's
//! planner all count with.

/// How many of `voters` make a majority.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The most caught-up of `candidates` (each with how far it has caught up: a match index, an
/// applied index): the highest index, ties going to the first one listed. The leader picks a
/// transfer target with it, and the operator the voter that takes over from a leaving leader.
pub fn most_caught_up<T>(candidates: impl IntoIterator<Item = (T, u64)>) -> Option<T> {
    let mut best: Option<(T, u64)> = None;
    for (candidate, index) in candidates {
        if best.as_ref().is_none_or(|(_, top)| index > *top) {
            best = Some((candidate, index));
        }
    }
    best.map(|(candidate, _)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities() {
        assert_eq!([1, 2, 3, 4, 5].map(majority), [1, 2, 2, 3, 3]);
    }

    #[test]
    fn the_most_caught_up_is_the_highest_and_ties_go_to_the_first() {
        assert_eq!(most_caught_up([("a", 5), ("b", 9), ("c", 9), ("d", 1)]), Some("b"));
        assert_eq!(most_caught_up([("a", 0)]), Some("a"));
        assert_eq!(most_caught_up(Vec::<(&str, u64)>::new()), None);
    }
}
