//! Instructions per `Store::insert` + `Store::remove` pair, per scoped iteration item and
//! per get (guarded and scoped), for `valgrind --tool=callgrind` (or CPU time under
//! `perf stat`).
//!
//! ```sh
//! cargo build --release --example store_instructions
//! for r in 100 200; do
//!   valgrind --tool=callgrind target/release/examples/store_instructions pairs $r
//! done   # (Collected at 200 − Collected at 100) / 102 400 = instructions per pair
//! for r in 10 20; do
//!   valgrind --tool=callgrind target/release/examples/store_instructions iter $r
//! done   # (Collected at 20 − Collected at 10) / 100 000 = instructions per item
//! for r in 100 200; do
//!   valgrind --tool=callgrind target/release/examples/store_instructions reinsert $r
//! done   # (Collected at 200 − Collected at 100) / 102 400 = instructions per pair
//! ```
//!
//! Arguments: `mode rounds` (defaults `pairs 200`). A `Store<u64>` holds 10 000
//! values; `pairs` then runs `rounds` × (1024 inserts, then 1024 removes), as
//! `benches/handles_mimalloc.rs` does, `iter` sums the store `rounds` times inside a
//! read scope, and `get` / `scoped` sum every value `rounds` times by handle (guarded
//! gets; gets in one read scope per round), and `reinsert` runs `rounds` × 1024 pairs
//! of (remove the value at a random position, insert a new one there), as
//! `benches/handles.rs`'s `handle_reinsert` does. Subtracting two runs removes the set-up and
//! tear-down. Not a benchmark (see `benches/handles.rs` for timings).

use std::hint::black_box;

use tidyheap::Store;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "pairs".into());
    let rounds: usize = args.next().map_or(200, |s| s.parse().expect("rounds"));
    let store = Store::<u64>::new();
    let mut live: Vec<_> = (0..10_000u64).map(|i| store.insert(i)).collect();
    let mut keys = Vec::with_capacity(1024);
    let mut sum = 0u64;
    match mode.as_str() {
        "iter" => {
            for _ in 0..rounds {
                let view = store.read();
                sum = view.iter().fold(sum, |s, (_, v)| s.wrapping_add(*v));
            }
        }
        "pairs" => {
            for _ in 0..rounds {
                for i in 0..1024u64 {
                    keys.push(store.insert(black_box(i)));
                }
                for k in keys.drain(..) {
                    sum = sum.wrapping_add(store.remove(k).expect("live handle"));
                }
            }
        }
        "get" => {
            for _ in 0..rounds {
                for &h in &live {
                    sum = sum.wrapping_add(*store.get(black_box(h)).expect("live handle"));
                }
            }
        }
        "scoped" => {
            for _ in 0..rounds {
                let view = store.read();
                for &h in &live {
                    sum = sum.wrapping_add(*view.get(black_box(h)).expect("live handle"));
                }
            }
        }
        "reinsert" => {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for _ in 0..rounds {
                for _ in 0..1024 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = &mut live[(x % 10_000) as usize];
                    sum = sum.wrapping_add(store.remove(*k).expect("live handle"));
                    *k = store.insert(black_box(x));
                }
            }
        }
        other => panic!("unknown mode {other:?}: pairs, iter, get, scoped or reinsert"),
    }
    println!("{sum}");
}
