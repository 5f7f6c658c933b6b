//! Fields whose optionality differs between the Kubernetes API versions k8s-openapi
//! generates: `Deployment.spec` and `ReplicaSet.spec` are optional up to 1.36 and
//! required from 1.37, a condition's `type` and `status` the other way round, and
//! an EndpointSlice's `endpoints` required up to 1.36 and optional from 1.37. The
//! final binary picks the version (k8s-openapi's rule), so shipflow-k8s reads these
//! fields through [`Field`], which is implemented for both shapes.

use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec};
use k8s_openapi::api::discovery::v1::Endpoint;

/// A field that is `T` in some API versions and `Option<T>` in others.
pub(crate) trait Field<T> {
    /// The value, if present.
    fn opt(&self) -> Option<&T>;
}

macro_rules! either_shape {
    ($($t:ty),*) => {$(
        impl Field<$t> for $t {
            fn opt(&self) -> Option<&$t> {
                Some(self)
            }
        }
        impl Field<$t> for Option<$t> {
            fn opt(&self) -> Option<&$t> {
                self.as_ref()
            }
        }
    )*};
}

either_shape!(DeploymentSpec, ReplicaSetSpec, String, Vec<Endpoint>);

/// Whether a string field (required or optional, by API version) equals `want`.
pub(crate) fn is(field: &impl Field<String>, want: &str) -> bool {
    field.opt().is_some_and(|s| s == want)
}
