//! TEMPORARY placeholder with the agreed API; replaced by the `central` branch.
#![allow(missing_docs, dead_code)]
use core::ptr::NonNull;
use std::sync::Mutex;

#[derive(Debug)]
pub(crate) struct Batch {
    head: NonNull<u8>,
    tail: NonNull<u8>,
    count: u32,
}
// SAFETY: placeholder: the batch owns its blocks.
unsafe impl Send for Batch {}
impl Batch {
    pub(crate) unsafe fn from_block(b: NonNull<u8>) -> Batch {
        // SAFETY: placeholder.
        unsafe { b.cast::<*mut u8>().write(core::ptr::null_mut()) };
        Batch {
            head: b,
            tail: b,
            count: 1,
        }
    }
    pub(crate) unsafe fn push(&mut self, b: NonNull<u8>) {
        // SAFETY: placeholder.
        unsafe { b.cast::<*mut u8>().write(self.head.as_ptr()) };
        self.head = b;
        self.count += 1;
    }
    pub(crate) fn len(&self) -> u32 {
        self.count
    }
    pub(crate) fn into_raw_parts(self) -> (NonNull<u8>, NonNull<u8>, u32) {
        (self.head, self.tail, self.count)
    }
}
#[derive(Debug)]
pub(crate) struct CentralFreeList {
    inner: Mutex<Vec<Batch>>,
    max: usize,
}
impl CentralFreeList {
    pub(crate) const fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Vec::new()),
            max,
        }
    }
    pub(crate) fn push(&self, b: Batch) -> Result<(), Batch> {
        let mut v = self.inner.lock().unwrap();
        if v.len() >= self.max {
            return Err(b);
        }
        v.push(b);
        Ok(())
    }
    pub(crate) fn pop(&self) -> Option<Batch> {
        self.inner.lock().unwrap().pop()
    }
    pub(crate) fn take_all(&self) -> Vec<Batch> {
        core::mem::take(&mut *self.inner.lock().unwrap())
    }
    pub(crate) fn batches(&self) -> usize {
        self.inner.lock().unwrap().len()
    }
}
