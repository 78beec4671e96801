//! `cargo fuzz run reference`: image reference parsing never panics, and normalisation is
//! idempotent (the printed form parses back to the same reference).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = kiln::reference::Reference::parse(s) {
        let full = r.to_string();
        let again = kiln::reference::Reference::parse(&full)
            .unwrap_or_else(|e| panic!("{s:?} normalises to {full:?}, which does not parse: {e:#}"));
        assert_eq!(again, r, "{s:?} -> {full:?}");
        let fam = r.familiar();
        // As with Docker, a Docker Hub repository whose first component looks like a host
        // (`a.b/c`) has no unambiguous short form; every other one must round-trip.
        let first = r.repository.split('/').next().unwrap_or("");
        let hostlike =
            r.repository.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
        if !hostlike {
            let f = kiln::reference::Reference::parse(&fam)
                .unwrap_or_else(|e| panic!("{s:?}: familiar form {fam:?} does not parse: {e:#}"));
            assert_eq!(f, r, "{s:?}: familiar form {fam:?}");
        }
        let _ = (r.is_loopback(), r.tag_or_digest(), r.name());
    }
});
