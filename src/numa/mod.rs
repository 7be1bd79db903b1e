//! NUMA: node topology, node-local arenas, binding and migration.
//!
//! On machines with several memory nodes (multi-socket, or big parts with several
//! memory controllers), memory should live on the node of the thread that uses it. This
//! module gives tidyheap:
//!
//! * **Topology** ([`Topology`]): the nodes and the CPU → node map, read from
//!   `/sys/devices/system/node` without allocating, with a one-node fallback; an
//!   injected topology for tests ([`HeapConfig::topology`](crate::HeapConfig::topology)).
//! * **Per-node arenas**: with `k > 1` nodes a heap has at least `k` arenas; arena `i`
//!   serves node index `i % k`, its spans come from chunks bound to that node
//!   (`mbind(MPOL_PREFERRED)`), and a thread gets an arena of the node it runs on when it
//!   first uses the heap. With one node all of this reduces to what the pool did before:
//!   no syscall, no branch on the alloc/free paths. Details in the `placement` module.
//! * **Placement and migration**: [`Heap::alloc_on_node`](crate::Heap::alloc_on_node)
//!   and [`LargeAllocator::alloc_on_node`](crate::LargeAllocator::alloc_on_node) place a
//!   block on a chosen node; [`Heap::migrate_to_node`](crate::Heap::migrate_to_node) (and
//!   the free [`migrate_to_node`]) move the pages of fixed or large memory with
//!   `move_pages`, keeping addresses and contents (raw pointers never move: DESIGN
//!   invariant 1 holds, only physical frames change).
//! * **Compactor migration** ([`NumaMigration`], module `migration`): with more than
//!   one node, 1 in N reads of a handle block (guarded, or through 1 in N read scopes:
//!   module `scoped`) records the reader's node; each compaction
//!   pass spends a share of its budget moving blocks read mostly from another node into
//!   spans of that node's arenas ([`Heap::set_numa_migration`](crate::Heap::set_numa_migration)),
//!   and a defragmenting plan sends the misplaced blocks of its sources straight to
//!   their reader's node (one copy does both). A thread the scheduler moves to another
//!   node gets an arena of that node on a later refill (module `placement`).
//! * **Stats**: [`NumaStats`](crate::NumaStats) in [`HeapStats`](crate::HeapStats):
//!   per node arenas, threads, committed bytes and local/remote spans; bind failures
//!   and migrations.
//!
//! Every kernel refusal is an [`NumaError`], never a panic; a node the kernel does not
//! have is [`NumaError::NodeUnavailable`].
//!
//! # Examples
//!
//! ```
//! use std::alloc::Layout;
//! use tidyheap::{Heap, numa};
//!
//! let heap = Heap::new();
//! let node = numa::Topology::system().node_id(0).unwrap();
//! let layout = Layout::from_size_align(1 << 20, 64).unwrap();
//! let p = heap.alloc_on_node(layout, node)?;
//! // SAFETY: `p` is a fresh 1 MiB block.
//! unsafe { p.as_ptr().write_bytes(7, 1 << 20) };
//! assert_eq!(numa::node_of_address(p.as_ptr())?, node);
//! let m = heap.migrate_to_node(p.as_ptr(), 1 << 20, node)?;
//! assert!(m.complete());
//! // SAFETY: `p` came from `heap` with `layout`.
//! unsafe { heap.dealloc(p, layout) };
//! # Ok::<(), numa::NumaError>(())
//! ```

mod api;
pub(crate) mod migration;
pub(crate) mod placement;
pub(crate) mod readers;
pub(crate) mod scoped;
mod sys;
mod topology;

use core::fmt;

pub use migration::{MAX_SAMPLE_PERIOD, NumaMigration};
pub use sys::{
    CpuLocation, Migration, NodePolicy, bind, current_cpu, migrate_to_node, node_of_address,
};
pub use topology::{MAX_CPUS, MAX_NODE_ID, MAX_NODES, Topology, TopologySource};

use crate::AllocError;

/// Why a NUMA call failed. Nothing was changed unless the variant says so.
///
/// # Examples
///
/// ```
/// use tidyheap::numa::NumaError;
/// let e = NumaError::NodeOutOfRange { node: 5000 };
/// assert_eq!(e.to_string(), "NUMA node 5000 is out of range (ids go up to 1023)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NumaError {
    /// The node id is at or above [`MAX_NODE_ID`]; the kernel was not asked.
    NodeOutOfRange {
        /// The node asked for.
        node: u32,
    },
    /// The node is not in the heap's topology.
    UnknownNode {
        /// The node asked for.
        node: u32,
    },
    /// The kernel rejected the node: it has no such node, the node has no memory, or the
    /// process's cpuset excludes it.
    NodeUnavailable {
        /// The node asked for.
        node: u32,
        /// The call that was refused (`"mbind"`, `"move_pages"`).
        op: &'static str,
        /// The `errno` it returned.
        errno: i32,
    },
    /// The address range overflows or is not mapped.
    BadRange {
        /// Start of the range.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// The kernel has no NUMA support, or a sandbox (seccomp) forbids the call.
    Unsupported {
        /// The call.
        op: &'static str,
        /// Its `errno` (`ENOSYS` or `EPERM`).
        errno: i32,
    },
    /// Another OS failure.
    Os {
        /// The call.
        op: &'static str,
        /// Its `errno`.
        errno: i32,
    },
    /// An injected topology was malformed.
    InvalidTopology {
        /// What was wrong.
        reason: &'static str,
    },
    /// Allocating the block failed before any placement.
    Alloc(AllocError),
    /// A [`NumaMigration`] parameter was out of range; nothing was changed.
    InvalidMigration {
        /// Which parameter, and its range.
        reason: &'static str,
    },
}

impl fmt::Display for NumaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = |e: i32| std::io::Error::from_raw_os_error(e);
        match *self {
            Self::NodeOutOfRange { node } => write!(
                f,
                "NUMA node {node} is out of range (ids go up to {})",
                MAX_NODE_ID - 1
            ),
            Self::UnknownNode { node } => {
                write!(f, "NUMA node {node} is not in the heap's topology")
            }
            Self::NodeUnavailable { node, op, errno } => write!(
                f,
                "the kernel rejected NUMA node {node} ({op}: {}): no such node, no memory on \
                 it, or excluded by the cpuset",
                os(errno)
            ),
            Self::BadRange { addr, len } => {
                write!(f, "range {addr:#x}+{len} overflows or is not mapped")
            }
            Self::Unsupported { op, errno } => {
                write!(f, "NUMA call {op} is not available here: {}", os(errno))
            }
            Self::Os { op, errno } => write!(f, "{op} failed: {}", os(errno)),
            Self::InvalidTopology { reason } => write!(f, "invalid topology: {reason}"),
            Self::Alloc(e) => write!(f, "allocation failed: {e}"),
            Self::InvalidMigration { reason } => {
                write!(f, "invalid NUMA migration setting: {reason}")
            }
        }
    }
}

impl std::error::Error for NumaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Alloc(e) => Some(e),
            _ => None,
        }
    }
}

impl From<AllocError> for NumaError {
    fn from(e: AllocError) -> Self {
        Self::Alloc(e)
    }
}
