//! The game workload's compaction cost as one ratio (issue 11): runs
//! `game_engine/tidyheap` and `game_engine/tidyheap_nocompact` (`benches/common/game.rs`,
//! 2000 frames each) in turn, `runs` times, and prints each pair's frames/s ratio by wall
//! time and by thread CPU time (steadier on a loaded machine), their medians, and one
//! probed run of each (RSS, fragmentation, compaction µs per frame and CPU per MiB).
//!
//! ```text
//! cargo run --release --example game_ratio -- [runs]     (default 7)
//! ```

#[allow(dead_code)] // each binary including the shared module uses part of it
#[path = "../benches/common/mod.rs"]
mod common;

use common::measure::thread_cpu_time;
use common::{Mode, Workload, median};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
        .max(1);
    let game = common::game::Game::new(Mode::Report);
    // Warm both heaps (timed runs reuse them, as the benchmark does).
    for peer in ["tidyheap", "tidyheap_nocompact"] {
        let _ = game.run(peer, false);
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = thread_cpu_time();
        let with = game.run("tidyheap", false);
        let t1 = thread_cpu_time();
        let without = game.run("tidyheap_nocompact", false);
        let t2 = thread_cpu_time();
        let frames = with.ops as f64;
        let (c_with, c_without) = (
            (t1 - t0).as_secs_f64() * 1e6 / frames,
            (t2 - t1).as_secs_f64() * 1e6 / frames,
        );
        wall.push(with.ops_per_sec() / without.ops_per_sec());
        cpu.push(c_without / c_with);
        println!(
            "with ÷ without compaction: wall {:.3}, CPU {:.3} ({c_with:.1} / {c_without:.1} µs \
             CPU per frame; compaction {:.1} µs per frame)",
            wall[wall.len() - 1],
            cpu[cpu.len() - 1],
            with.compaction.map_or(0.0, |c| c.us_per_op(with.ops)),
        );
    }
    println!(
        "median of {runs}: wall {:.3}, CPU {:.3}",
        median(&mut wall),
        median(&mut cpu)
    );
    for peer in ["tidyheap", "tidyheap_nocompact"] {
        println!("{peer}: {}", game.run(peer, true).describe());
    }
}
