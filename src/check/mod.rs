//! Correctness checkers shared by the simulator and the chaos suite: pure functions over
//! recorded histories, apart from every other room (they judge the store from outside).

pub mod linearizability;
