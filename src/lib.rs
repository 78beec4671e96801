//! kiln: a daemonless, rootless container image builder.
//!
//! The modules follow the data: `dockerfile` (parse, expand, ignore) → `plan` (stages,
//! ARG scope) → `builder` (one function per instruction, cache, commit) → `sandbox`
//! (user namespace, chroot, seccomp, caps) on a `rootfs` (overlay) → `layer` (diff → tar →
//! hash + compress) → `store` (OCI layout) → `registry` / `archive`.

pub mod archive;
pub mod artifact;
pub mod attest;
pub mod builder;
pub mod cli;
pub mod digest;
pub mod dockerfile;
pub mod events;
pub mod fsutil;
pub mod image;
pub mod layer;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod runner;
pub mod sandbox;
pub mod store;
pub mod users;
