//! `shipflow.toml`: any text loads or is refused with an error, never panics,
//! with every adapter's section checked, and for every environment it declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shipflow_core::Workspace;

fuzz_target!(|text: &str| {
    let schema = shipflow_oci::schema()
        .merge(shipflow_docker::schema())
        .merge(shipflow_k8s::schema());
    let Ok(workspace) = Workspace::loader()
        .schema(schema)
        .from_toml(text, "/nonexistent-root")
    else {
        return;
    };
    let names: Vec<String> = workspace.environments().map(|e| e.name().to_owned()).collect();
    for name in names {
        let _ = workspace.for_environment(&name);
    }
    for app in workspace.apps() {
        let _ = workspace.inputs(app);
        let _ = app.matching_input("apps/x/y");
    }
});
