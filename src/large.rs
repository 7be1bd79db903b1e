//! TEMPORARY placeholder with the agreed API; replaced by the `large` branch.
#![allow(missing_docs, dead_code)]
use crate::{AllocError, os};
use core::alloc::Layout;
use core::ptr::NonNull;

#[derive(Debug, Clone, Copy, Default)]
pub struct LargeConfig {}
impl LargeConfig {
    pub const DEFAULT: LargeConfig = LargeConfig {};
}
#[derive(Debug)]
pub struct LargeAllocator {
    config: LargeConfig,
}
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LargeStats {
    pub live_blocks: u64,
    pub live_bytes: u64,
}
impl LargeAllocator {
    pub const fn new(config: LargeConfig) -> Self {
        Self { config }
    }
    pub fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        Ok(os::reserve(layout.size().max(1), layout.align())?)
    }
    pub unsafe fn dealloc(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: placeholder
        unsafe { os::release(ptr, layout.size().max(1)) }
    }
    pub unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let new = self.alloc(
            Layout::from_size_align(new_size, old.align())
                .map_err(|_| AllocError::TooLarge { size: new_size })?,
        )?;
        // SAFETY: placeholder
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), old.size().min(new_size));
            self.dealloc(ptr, old);
        }
        Ok(new)
    }
    pub fn usable_size(&self, layout: Layout) -> usize {
        os::round_up(layout.size().max(1), os::PAGE_SIZE).unwrap_or(usize::MAX)
    }
    pub fn stats(&self) -> LargeStats {
        LargeStats::default()
    }
}
