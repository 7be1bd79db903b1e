//! Node topology: which memory nodes exist and which CPU belongs to which.
//!
//! Read from `/sys/devices/system/node` with raw `open`/`read` into stack buffers: no
//! Rust-heap allocation, so the global allocator can detect it on first use. Where that
//! directory is missing or unreadable (non-NUMA kernels, some sandboxes) the topology
//! is one node, id 0, holding every CPU.

use std::sync::OnceLock;

use super::NumaError;

/// Most nodes a topology can hold (dense indexes `0..MAX_NODES`).
pub const MAX_NODES: usize = 64;
/// Node ids must be below this (the nodemask tidyheap hands the kernel has this many bits).
pub const MAX_NODE_ID: u32 = 1024;
/// CPUs above this map to node index 0.
pub const MAX_CPUS: usize = 1024;

/// Where a [`Topology`] came from.
///
/// # Examples
///
/// ```
/// use tidyheap::numa::{Topology, TopologySource};
/// assert_eq!(Topology::single_node().source(), TopologySource::Fallback);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopologySource {
    /// Read from `/sys/devices/system/node`.
    Sysfs,
    /// The one-node fallback (no sysfs node directory, or nothing parsable in it).
    Fallback,
    /// Built by the caller with [`Topology::from_nodes`] (tests, or a deliberate layout).
    Injected,
}

/// Memory nodes and the CPU → node map.
///
/// Nodes have kernel *ids* (possibly sparse: 0, 2, 5) and dense *indexes* `0..node_count()`
/// in ascending id order. Arenas are spread over the indexes (see [`crate::numa`]).
///
/// # Examples
///
/// ```
/// use tidyheap::numa::Topology;
/// let t = Topology::from_nodes(&[(0, &[0, 1]), (2, &[2, 3])])?;
/// assert_eq!(t.node_count(), 2);
/// assert_eq!(t.node_of_cpu(3), 2);
/// assert_eq!(t.index_of(2), Some(1));
/// # Ok::<(), tidyheap::numa::NumaError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Nodes in use: `ids[..count]`, ascending, each `< MAX_NODE_ID`. `1 <= count <= MAX_NODES`.
    count: usize,
    ids: [u16; MAX_NODES],
    /// Dense node index of each CPU (`< count`); 0 for CPUs no node lists.
    cpu_node: [u8; MAX_CPUS],
    source: TopologySource,
}

static SYSTEM: OnceLock<Topology> = OnceLock::new();

impl Topology {
    /// One node, id 0, holding every CPU: what tidyheap assumes without NUMA information.
    pub const fn single_node() -> Self {
        Self {
            count: 1,
            ids: [0; MAX_NODES],
            cpu_node: [0; MAX_CPUS],
            source: TopologySource::Fallback,
        }
    }

