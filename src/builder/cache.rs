//! The local build cache: step key → the layer the step produced.
//!
//! A step's key chains the previous step's key with the step's own inputs (expanded
//! instruction, visible ARGs and ENV, content digest of COPY/ADD sources), so a hit means
//! every earlier step matched too. The entries live in the store ([`crate::store::cache`]).

use crate::digest::Digest;
pub use crate::store::cache::{Entry, StatCache, lookup, store};

/// The next key in a chain: H(parent, description, extra inputs).
pub fn chain(parent: &Digest, description: &str, extra: &[String]) -> Digest {
    let mut buf = Vec::with_capacity(128 + description.len());
    buf.extend_from_slice(parent.as_str().as_bytes());
    buf.push(0);
    buf.extend_from_slice(description.as_bytes());
    for e in extra {
        buf.push(0);
        buf.extend_from_slice(e.as_bytes());
    }
    Digest::of(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_input() {
        let p = Digest::of(b"p");
        let a = chain(&p, "RUN x", &[]);
        assert_eq!(a, chain(&p, "RUN x", &[]));
        assert_ne!(a, chain(&p, "RUN y", &[]));
        assert_ne!(a, chain(&Digest::of(b"q"), "RUN x", &[]));
        assert_ne!(a, chain(&p, "RUN x", &["sha256:1".into()]));
    }
}
