//! The `profiling` feature under `#[global_allocator]`: the profiler allocates (its
//! report's strings, the symbol resolver's caches) through the allocator it profiles,
//! so this binary checks that it neither recurses, deadlocks nor records its own
//! blocks, while the test harness and several threads allocate through it too.

use std::collections::HashMap;

use tidyheap::Global;

#[global_allocator]
static A: Global = Global::new();

fn leak_at(addr: usize) -> Option<tidyheap::profile::Leak> {
    A.leaks().into_iter().find(|l| l.address == Some(addr))
}

#[inline(never)]
fn boxed_block() -> Box<[u8; 200]> {
    Box::new([3; 200])
}

#[test]
fn a_box_is_recorded_with_its_site_until_dropped() {
    let b = boxed_block();
    let addr = b.as_ptr().addr();
    let leak = leak_at(addr).expect("the box is live and recorded");
    assert_eq!(leak.size, 200);
    assert!(leak.site.mentions("boxed_block"), "{}", leak.site);
    assert!(
        leak.site
            .mentions("a_box_is_recorded_with_its_site_until_dropped")
    );
    drop(b);
    assert!(leak_at(addr).is_none(), "a freed block leaves the table");
}

#[test]
fn a_growing_vec_keeps_one_record_at_its_current_address() {
    let mut v: Vec<u64> = Vec::with_capacity(4);
    let first = v.as_ptr().addr();
    for i in 0..5000 {
        v.push(i);
    }
    assert_ne!(v.as_ptr().addr(), first, "the buffer moved");
    assert!(
        leak_at(first).is_none_or(|l| l.size != 32),
        "the old address has no record of ours"
    );
    let leak = leak_at(v.as_ptr().addr()).expect("the record moved with the buffer");
    assert_eq!(leak.size, v.capacity() * 8);
    assert!(
        leak.site
            .mentions("a_growing_vec_keeps_one_record_at_its_current_address")
    );
}

#[test]
fn reports_are_not_recorded_as_allocations() {
    let report = A.profile_report(5);
    let leaks = A.leaks();
    // Neither the report's own memory nor the resolver's caches are recorded (what the
    // caller makes of a report, like `to_string`, is the caller's and is recorded).
    let mut blocks = vec![report.leaks.as_ptr().addr(), leaks.as_ptr().addr()];
    for s in report.top.by_count.iter().chain(&report.top.by_bytes) {
        blocks.push(s.site.frames().as_ptr().addr());
        for f in s.site.frames() {
            blocks.push(f.symbols.as_ptr().addr());
            blocks.extend(
                f.symbols
                    .iter()
                    .filter_map(|s| Some(s.name.as_ref()?.as_ptr().addr())),
            );
        }
    }
    assert!(blocks.len() > 5, "the report has sites");
    let recorded: std::collections::HashSet<usize> =
        A.leaks().iter().filter_map(|l| l.address).collect();
    for block in blocks {
        assert!(
            !recorded.contains(&block),
            "{block:#x} is the profiler's own"
        );
    }
    let text = report.to_string();
    assert!(text.starts_with("tidyheap profile"));
    assert!(
        leaks
            .iter()
            .all(|l| !l.site.mentions("tidyheap::profile::")),
        "no block allocated by the profiler itself"
    );
}

#[test]
fn threads_allocate_concurrently_through_the_profiler() {
    let kept: Vec<(usize, usize)> = std::thread::scope(|s| {
        let ts: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    let mut m: HashMap<u64, Vec<u8>> = HashMap::new();
                    for i in 0..2000u64 {
                        m.insert(i % 97, vec![t as u8; (i as usize * 7) % 3000]);
                        if i % 50 == 0 {
                            // Reports from several threads at once.
                            let _ = A.top_sites(2);
                        }
                    }
                    let keep = vec![t as u8; 1000 + t];
                    let r = (keep.as_ptr().addr(), keep.len());
                    std::mem::forget(keep);
                    r
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (addr, len) in kept {
        let leak = leak_at(addr).expect("a forgotten vector is a leak");
        assert_eq!(leak.size, len);
        assert!(
            leak.site
                .mentions("threads_allocate_concurrently_through_the_profiler")
        );
    }
}

#[test]
fn top_sites_see_this_threads_hot_loop() {
    #[inline(never)]
    fn hot(i: u32) -> Box<u32> {
        Box::new(i)
    }
    for i in 0..20_000 {
        drop(std::hint::black_box(hot(i)));
    }
    let top = A.top_sites(3);
    assert!(
        top.by_count[0].site.mentions("hot"),
        "{} {:?}",
        top.by_count[0].allocations,
        top.by_count[0].site.symbol_names().collect::<Vec<_>>()
    );
    assert!(top.by_count[0].allocations >= 20_000);
}

#[inline(never)]
fn leak_a_box_for_the_exit_report() {
    Box::leak(Box::new([9u8; 300]));
}

/// The child side of `global_reports_at_exit`: leaks a box, exits normally.
#[test]
fn global_exit_child() {
    if std::env::var_os("PROFILING_GLOBAL_CHILD").is_some() {
        leak_a_box_for_the_exit_report();
    }
}

#[test]
fn global_reports_at_exit_when_asked() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "global_exit_child", "--test-threads=1"])
        .env("PROFILING_GLOBAL_CHILD", "1")
        .env("TIDYHEAP_PROFILE_REPORT", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "the child exits normally: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = stderr
        .split_once("tidyheap profile")
        .expect("a report at exit")
        .1;
    assert!(report.contains("300 B in 1 block"), "{stderr}");
    assert!(
        report.contains("leak_a_box_for_the_exit_report"),
        "{stderr}"
    );
}
