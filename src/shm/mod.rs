//! Shared memory across processes: a segment, a TLSF heap inside it, and relative handles.
//!
//! A game and its editor, an asset cooker, a crash reporter: several processes map one
//! segment and allocate from it at once. Everything inside the segment is addressed by
//! offsets, so it means the same in every process whatever address the segment is mapped at.
//! This module sits beside the pools and shares nothing with them.
//!
//! ```
//! use tidyheap::shm::ShmArena;
//!
//! let name = format!("/tidyheap-doc-mod-{}", std::process::id());
//! let game = ShmArena::create(&name, 1 << 20).unwrap();   // one process creates...
//! let editor = ShmArena::open(&name).unwrap();            // ...another attaches
//! let h = game.alloc_bytes(b"mesh 17").unwrap();          // 8-byte handle, send it anywhere
//! let mut buf = [0u8; 7];
//! editor.read(h, 0, &mut buf).unwrap();
//! assert_eq!(&buf, b"mesh 17");
//! editor.free(h).unwrap();
//! assert!(game.read(h, 0, &mut buf).is_err());            // stale everywhere now
//! ShmArena::unlink(&name).unwrap();
//! ```
//!
//! # The segment
//!
//! Created by name with `shm_open` (`/dev/shm/<name>`; [`ShmArena::create`],
//! [`ShmArena::open`], [`ShmArena::open_or_create`]) or anonymously with `memfd_create`
//! ([`ShmArena::create_anonymous`]), whose fd a child inherits ([`ShmArena::inheritable_fd`],
//! [`ShmArena::from_fd`]); memfds are sealed against shrinking. Layout:
//!
//! ```text
//! 0           header: magic "tidyheap" @0, version @8, init word @12, size @16, formatter pid @24,
//!             poison flag, lock (holder pid, waiters, recoveries), journal, counters, TLSF index
//! 64-aligned  block-start bitmap (1 bit per 16 B)
//! 4K-aligned  heap: TLSF blocks up to `size`
//! ```
//!
//! **Bootstrap**: the init word goes `UNINIT -> FORMATTING -> READY`. Only the process that
//! created the file (`O_EXCL` or a fresh memfd) formats it; attachers wait for `READY` with a
//! time-out ([`ShmOptions::attach_timeout`]) and report [`ShmError::StuckFormatter`] with the
//! formatter's pid and whether it is alive. Attach checks magic, version and size: a foreign
//! file is [`ShmError::BadMagic`], another layout [`ShmError::BadVersion`], a short file
//! [`ShmError::Truncated`] — checked before any access beyond the file, never UB. (Shrinking
//! a named segment's file *while mapped* is outside this model: the kernel answers with
//! SIGBUS. Anonymous segments are sealed against it.)
//!
//! # The allocator
//!
//! TLSF: free blocks sit in `25 × 16` segregated lists indexed by two bitmaps; alloc finds a
//! fitting class with two `trailing_zeros`, pops its head and splits; free merges with both
//! physical neighbours at once (immediate coalescing) and pushes the result. Both are O(1).
//! Alignment up to 4096 splits a free front piece off. See `tlsf.rs` for the block format and
//! invariants; [`ShmArena::check`] verifies all of them with a full walk.
//!
//! # Locking and crashes
//!
//! One process-shared lock (a futex word holding the holder's pid) guards the heap metadata.
//! A waiter that finds the holder dead (`kill(pid, 0)` fails with `ESRCH`, or the holder is a
//! zombie) takes the lock over. **Consistency after a crash mid-operation is guaranteed by the
//! order of writes and then repaired**: every change to the physical block chain is one 8-byte
//! store, so the chain always tiles the heap; the process that takes the lock over rebuilds the
//! free lists, bitmaps, links and counters from a walk and uses a small journal to roll back an
//! unfinished alloc or finish an unfinished free. A walk that fails (someone wrote garbage into
//! the metadata) is detected and reported: the segment is poisoned and every operation returns
//! [`ShmError::Corrupt`]. Recoveries are counted in [`ShmStats::recoveries`], their repairs in
//! [`ShmStats::rolled_back_allocs`] and [`ShmStats::completed_frees`]. A crash in the middle
//! of [`ShmArena::write`] leaves that block's bytes partly written. Blocks a dead
//! process had allocated stay allocated (another process may hold their handles).
//!
//! # Sharing data safely
//!
//! Other processes can write a block at any moment, so no `&`/`&mut` into the segment is ever
//! handed out. Data moves by copy: [`ShmArena::read`]/[`ShmArena::write`] for bytes,
//! [`ShmArena::get`]/[`ShmArena::set`] for [`bytemuck::Pod`] values through a typed
//! [`ShmPod<T>`]. The copies use relaxed atomic loads and stores (no data race even when
//! processes write concurrently; a concurrently written range may be seen partly). Reads are
//! lock-free and validated afterwards like a seqlock: a block freed during the read reports
//! [`ShmError::Stale`]. Writes take the lock, so they never land in a block freed meanwhile.
//! [`ShmArena::as_ptr`] is the raw escape hatch, with the caller's promise documented.
//!
//! # Handles
//!
//! [`ShmHandle`] is 8 bytes: payload offset + generation. It resolves only if a block header
//! starts at that offset (the block-start bitmap says so, so user data can never pose as a
//! header), the block is in use, and the generation matches. Freeing bumps the generation
//! in the block header, so stale handles never resolve; a header created by a split takes a
//! generation above every one issued so far in the segment (a high-water mark that each bump
//! raises), so a header recreated where an older one lived cannot repeat that one's
//! generations. Generations are 32-bit: the guarantee holds until 2^32 of them were issued.

mod arena;
mod copy;
mod error;
mod handle;
mod lock;
mod options;
mod segment;
mod tlsf;

pub use arena::ShmArena;
pub use error::ShmError;
pub use handle::{ShmHandle, ShmPod};
pub use options::{ShmOptions, ShmStats};
