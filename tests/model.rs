//! Model test: random insert / get / get_mut / remove / compact sequences on a `Store`
//! against a `HashMap`, including stale-handle answers.

use std::collections::HashMap;

use proptest::prelude::*;
use tidyheap::{Budget, Handle, Store};

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>),
    Get(usize),
    Mutate(usize, u8),
    Remove(usize),
    Compact(usize),
    CompactFull,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Insert),
        3 => any::<usize>().prop_map(Op::Get),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::Mutate(i, b)),
        3 => any::<usize>().prop_map(Op::Remove),
        1 => (0usize..64).prop_map(Op::Compact),
        1 => Just(Op::CompactFull),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_hashmap(ops in proptest::collection::vec(op(), 1..200)) {
        let store: Store<Vec<u8>> = Store::new();
        let mut model: HashMap<Handle<Vec<u8>>, Vec<u8>> = HashMap::new();
        // Every handle ever issued, live or stale, in issue order.
        let mut issued: Vec<Handle<Vec<u8>>> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(v) => {
                    let h = store.insert(v.clone());
                    prop_assert!(!model.contains_key(&h), "a live handle was reissued");
                    model.insert(h, v);
                    issued.push(h);
                }
                Op::Get(i) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    let got = store.get(h).map(|r| r.clone());
                    prop_assert_eq!(got.as_ref(), model.get(&h));
                }
                Op::Mutate(i, b) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    match (store.get_mut(h), model.get_mut(&h)) {
                        (Some(mut v), Some(m)) => { v.push(b); m.push(b); }
                        (None, None) => {}
                        (got, want) => prop_assert!(false, "get_mut {:?} vs model {:?}", got.is_some(), want.is_some()),
                    }
                }
                Op::Remove(i) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    prop_assert_eq!(store.remove(h), model.remove(&h));
                }
                Op::Compact(n) => { store.heap().compact(Budget::blocks(n)); }
                Op::CompactFull => { store.heap().compact_full(); }
                _ => {}
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (h, v) in &model {
            prop_assert_eq!(&*store.get(*h).unwrap(), v);
        }
        let live: u64 = model.len() as u64 * core::mem::size_of::<Vec<u8>>() as u64;
        prop_assert_eq!(store.heap().stats().movable.live_bytes(), live);
    }
}
