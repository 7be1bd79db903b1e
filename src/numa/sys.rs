//! The kernel's NUMA calls (`getcpu`, `mbind`, `get_mempolicy`, `move_pages`) as raw
//! syscalls through libc: no libnuma, no allocation (node masks and page lists live on
//! the stack), every failure an [`NumaError`] with its `errno`.

use core::ffi::c_void;

use super::NumaError;
use super::topology::MAX_NODE_ID;
use crate::os::PAGE_SIZE;

/// `MPOL_PREFERRED` from `<linux/mempolicy.h>`.
const MPOL_PREFERRED: libc::c_int = 1;
/// `MPOL_BIND`.
const MPOL_BIND: libc::c_int = 2;
/// `MPOL_MF_MOVE`: move pages already present that break the new policy.
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;
/// `MPOL_F_NODE` / `MPOL_F_ADDR`: `get_mempolicy` reports the node of the page at `addr`.
const MPOL_F_NODE: libc::c_ulong = 1 << 0;
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// Words of the node mask handed to the kernel (`MAX_NODE_ID` bits).
const MASK_WORDS: usize = MAX_NODE_ID as usize / 64;
/// Pages per `move_pages` call (the arrays live on the stack).
const MOVE_BATCH: usize = 256;

/// How [`bind`] places a range's pages on its node.
///
/// # Examples
///
/// ```
/// use tidyheap::numa::NodePolicy;
/// assert_eq!(NodePolicy::default(), NodePolicy::Preferred);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NodePolicy {
    /// `MPOL_PREFERRED`: pages go to the node while it has free memory, elsewhere after.
    /// What tidyheap's own spans use: a full node slows the game down instead of
    /// getting it killed.
    #[default]
    Preferred,
    /// `MPOL_BIND`: pages go to the node only; when it is full, the process is out of
    /// memory (the kernel's OOM handling, not an error return).
    Bind,
}

/// Where the calling thread runs, as the kernel reports it (`getcpu`).
///
/// # Examples
///
/// ```
/// let here = tidyheap::numa::current_cpu()?;
/// assert!(tidyheap::numa::Topology::system().index_of(here.node).is_some());
/// # Ok::<(), tidyheap::numa::NumaError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuLocation {
    /// The CPU.
    pub cpu: u32,
    /// Its node.
    pub node: u32,
}

/// The CPU the calling thread runs on and that CPU's node, from the `getcpu` syscall
/// (already stale when it returns if the scheduler moves the thread: a hint).
///
/// # Errors
///
/// [`NumaError::Os`] with the `errno` if the syscall fails (it does not on Linux ≥ 2.6.19).
pub fn current_cpu() -> Result<CpuLocation, NumaError> {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: getcpu writes one u32 through each non-null pointer; the third argument
    // (the unused tcache) may be null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            core::ptr::null_mut::<c_void>(),
        )
    };
    if r < 0 {
        return Err(NumaError::Os {
            op: "getcpu",
            errno: errno(),
        });
    }
    Ok(CpuLocation { cpu, node })
}

/// The node of the page holding `addr`, from `get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`.
/// The page is faulted in (for reading) if it was not present.
///
/// # Errors
///
/// [`NumaError::BadRange`] if `addr` is not mapped; [`NumaError::Unsupported`] on a
/// kernel without NUMA support or where a sandbox forbids the call; [`NumaError::Os`]
/// otherwise.
///
/// # Examples
///
/// ```
/// let x = Box::new(7u64);
/// let node = tidyheap::numa::node_of_address(&*x as *const u64 as *const u8)?;
/// assert!(tidyheap::numa::Topology::system().index_of(node).is_some());
/// # Ok::<(), tidyheap::numa::NumaError>(())
/// ```
pub fn node_of_address(addr: *const u8) -> Result<u32, NumaError> {
    let mut node: libc::c_int = -1;
    // SAFETY: with MPOL_F_NODE | MPOL_F_ADDR the kernel writes one int through `mode`
    // and, with a null mask and maxnode 0, nothing else; `addr` is only looked up.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            core::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            // An address the kernel looks up in our page tables, never dereferenced
            // on our side: passed as an integer.
            addr as usize,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if r < 0 {
        let e = errno();
        return Err(match e {
            libc::EFAULT => NumaError::BadRange {
                addr: addr as usize,
                len: 1,
            },
            _ => classify("get_mempolicy", e),
        });
    }
    u32::try_from(node).map_err(|_| NumaError::Os {
        op: "get_mempolicy",
        errno: libc::EINVAL,
    })
}