    /// The machine's topology, detected once per process (see [`Topology::detect`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let t = tidyheap::numa::Topology::system();
    /// assert!(t.node_count() >= 1);
    /// ```
    pub fn system() -> &'static Topology {
        SYSTEM.get_or_init(Self::detect)
    }

    /// Reads the topology from `/sys/devices/system/node` now, or returns
    /// [`Topology::single_node`] when that is absent or unparsable. Allocates nothing.
    ///
    /// Nodes are the *online* ones (`node/online`); a node's CPUs come from
    /// `nodeN/cpulist`. Nodes past [`MAX_NODES`], or with ids from [`MAX_NODE_ID`] on, are
    /// ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::numa::{Topology, TopologySource};
    /// let t = Topology::detect();
    /// assert!(matches!(t.source(), TopologySource::Sysfs | TopologySource::Fallback));
    /// ```
    pub fn detect() -> Self {
        Self::detect_in(b"/sys/devices/system/node").unwrap_or_else(Self::single_node)
    }

    /// Detection under `root` (a directory laid out like `/sys/devices/system/node`).
    fn detect_in(root: &[u8]) -> Option<Self> {
        let mut path = PathBuf::new(root)?;
        let mut buf = [0u8; 4096];
        path.push(b"/online")?;
        let n = read_file(&path, &mut buf)?;
        let mut t = Self::single_node();
        t.count = 0;
        t.source = TopologySource::Sysfs;
        parse_list(&buf[..n], |id| {
            let known = t.ids[..t.count].iter().any(|&n| usize::from(n) == id);
            if id < MAX_NODE_ID as usize && t.count < MAX_NODES && !known {
                t.ids[t.count] = id as u16;
                t.count += 1;
            }
        })?;
        if t.count == 0 {
            return None;
        }
        // `online` lists ids ascending; keep that an invariant even for odd inputs.
        t.ids[..t.count].sort_unstable();
        for index in 0..t.count {
            let mut path = PathBuf::new(root)?;
            path.push(b"/node")?;
            path.push_decimal(usize::from(t.ids[index]))?;
            path.push(b"/cpulist")?;
            // A node without a readable cpulist has no CPUs (memory-only nodes).
            if let Some(n) = read_file(&path, &mut buf) {
                parse_list(&buf[..n], |cpu| {
                    if cpu < MAX_CPUS {
                        t.cpu_node[cpu] = index as u8;
                    }
                })?;
            }
        }
        Some(t)
    }

    /// A topology with the given nodes, as `(node id, CPUs of that node)`: for tests and
    /// for deliberate layouts (pass it to a heap through
    /// [`HeapConfig::topology`](crate::HeapConfig::topology)).
    ///
    /// # Errors
    ///
    /// [`NumaError::InvalidTopology`] when `nodes` is empty, holds more than
    /// [`MAX_NODES`] nodes, repeats a node id or a CPU, names a CPU from [`MAX_CPUS`] on,
    /// or a node id from [`MAX_NODE_ID`] on.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::numa::{NumaError, Topology};
    /// assert!(matches!(Topology::from_nodes(&[]), Err(NumaError::InvalidTopology { .. })));
    /// let t = Topology::from_nodes(&[(1, &[1]), (0, &[0])])?;
    /// assert_eq!(t.node_ids().collect::<Vec<_>>(), [0, 1]);
    /// # Ok::<(), NumaError>(())
    /// ```
    pub fn from_nodes(nodes: &[(u32, &[usize])]) -> Result<Self, NumaError> {
        let bad = |reason| Err(NumaError::InvalidTopology { reason });
        if nodes.is_empty() {
            return bad("no nodes");
        }
        if nodes.len() > MAX_NODES {
            return bad("more than MAX_NODES nodes");
        }
        let mut sorted: Vec<(u32, &[usize])> = nodes.to_vec();
        sorted.sort_unstable_by_key(|&(id, _)| id);
        let mut t = Self::single_node();
        t.count = sorted.len();
        t.source = TopologySource::Injected;
        let mut seen = [false; MAX_CPUS];
        for (index, &(id, cpus)) in sorted.iter().enumerate() {
            if id >= MAX_NODE_ID {
                return bad("node id at or above MAX_NODE_ID");
            }
            if index > 0 && sorted[index - 1].0 == id {
                return bad("repeated node id");
            }
            t.ids[index] = id as u16;
            for &cpu in cpus {
                if cpu >= MAX_CPUS {
                    return bad("CPU at or above MAX_CPUS");
                }
                if std::mem::replace(&mut seen[cpu], true) {
                    return bad("CPU listed twice");
                }
                t.cpu_node[cpu] = index as u8;
            }
        }
        Ok(t)
    }

    /// Number of nodes (at least 1).
    pub fn node_count(&self) -> usize {
        self.count
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// The kernel id of the node with dense index `index`, if there is one.
    ///
    /// # Examples
    ///
    /// ```
    /// let t = tidyheap::numa::Topology::single_node();
    /// assert_eq!((t.node_id(0), t.node_id(1)), (Some(0), None));
    /// ```
    pub fn node_id(&self, index: usize) -> Option<u32> {
        (index < self.count).then(|| u32::from(self.ids[index]))
    }

    /// The node ids, ascending.
    pub fn node_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids[..self.count].iter().map(|&id| u32::from(id))
    }

    /// The dense index of node `id`, if the topology has it.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.ids[..self.count]
            .iter()
            .position(|&n| u32::from(n) == id)
    }

    /// The node id of `cpu` (the first node for CPUs the topology does not list).
    pub fn node_of_cpu(&self, cpu: usize) -> u32 {
        u32::from(self.ids[self.index_of_cpu(cpu)])
    }

    /// The dense node index of `cpu` (0 for CPUs the topology does not list).
    pub(crate) fn index_of_cpu(&self, cpu: usize) -> usize {
        self.cpu_node.get(cpu).map_or(0, |&i| usize::from(i))
    }

    /// The dense node index of the CPU the calling thread runs on right now, by this
    /// topology's map (a vDSO `sched_getcpu`, no syscall on x86-64); 0 when unknown.
    pub(crate) fn current_index(&self) -> usize {
        if self.count == 1 {
            return 0;
        }
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).map_or(0, |c| self.index_of_cpu(c))
    }

    /// The node id of the CPU the calling thread runs on right now, by this topology's
    /// map (which, for an injected topology, may differ from the kernel's: see
    /// [`current_cpu`](super::current_cpu) for the kernel's view).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(tidyheap::numa::Topology::single_node().current_node(), 0);
    /// ```
    pub fn current_node(&self) -> u32 {
        u32::from(self.ids[self.current_index()])
    }
}

/// A NUL-terminated path in a stack buffer.
struct PathBuf {
    bytes: [u8; 256],
    len: usize,
}

impl PathBuf {
    fn new(root: &[u8]) -> Option<Self> {
        let mut p = Self {
            bytes: [0; 256],
            len: 0,
        };
        p.push(root)?;
        Some(p)
    }

