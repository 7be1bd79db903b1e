//! Size-class pools: spans, per-thread caches, central free lists and arenas.

// The consumers of the central lists (thread caches, arenas) land with the lead's merge;
// until then the non-test build has no caller. Remove this attribute when they do.
#[cfg_attr(
    any(not(test), loom),
    allow(
        dead_code,
        reason = "consumers (thread caches, arenas) are merged separately"
    )
)]
pub(crate) mod central;
