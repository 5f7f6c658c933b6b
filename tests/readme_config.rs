//! The `shipflow.toml` the README shows loads, as written, with every adapter's
//! section checked: the format users write keeps working as the model changes.

use shipflow_kit::Workspace;

fn readme_toml() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("```toml\n[workspace]")
        .expect("the README shows a shipflow.toml");
    let body = &readme[start + "```toml\n".len()..];
    body[..body.find("```").expect("closed block")].to_owned()
}

#[test]
fn the_readme_example_loads_with_every_adapter_schema() {
    let schema = shipflow_kit::oci::schema()
        .merge(shipflow_kit::docker::schema())
        .merge(shipflow_kit::k8s::schema());
    let ws = Workspace::loader()
        .schema(schema)
        .from_toml(&readme_toml(), "/nonexistent-root")
        .unwrap_or_else(|e| panic!("the README's shipflow.toml: {e}"));
    let api = ws.app("api").expect("api");
    assert_eq!(api.build_type(), "dockerfile");
    let k8s = api
        .deploy_target::<shipflow_kit::k8s::KubernetesTarget>("kubernetes")
        .expect("valid")
        .expect("present");
    assert_eq!(k8s.namespace.as_deref(), Some("prod"));
    let shop = ws
        .app("shop")
        .expect("shop")
        .deploy_target::<shipflow_kit::k8s::KubernetesTarget>("kubernetes")
        .expect("valid")
        .expect("present");
    assert_eq!(shop.strategy, Some(shipflow_kit::k8s::Strategy::BlueGreen));
    assert_eq!(
        shop.blue_green.as_ref().and_then(|b| b.scale_down_delay),
        Some(30)
    );
    let web = ws.app("web").expect("web");
    let docker = web
        .deploy_target::<shipflow_kit::docker::DockerTarget>("docker")
        .expect("valid")
        .expect("present");
    assert_eq!(docker.strategy, shipflow_kit::docker::Strategy::StartFirst);
    let native = web
        .build_spec::<shipflow_kit::oci::NativeBuild>()
        .expect("valid");
    assert_eq!(native.layers[0].to, "/srv");
}
