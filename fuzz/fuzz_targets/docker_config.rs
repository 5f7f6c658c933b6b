//! Docker's `config.json` (and Podman's `auth.json`) as found on a machine: parsed
//! and an `auths` entry decoded (credential helpers are not run while fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (json, registry) = input;
    shipflow_oci::fuzzing::docker_config(json, registry);
});