/// The whole pages covering `[ptr, ptr + len)`: `(first page, bytes)`.
pub(crate) fn page_range(ptr: *const u8, len: usize) -> Result<(usize, usize), NumaError> {
    let start = ptr as usize;
    let bad = NumaError::BadRange { addr: start, len };
    let end = start.checked_add(len).ok_or(bad)?;
    let first = start & !(PAGE_SIZE - 1);
    let last = crate::os::round_up(end, PAGE_SIZE).ok_or(bad)?;
    Ok((first, last - first))
}

fn check_node(node: u32) -> Result<(), NumaError> {
    if node >= MAX_NODE_ID {
        return Err(NumaError::NodeOutOfRange { node });
    }
    Ok(())
}

/// Sets the memory policy of the pages covering `[ptr, ptr + len)` to `node`
/// (`mbind`). Pages touched afterwards are placed by the policy; with `move_existing`,
/// pages already present elsewhere are moved there too (`MPOL_MF_MOVE`, contents kept).
///
/// The policy belongs to the mapping: it outlives the blocks in it, and `mbind` splits
/// the mapping at the range's page boundaries (so binding many small ranges costs
/// kernel mapping entries: tidyheap binds whole 64 MiB chunks).
///
/// # Errors
///
/// * [`NumaError::NodeOutOfRange`] for a node id from [`MAX_NODE_ID`] on (nothing is
///   asked of the kernel);
/// * [`NumaError::NodeUnavailable`] when the kernel rejects the node (`EINVAL`: it has
///   no such node, the node has no memory, or the cpuset excludes it);
/// * [`NumaError::BadRange`] when the range overflows or is not mapped (`EFAULT`,
///   `ENOMEM`);
/// * [`NumaError::Unsupported`] without kernel NUMA support or when a sandbox forbids
///   the call; [`NumaError::Os`] otherwise.
///
/// # Examples
///
/// ```
/// use tidyheap::numa::{self, NodePolicy, NumaError};
/// let v = vec![0u8; 1 << 16];
/// numa::bind(v.as_ptr(), v.len(), 0, NodePolicy::Preferred, false)?;
/// let missing = numa::bind(v.as_ptr(), v.len(), 1000, NodePolicy::Bind, false);
/// assert!(matches!(missing, Err(NumaError::NodeUnavailable { node: 1000, .. })));
/// # Ok::<(), NumaError>(())
/// ```
pub fn bind(
    ptr: *const u8,
    len: usize,
    node: u32,
    policy: NodePolicy,
    move_existing: bool,
) -> Result<(), NumaError> {
    check_node(node)?;
    let (first, bytes) = page_range(ptr, len)?;
    if bytes == 0 {
        return Ok(());
    }
    let mut mask = [0 as libc::c_ulong; MASK_WORDS];
    mask[node as usize / 64] = 1 << (node % 64);
    let mode = match policy {
        NodePolicy::Preferred => MPOL_PREFERRED,
        NodePolicy::Bind => MPOL_BIND,
    };
    let flags = if move_existing { MPOL_MF_MOVE } else { 0 };
    // SAFETY: the kernel reads `MASK_WORDS` words of `mask` (maxnode bits = words × 64,
    // passed as bits + 1 per the syscall's off-by-one convention); `first` is
    // page-aligned. Changing a policy, and moving pages with MPOL_MF_MOVE, keeps every
    // byte's value and address: no memory-safety precondition.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            first as *mut c_void,
            bytes as libc::c_ulong,
            mode,
            mask.as_ptr(),
            (MASK_WORDS * 64 + 1) as libc::c_ulong,
            flags,
        )
    };
    if r < 0 {
        let e = errno();
        return Err(match e {
            libc::EINVAL => NumaError::NodeUnavailable {
                node,
                op: "mbind",
                errno: e,
            },
            libc::EFAULT | libc::ENOMEM => NumaError::BadRange {
                addr: ptr as usize,
                len,
            },
            _ => classify("mbind", e),
        });
    }
    Ok(())
}

