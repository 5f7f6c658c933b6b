//! `WWW-Authenticate` headers, as a hostile registry may send them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let _ = shipflow_oci::fuzzing::www_authenticate(header);
});
