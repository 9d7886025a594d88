//! Where the objects come from: a directory of YAML files (`model::load_dir`, polled by the
//! agent) or the Kubernetes API (`kube`).

pub mod kube;