/// What [`migrate_to_node`] did, page by page.
///
/// # Examples
///
/// ```
/// let m = tidyheap::numa::Migration { pages: 4, on_node: 3, not_present: 1, failed: 0 };
/// assert!(m.complete());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Migration {
    /// Pages covering the range.
    pub pages: usize,
    /// Pages on the target node afterwards (moved, or there already).
    pub on_node: usize,
    /// Pages never touched (no physical page yet; they follow the range's policy when
    /// first touched), or the shared zero page.
    pub not_present: usize,
    /// Pages the kernel could not move (busy, pinned, shared with another process,
    /// target node full). Their contents are intact where they were.
    pub failed: usize,
}

impl Migration {
    /// Every present page is on the target node.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.on_node + self.not_present == self.pages
    }

    pub(crate) fn add(&mut self, o: Migration) {
        self.pages += o.pages;
        self.on_node += o.on_node;
        self.not_present += o.not_present;
        self.failed += o.failed;
    }
}

/// Moves the physical pages covering `[ptr, ptr + len)` to `node` with `move_pages`.
/// Addresses and contents stay as they are: only the physical frames change, so this is
/// sound for any mapped memory of this process, pointers into it included (threads
/// touching a page while it moves wait for the move in the page fault).
///
/// Whole pages move: bytes sharing a page with the range move with it. The range's
/// *policy* is unchanged, so pages touched for the first time later still follow it
/// (see [`bind`] to change it).
///
/// # Errors
///
/// * [`NumaError::NodeOutOfRange`] for a node id from [`MAX_NODE_ID`] on;
/// * [`NumaError::NodeUnavailable`] when the kernel rejects the node (`ENODEV`: no such
///   node or no memory on it; `EACCES`: the cpuset excludes it);
/// * [`NumaError::BadRange`] when the range overflows;
/// * [`NumaError::Unsupported`] / [`NumaError::Os`] as for [`bind`].
///
/// Unmapped pages inside the range are not an error: they count as
/// [`Migration::failed`].
///
/// # Examples
///
/// ```
/// use tidyheap::numa;
/// let v: Vec<u32> = (0..4096).collect();
/// let m = numa::migrate_to_node(v.as_ptr().cast(), 4 * v.len(), 0)?;
/// assert!(m.complete());
/// assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
/// # Ok::<(), numa::NumaError>(())
/// ```
pub fn migrate_to_node(ptr: *const u8, len: usize, node: u32) -> Result<Migration, NumaError> {
    check_node(node)?;
    let (first, bytes) = page_range(ptr, len)?;
    let mut total = Migration::default();
    let mut page = first;
    let end = first + bytes;
    while page < end {
        let n = ((end - page) / PAGE_SIZE).min(MOVE_BATCH);
        let mut pages = [core::ptr::null_mut::<c_void>(); MOVE_BATCH];
        for (i, p) in pages[..n].iter_mut().enumerate() {
            *p = (page + i * PAGE_SIZE) as *mut c_void;
        }
        let nodes = [node as libc::c_int; MOVE_BATCH];
        let mut status = [0 as libc::c_int; MOVE_BATCH];
        // SAFETY: the kernel reads `n` entries of `pages` and `nodes` and writes `n` of
        // `status`, all on our stack. Moving pages keeps every byte's value and address
        // (see the function docs): no memory-safety precondition.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                0 as libc::c_int,
                n as libc::c_ulong,
                pages.as_mut_ptr(),
                nodes.as_ptr(),
                status.as_mut_ptr(),
                MPOL_MF_MOVE as libc::c_int,
            )
        };
        if r < 0 {
            let e = errno();
            return Err(match e {
                libc::ENODEV | libc::EACCES => NumaError::NodeUnavailable {
                    node,
                    op: "move_pages",
                    errno: e,
                },
                _ => classify("move_pages", e),
            });
        }
        let mut batch = Migration {
            pages: n,
            ..Migration::default()
        };
        for &s in &status[..n] {
            if s == node as libc::c_int {
                batch.on_node += 1;
            } else if s == -libc::ENOENT {
                batch.not_present += 1;
            } else {
                batch.failed += 1;
            }
        }
        total.add(batch);
        page += n * PAGE_SIZE;
    }
    Ok(total)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Errors common to every call: no NUMA in the kernel or a sandbox, or anything else.
fn classify(op: &'static str, errno: i32) -> NumaError {
    match errno {
        libc::ENOSYS | libc::EPERM => NumaError::Unsupported { op, errno },
        _ => NumaError::Os { op, errno },
    }
}
