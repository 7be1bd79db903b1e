//! The report's workload and mimalloc-bench rows, from the code `benches/workloads.rs`
//! and `benches/mimalloc_bench.rs` share with it (`benches/common/`).

use super::*;

/// Median timed outcome per peer (runs alternate between peers), plus one probed run
/// per peer for the memory figures.
fn measure(w: &dyn Workload, runs: usize) -> Vec<(&'static str, Outcome)> {
    let mut out: Vec<(&'static str, Outcome)> =
        w.peers().iter().map(|&p| (p, w.run(p, true))).collect();
    let mut timed = vec![Vec::with_capacity(runs); out.len()];
    for _ in 0..runs {
        for (i, &p) in w.peers().iter().enumerate() {
            timed[i].push(w.run(p, false));
        }
    }
    // The median run by time gives the time and the compaction figures.
    for ((_, o), t) in out.iter_mut().zip(&mut timed) {
        t.sort_by_key(|r| r.elapsed);
        let mid = t[t.len() / 2];
        o.elapsed = mid.elapsed;
        o.compaction = mid.compaction;
    }
    out
}

/// Issue 11's honest game metric, printed under the table: frames/s beside what
/// compaction cost per frame and per MiB it reclaimed, for the peers that report it.
fn compaction_notes(t: &mut Table, label: &str, res: &[(&'static str, Outcome)]) {
    // Gross: bytes the passes released, counting memory released, reused and released
    // again each time. Net: what the run ends up holding less than the same heap without
    // compaction (end RSS rise of the probed runs, less lazily freed pages), the memory
    // compaction actually saves.
    let end_rss = |name: &str| {
        res.iter()
            .find(|(p, _)| *p == name)
            .map(|(_, o)| o.held_rss())
    };
    let baseline = end_rss("tidyheap_nocompact");
    t.notes.push(String::new());
    t.notes.push(format!(
        "Compaction cost, {label} (median timed run; released = gross bytes the passes \
         handed back, saved = end RSS rise, less lazily freed pages, below the no-compaction run's; \
         mimalloc_bumpalo reclaims nothing):"
    ));
    t.notes.push(String::new());
    t.notes.push(
        "| peer | frames/s | compaction µs/frame | compaction CPU µs/frame | released | \
         CPU per MiB released | saved at the end | CPU per MiB saved |"
            .to_string(),
    );
    t.notes
        .push("|---|---|---|---|---|---|---|---|".to_string());
    let dash = || "—".to_string();
    for (peer, o) in res {
        let Some(c) = o.compaction else { continue };
        if !["tidyheap", "tidyheap_nocompact", "mimalloc_bumpalo"].contains(peer) {
            continue;
        }
        let saved = baseline
            .filter(|_| !c.cpu.is_zero())
            .map(|b| b.saturating_sub(o.held_rss()));
        t.notes.push(format!(
            "| {peer} | {} | {:.1} µs | {:.1} µs | {:.1} MiB | {} | {} | {} |",
            fmt_value(o.ops_per_sec(), Unit::PerSec),
            c.us_per_op(o.ops),
            c.cpu.as_secs_f64() * 1e6 / o.ops.max(1) as f64,
            c.reclaimed as f64 / MIB as f64,
            c.cpu_ms_per_mib()
                .map_or_else(dash, |ms| format!("{ms:.2} ms")),
            saved.map_or_else(dash, |b| format!("{:.1} MiB", b as f64 / MIB as f64)),
            saved.filter(|&b| b > 0).map_or_else(dash, |b| format!(
                "{:.2} ms",
                c.cpu.as_secs_f64() * 1e3 / (b as f64 / MIB as f64)
            )),
        ));
    }
}

pub(super) fn workload_rows(t: &mut Table) {
    let mib = |b: usize| b as f64 / MIB as f64;
    for w in common::workloads(Mode::Report) {
        let runs = match w.name() {
            "ml_tensors" | "game_engine" => 5,
            _ => 9,
        };
        let res = measure(w.as_ref(), runs);
        let get = |name: &str| {
            res.iter()
                .find(|(p, _)| *p == name)
                .map(|(_, o)| *o)
                .expect("peer measured")
        };
        // (tidyheap variant, label suffix, peers it is compared with)
        let pairs: &[(&str, &str, &[&str])] = match w.name() {
            "web_server" => &[
                (
                    "tidyheap_frame",
                    " (frame arena)",
                    &["bumpalo", "mimalloc", "system"],
                ),
                ("tidyheap", " (malloc-style)", &["mimalloc", "system"]),
            ],
            "game_engine" => &[
                (
                    "tidyheap",
                    "",
                    &[
                        "tidyheap_nocompact",
                        "mimalloc_bumpalo",
                        "mimalloc",
                        "system",
                    ],
                ),
                (
                    "tidyheap_nocompact",
                    " (no compaction)",
                    &["mimalloc_bumpalo"],
                ),
            ],
            _ => &[("tidyheap", "", &["mimalloc", "system"])],
        };
        let unit = if w.name() == "game_engine" {
            compaction_notes(t, &format!("{} {}", w.name(), w.size()), &res);
            "frames/s"
        } else {
            "ops/s"
        };
        for &(tidy_name, suffix, others) in pairs {
            let tidy = get(tidy_name);
            let label = format!("{} {}{suffix}", w.name(), w.size());
            for &other in others {
                let o = get(other);
                t.add(
                    other,
                    &label,
                    unit,
                    Better::Higher,
                    Unit::PerSec,
                    tidy.ops_per_sec(),
                    o.ops_per_sec(),
                );
                t.add(
                    other,
                    &label,
                    "peak RSS rise",
                    Better::Lower,
                    Unit::Mib,
                    mib(tidy.peak_rss),
                    mib(o.peak_rss),
                );
                if let (Some(a), Some(b)) = (tidy.rss_frag(), o.rss_frag()) {
                    t.add(
                        other,
                        &label,
                        "end frag (1 − live/RSS rise)",
                        Better::Lower,
                        Unit::Frag,
                        a,
                        b,
                    );
                }
                if let (Some(a), Some(b)) = (tidy.held_frag(), o.held_frag()) {
                    t.add(
                        other,
                        &label,
                        "end frag (1 − live/(RSS rise − LazyFree))",
                        Better::Lower,
                        Unit::Frag,
                        a,
                        b,
                    );
                }
            }
        }
    }
}

pub(super) fn mbench_rows(t: &mut Table) {
    let scale = mbench::Scale::new(Mode::Report);
    for pattern in mbench::NAMES {
        // ops/s per peer and thread count: medians of alternating runs.
        let mut fs: Vec<Box<dyn FnMut() -> f64>> = Vec::new();
        for peer in peers::NAMES {
            for threads in [1, 2] {
                fs.push(Box::new(move || {
                    mbench::run(pattern, peer, threads, &scale).ops_per_sec()
                }));
            }
        }
        let mut refs: Vec<&mut dyn FnMut() -> f64> = fs
            .iter_mut()
            .map(|f| &mut **f as &mut dyn FnMut() -> f64)
            .collect();
        let med = interleaved(5, &mut refs);
        let [t1, t2] = [med[0], med[1]];
        for (i, peer) in peers::NAMES.iter().enumerate().skip(1) {
            let (p1, p2) = (med[2 * i], med[2 * i + 1]);
            t.add(
                peer,
                pattern,
                "ops/s, 1 thread",
                Better::Higher,
                Unit::PerSec,
                t1,
                p1,
            );
            t.add(
                peer,
                pattern,
                "ops/s, 2 threads",
                Better::Higher,
                Unit::PerSec,
                t2,
                p2,
            );
            t.add(
                peer,
                pattern,
                "scaling 2T ÷ 1T",
                Better::Higher,
                Unit::Ratio,
                t2 / t1,
                p2 / p1,
            );
        }
    }
}
