//! Tag templates: any text parses or is refused, and a template renders a valid
//! tag or a clear error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shipflow_core::{TagTemplate, TagValues, is_valid_tag};

fuzz_target!(|input: (&str, &str)| {
    let (template, value) = input;
    let Ok(template) = template.parse::<TagTemplate>() else {
        return;
    };
    let values = TagValues {
        branch: Some(value.to_owned()),
        short_sha: Some("0123456".into()),
        sha: Some(value.to_owned()),
        tag: None,
        build_number: Some(value.to_owned()),
        timestamp: Some("20260102030405".into()),
        fingerprint: Some("f".repeat(64)),
    };
    if let Ok(tag) = template.render(&values) {
        assert!(is_valid_tag(&tag), "{tag:?}");
    }
});
