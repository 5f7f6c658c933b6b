//! The resources the simulated API server serves: their group, version, names and
//! verbs, from which routing, discovery and the OpenAPI documents are all derived.

/// A resource kind the simulated server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Deployment,
    ReplicaSet,
    Pod,
    ConfigMap,
    Secret,
    Service,
    Endpoints,
    EndpointSlice,
    Event,
    Lease,
    Job,
}

/// What discovery says about a kind.
pub(crate) struct Resource {
    pub(crate) kind: Kind,
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) name: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) short_names: &'static [&'static str],
    pub(crate) categories: &'static [&'static str],
    /// Subresources: `(name, group, version, kind, verbs)`.
    pub(crate) subresources: &'static [Subresource],
}

/// A subresource, e.g. `deployments/scale`.
pub(crate) struct Subresource {
    pub(crate) name: &'static str,
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) verbs: &'static [&'static str],
}

/// The verbs of every resource served.
pub(crate) const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

const STATUS_DEPLOYMENT: Subresource = Subresource {
    name: "status",
    group: "apps",
    version: "v1",
    kind: "Deployment",
    verbs: &["get", "patch", "update"],
};
const STATUS_JOB: Subresource = Subresource {
    name: "status",
    group: "batch",
    version: "v1",
    kind: "Job",
    verbs: &["get", "patch", "update"],
};
const SCALE: Subresource = Subresource {
    name: "scale",
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    verbs: &["get", "patch", "update"],
};
const POD_LOG: Subresource = Subresource {
    name: "log",
    group: "",
    version: "v1",
    kind: "Pod",
    verbs: &["get"],
};

/// Every resource served, in discovery order.
pub(crate) const RESOURCES: &[Resource] = &[
    Resource {
        kind: Kind::Deployment,
        group: "apps",
        version: "v1",
        name: "Deployment",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[SCALE, STATUS_DEPLOYMENT],
    },
    Resource {
        kind: Kind::ReplicaSet,
        group: "apps",
        version: "v1",
        name: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[],
    },
    Resource {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        name: "Pod",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        categories: &["all"],
        subresources: &[POD_LOG],
    },
    Resource {
        kind: Kind::ConfigMap,
        group: "",
        version: "v1",
        name: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        kind: Kind::Secret,
        group: "",
        version: "v1",
        name: "Secret",
        plural: "secrets",
        singular: "secret",
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        kind: Kind::Service,
        group: "",
        version: "v1",
        name: "Service",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[],
    },
    Resource {
        kind: Kind::Endpoints,
        group: "",
        version: "v1",
        name: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        name: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        kind: Kind::Event,
        group: "",
        version: "v1",
        name: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        kind: Kind::Lease,
        group: "coordination.k8s.io",
        version: "v1",
        name: "Lease",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        kind: Kind::Job,
        group: "batch",
        version: "v1",
        name: "Job",
        plural: "jobs",
        singular: "job",
        short_names: &[],
        categories: &["all"],
        subresources: &[STATUS_JOB],
    },
];

impl Kind {
    pub(crate) fn resource(self) -> &'static Resource {
        RESOURCES
            .iter()
            .find(|r| r.kind == self)
            .expect("every kind is in RESOURCES")
    }

    /// The kind served at `group/version` under `plural`.
    pub(crate) fn from_path(group: &str, version: &str, plural: &str) -> Option<Self> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .map(|r| r.kind)
    }

    /// The kind named `name` (e.g. `"ConfigMap"`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        RESOURCES.iter().find(|r| r.name == name).map(|r| r.kind)
    }

    /// `apps/v1`, `v1`, ...
    pub(crate) fn api_version(self) -> String {
        let r = self.resource();
        if r.group.is_empty() {
            r.version.to_owned()
        } else {
            format!("{}/{}", r.group, r.version)
        }
    }

    /// `Deployment`, `Pod`, ...
    pub(crate) fn name(self) -> &'static str {
        self.resource().name
    }

    /// `deployments.apps`, `pods`, ...: how API errors name the resource.
    pub(crate) fn group_resource(self) -> String {
        let r = self.resource();
        if r.group.is_empty() {
            r.plural.to_owned()
        } else {
            format!("{}.{}", r.plural, r.group)
        }
    }
}

/// The API groups served, each with its one version: `("", "v1")` is the core group.
pub(crate) fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !groups.contains(&(r.group, r.version)) {
            groups.push((r.group, r.version));
        }
    }
    groups
}
