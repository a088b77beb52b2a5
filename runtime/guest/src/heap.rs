//! The guest's global allocator: power-of-two size classes with free lists, carved from the
//! heap between the end of the user stack and the working set.
//!
//! Reusing freed blocks keeps the guest's set of written pages small and steady, which keeps
//! checkpoints cheap (every page re-dirtied costs a write-protect fault, pvm-guest-spike.md
//! rule 6). Invariant: a block of class k is 2^k bytes, aligned to 2^k, and is either on free
//! list k or owned by exactly one allocation. Only CPU 0 allocates (APs run on stacks CPU 0
//! allocated for them and never allocate, `smp`) and no Rust code runs in interrupt context,
//! so no locking is needed.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const MIN_CLASS: usize = 4; // 16 bytes: room for the free-list link
const MAX_CLASS: usize = 24; // 16 MiB
const CLASSES: usize = MAX_CLASS - MIN_CLASS + 1;

struct Inner {
    next: usize,
    end: usize,
    free: [usize; CLASSES],
}

pub struct Heap {
    inner: UnsafeCell<Inner>,
}

// SAFETY: only CPU 0 allocates (APs never do, see `smp`) and never from an interrupt handler,
// so the allocator is never entered concurrently.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap {
    inner: UnsafeCell::new(Inner {
        next: 0,
        end: 0,
        free: [0; CLASSES],
    }),
};

/// Gives the allocator its memory; called once before the first allocation.
pub fn init(start: usize, end: usize) {
    // SAFETY: called once at start-up, before any allocation (single-threaded guest).
    let inner = unsafe { &mut *HEAP.inner.get() };
    inner.next = start;
    inner.end = end;
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS);
    let class = size.next_power_of_two().trailing_zeros() as usize;
    (class <= MAX_CLASS).then_some(class)
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(&layout) else {
            return core::ptr::null_mut();
        };
        // SAFETY: no concurrent entry (see the Sync impl).
        let inner = unsafe { &mut *self.inner.get() };
        let slot = &mut inner.free[class - MIN_CLASS];
        if *slot != 0 {
            let block = *slot;
            // SAFETY: a block on the free list holds the address of the next free block.
            *slot = unsafe { *(block as *const usize) };
            return block as *mut u8;
        }
        let size = 1usize << class;
        let start = (inner.next + size - 1) & !(size - 1);
        match start.checked_add(size) {
            Some(end) if end <= inner.end => {
                inner.next = end;
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(&layout) else {
            return;
        };
        // SAFETY: no concurrent entry (see the Sync impl).
        let inner = unsafe { &mut *self.inner.get() };
        let slot = &mut inner.free[class - MIN_CLASS];
        // SAFETY: ptr was returned by alloc for this class, so it has room for one link.
        unsafe { *(ptr as *mut usize) = *slot };
        *slot = ptr as usize;
    }
}
