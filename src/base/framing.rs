//! How a snapshot to keep is framed (etcd frames its snapshots so, and etcdctl's `snapshot
//! save` checks it): the stream, zeros up to a multiple of [`FRAME_ALIGN`] bytes, then the
//! SHA-256 of everything before. [`Framer`] frames a stream as it is sent (the member);
//! [`FrameCheck`] checks one as it arrives (the operator's backups, `kuberaft snapshot status`),
//! holding back only the last [`SHA_BYTES`].

use sha2::{Digest, Sha256};

/// The framed stream's length is a multiple of this, before its SHA-256.
pub const FRAME_ALIGN: u64 = 512;
/// The SHA-256 at a framed stream's end.
pub const SHA_BYTES: u64 = 32;

/// Frames a stream as it is sent: [`Framer::add`] each chunk, then send [`Framer::tail`].
#[derive(Clone, Default)]
pub struct Framer {
    sent: u64,
    sha: Sha256,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    pub fn add(&mut self, chunk: &[u8]) {
        self.sha.update(chunk);
        self.sent += chunk.len() as u64;
    }

    /// The bytes of the stream so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The zeros up to a multiple of [`FRAME_ALIGN`] and the SHA-256 of everything before.
    pub fn tail(mut self) -> Vec<u8> {
        let pad = (FRAME_ALIGN - self.sent % FRAME_ALIGN) % FRAME_ALIGN;
        let mut tail = vec![0u8; usize::try_from(pad).unwrap_or(0)];
        self.sha.update(&tail);
        tail.extend_from_slice(&self.sha.finalize());
        tail
    }
}

/// Checks a framed stream as it arrives: [`FrameCheck::add`] every chunk, then
/// [`FrameCheck::finish`].
#[derive(Clone, Default)]
pub struct FrameCheck {
    sha: Sha256,
    /// The last bytes seen, at most `SHA_BYTES`: the SHA-256, once the stream ended.
    held: Vec<u8>,
    seen: u64,
}

impl FrameCheck {
    pub fn new() -> FrameCheck {
        FrameCheck::default()
    }

    pub fn add(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        self.held.extend_from_slice(chunk);
        let keep = usize::try_from(SHA_BYTES).unwrap_or(32);
        if self.held.len() > keep {
            let hashed = self.held.len() - keep;
            self.sha.update(&self.held[..hashed]);
            self.held.drain(..hashed);
        }
    }

    /// The stream's SHA-256 in lowercase hex when its length and SHA-256 are right, or why not.
    pub fn finish(self) -> Result<String, String> {
        let seen = self.seen;
        if seen < SHA_BYTES || !(seen - SHA_BYTES).is_multiple_of(FRAME_ALIGN) {
            return Err(format!(
                "{seen} bytes is not a snapshot's length (a multiple of {FRAME_ALIGN} and a {SHA_BYTES}-byte SHA-256): it was cut or is not a snapshot"
            ));
        }
        if self.sha.finalize().as_slice() != self.held.as_slice() {
            return Err("its SHA-256 does not match: it was damaged".to_string());
        }
        Ok(self.held.iter().map(|b| format!("{b:02x}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_stream_checks_out_in_any_chunking_and_a_changed_or_cut_one_does_not() {
        let body: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
        let mut framer = Framer::new();
        framer.add(&body);
        let mut framed = body.clone();
        framed.extend_from_slice(&framer.tail());
        assert_eq!(framed.len(), 1536 + 32);
        for size in [1, 7, 32, 33, 512, 5000] {
            let mut check = FrameCheck::new();
            framed.chunks(size).for_each(|c| check.add(c));
            let sha = check.finish().expect("sound");
            assert_eq!(sha.len(), 64, "chunks of {size}");
        }
        let mut changed = framed.clone();
        changed[100] ^= 1;
        let mut check = FrameCheck::new();
        check.add(&changed);
        assert!(check.finish().expect_err("changed").contains("does not match"));
        let mut check = FrameCheck::new();
        check.add(&framed[..framed.len() - 512]);
        assert!(check.finish().is_err(), "cut");
    }
}
