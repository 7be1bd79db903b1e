//! Instructions per compaction move, for `valgrind --tool=callgrind`.
//!
//! ```sh
//! cargo build --release --example move_instructions
//! for size in 64 1024; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.move.$size \
//!     --toggle-collect='move_instructions::compact_once*' \
//!     target/release/examples/move_instructions $size 8
//!   callgrind_annotate --inclusive=yes /tmp/cg.move.$size | head -40
//! done
//! ```
//!
//! A fresh `Heap` gets `MiB` MiB (argument 2, default 8) of `size`-byte handle blocks
//! (argument 1, default 64), every other one is freed, and one unlimited
//! `Heap::compact` pass (planning, the flush of cached blocks, the moves; no page goes
//! back to the OS) runs inside `compact_once`, which callgrind alone counts. The
//! example prints the blocks moved: `Collected` ÷ moved is the cost of a move, and
//! `callgrind_annotate --inclusive=yes` splits it by function. Not a benchmark (see
//! `benches/compaction.rs` for copy rates).

use std::hint::black_box;

use tidyheap::{Budget, CompactionReport, Heap};

/// One unlimited pass over `heap`, never inlined so callgrind can count exactly it.
#[inline(never)]
fn compact_once(heap: &Heap) -> CompactionReport {
    heap.compact(black_box(Budget::UNLIMITED))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(64, |s| s.parse().expect("block size"));
    let mib: usize = args.next().map_or(8, |s| s.parse().expect("MiB"));
    let heap = Heap::new();
    let n = (mib << 20) / size;
    let mut handles = Vec::with_capacity(n);
    let fill = vec![0x5Au8; size];
    for _ in 0..n {
        handles.push(heap.insert_bytes(&fill).expect("insert"));
    }
    for h in handles.iter().skip(1).step_by(2) {
        heap.free_handle(*h).expect("free");
    }
    let r = compact_once(&heap);
    assert!(r.complete, "one unlimited pass finishes its plan");
    for h in handles.iter().step_by(2) {
        assert_eq!(heap.read(*h).expect("live").as_ref(), &fill[..]);
    }
    println!(
        "size {size} B: {} blocks moved ({} B), {} spans emptied, {:?}",
        r.blocks_moved, r.bytes_moved, r.spans_emptied, r.elapsed
    );
}
