//! The bottom room: what every layer shares and nothing of ours underneath. Ids and hashes,
//! majority arithmetic, exit codes, logging, signals, minting certificates (`pki`), and the
//! wire types (JSON shapes, headers, limits, base64) that the client and the server both
//! speak. It imports no other room.

pub mod base64;
pub mod exit;
pub mod framing;
pub mod histogram;
pub mod ids;
pub mod logging;
pub mod output;
pub mod pki;
pub mod quorum;
pub mod rng;
pub mod signal;
pub mod tls;
pub mod wire;
