//! Image references: any text parses or is refused, never panics; what parses
//! prints back to a reference that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shipflow_core::{Digest, ImageRef, is_valid_tag, sanitize_tag};

fuzz_target!(|text: &str| {
    if let Ok(reference) = text.parse::<ImageRef>() {
        let printed = reference.to_string();
        let again: ImageRef = printed.parse().expect("a printed reference parses");
        assert_eq!(again, reference, "{text:?} -> {printed:?}");
        let _ = reference.with_tag("v1");
        let _ = reference.name();
    }
    let _ = text.parse::<Digest>();
    if let Some(tag) = sanitize_tag(text) {
        assert!(is_valid_tag(&tag), "{text:?} -> {tag:?}");
    }
});
