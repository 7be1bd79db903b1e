//! The pool layer: size-class spans, arenas, central lists and thread caches.
//!
//! See `heap` for how the levels fit together.

pub(crate) mod arena;
pub(crate) mod central;
pub(crate) mod check;
pub(crate) mod evacuation;
#[cfg(feature = "hardened")]
pub(crate) mod hardened;
pub(crate) mod heap;
pub(crate) mod link;
pub(crate) mod lock;
pub(crate) mod owned;
pub(crate) mod pagemap;
pub(crate) mod poison;
pub(crate) mod remote;
pub(crate) mod span;
pub(crate) mod thread_cache;