    /// Appends `s`, keeping room for the NUL; `None` if it does not fit or holds a NUL.
    fn push(&mut self, s: &[u8]) -> Option<()> {
        if self.len + s.len() >= self.bytes.len() || s.contains(&0) {
            return None;
        }
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
        Some(())
    }

    fn push_decimal(&mut self, mut n: usize) -> Option<()> {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }
}

/// Reads up to `buf.len()` bytes of the file at `path`; `None` if it cannot be opened.
fn read_file(path: &PathBuf, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path.bytes` is NUL-terminated within its buffer (`push` keeps a NUL after
    // `len`, the buffer starts zeroed).
    let fd = unsafe { libc::open(path.bytes.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: `buf[n..]` is writable for `buf.len() - n` bytes; `fd` is open.
        let r = unsafe { libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        match usize::try_from(r) {
            Ok(0) | Err(_) => break,
            Ok(r) => n += r,
        }
    }
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    Some(n)
}

/// Parses a kernel range list (`"0-3,8,10-11\n"`), calling `f` with each number;
/// `None` on malformed input or a range wider than [`MAX_CPUS`] · 64.
pub(crate) fn parse_list(s: &[u8], mut f: impl FnMut(usize)) -> Option<()> {
    let s = s.trim_ascii();
    if s.is_empty() {
        return Some(());
    }
    for part in s.split(|&b| b == b',') {
        let (lo, hi) = match part.iter().position(|&b| b == b'-') {
            Some(dash) => (number(&part[..dash])?, number(&part[dash + 1..])?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if hi < lo || hi - lo > MAX_CPUS * 64 {
            return None;
        }
        (lo..=hi).for_each(&mut f);
    }
    Some(())
}

fn number(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + usize::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Option<Vec<usize>> {
        let mut v = Vec::new();
        parse_list(s.as_bytes(), |n| v.push(n)).map(|()| v)
    }

    #[test]
    fn range_lists_parse() {
        assert_eq!(list("0\n"), Some(vec![0]));
        assert_eq!(list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(list("\n"), Some(vec![]));
        for bad in ["3-1", "a", "1,,2", "-1", "1-", "99999999999", "0-99999999"] {
            assert_eq!(list(bad), None, "{bad:?}");
        }
    }

    /// Detection against a fake sysfs tree: sparse ids, a memory-only node, and the
    /// fallback when the directory is missing or its `online` file is garbage.
    #[test]
    fn detection_reads_a_sysfs_tree() {
        let dir = std::env::temp_dir().join(format!("tidyheap-numa-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (node, cpus) in [(0, Some("0-1,4\n")), (2, Some("2-3\n")), (5, None)] {
            let d = dir.join(format!("node{node}"));
            std::fs::create_dir_all(&d).unwrap();
            if let Some(c) = cpus {
                std::fs::write(d.join("cpulist"), c).unwrap();
            }
        }
        std::fs::write(dir.join("online"), "0,2,5\n").unwrap();
        let root = dir.to_str().unwrap().as_bytes();
        let t = Topology::detect_in(root).unwrap();
        assert_eq!(t.source(), TopologySource::Sysfs);
        assert_eq!(t.node_ids().collect::<Vec<_>>(), [0, 2, 5]);
        let cpus: Vec<u32> = (0..6).map(|c| t.node_of_cpu(c)).collect();
        assert_eq!(cpus, [0, 0, 2, 2, 0, 0]);
        std::fs::write(dir.join("online"), "2,0,0,5\n").unwrap();
        let again = Topology::detect_in(root).unwrap();
        assert_eq!(again.node_ids().collect::<Vec<_>>(), [0, 2, 5]);
        std::fs::write(dir.join("online"), "zero\n").unwrap();
        assert_eq!(Topology::detect_in(root), None);
        std::fs::write(dir.join("online"), "\n").unwrap();
        assert_eq!(Topology::detect_in(root), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Topology::detect_in(root), None);
    }

    #[test]
    fn injected_topologies_are_validated() {
        let cpus: &[usize] = &[0];
        for (nodes, why) in [
            (&[][..], "no nodes"),
            (&[(0, cpus), (0, &[1][..])][..], "repeated node id"),
            (&[(0, cpus), (1, cpus)][..], "CPU listed twice"),
            (&[(0, &[MAX_CPUS][..])][..], "CPU at or above MAX_CPUS"),
            (
                &[(MAX_NODE_ID, cpus)][..],
                "node id at or above MAX_NODE_ID",
            ),
        ] {
            assert_eq!(
                Topology::from_nodes(nodes),
                Err(NumaError::InvalidTopology { reason: why })
            );
        }
        let many: Vec<(u32, &[usize])> = (0..=MAX_NODES as u32).map(|i| (i, &[][..])).collect();
        assert!(Topology::from_nodes(&many).is_err());
        assert!(Topology::from_nodes(&many[..MAX_NODES]).is_ok());
    }
}
