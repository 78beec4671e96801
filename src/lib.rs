//! kiln: a daemonless, rootless container image builder.
//!
//! The modules follow the data: `dockerfile` (parse, expand, ignore) → `plan` (stages,
//! ARG scope) → `builder` (one function per instruction, cache, commit) → `sandbox`
//! (user namespace, chroot, seccomp, caps) on a `rootfs` (overlay) → `layer` (diff → tar →
//! hash + compress) → `store` (OCI layout) → `registry` / `archive`.
//!
//! Layering, bottom to top (a module imports only its own level or below; `tests/layering.rs`
//! keeps it): 0 `digest`, `reference`, `image`, `fsutil`, `users`; 1 `store`; 2 `layer`,
//! `archive`, `registry`; 3 `rootfs`, `sandbox`; 4 `dockerfile`; 5 `plan`; 6 `builder`;
//! 7 `cli`.

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
pub mod sys;
pub mod users;
