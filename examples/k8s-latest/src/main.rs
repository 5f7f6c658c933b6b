//! A binary that picks k8s-openapi's `latest` API version and uses shipflow-k8s.

k8s_openapi::k8s_if_ge_1_37! {
    const API: &str = "1.37 or newer";
}

fn main() {
    let deployer = std::any::type_name::<shipflow_k8s::KubeDeployer>();
    println!("{deployer} builds against Kubernetes API {API}");
}
