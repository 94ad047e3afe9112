//! Correctness checkers shared by the simulator and the chaos suite.

pub mod linearizability;
