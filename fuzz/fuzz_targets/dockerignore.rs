//! `.dockerignore` rules, matched against a few paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (rules, path) = input;
    shipflow_oci::fuzzing::dockerignore(rules, &[path, "a/b/c", "node_modules/x", ".git/config"]);
});
