//! Runtime pieces a `no_std` binary on the host target must provide itself: the mem*
//! functions (the precompiled compiler_builtins of linux-gnu does not export them), the
//! unwinding personality stub the precompiled liballoc references, and the panic handler.
//!
//! The mem* functions are `rep movsb`/`rep stosb` in inline assembly so LLVM cannot turn
//! their loops back into calls to themselves.

use core::fmt::Write;

/// # Safety
/// Standard C `memcpy` contract: `n` bytes readable at `src`, writable at `dst`, no overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the C memcpy contract.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _,
            inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard C `memmove` contract: `n` bytes readable at `src`, writable at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst is below src or the ranges do not overlap.
        unsafe { memcpy(dst, src, n) }
    } else {
        // Overlapping with dst above src: copy backwards with the direction flag set.
        // SAFETY: the caller guarantees the ranges; DF is restored before returning.
        unsafe {
            core::arch::asm!("std", "rep movsb", "cld",
                inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _, options(nostack));
        }
        dst
    }
}

/// # Safety
/// Standard C `memset` contract: `n` bytes writable at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the C memset contract.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _,
            in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard C `memcmp` contract: `n` bytes readable at both pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes at a and b.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// Standard C `bcmp` contract: `n` bytes readable at both pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled liballoc (built with panic=unwind); never called because
/// the guest is built with panic=abort.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the precompiled liballoc's landing pads (`format`); as above, never reached
/// with panic=abort. Stops the VM with the panic exit code should it ever be.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::console::exit(crate::console::EXIT_PANIC)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut line = crate::console::Line::new();
    let _ = writeln!(line, "colo-guest: PANIC: {info}");
    line.flush();
    crate::console::exit(crate::console::EXIT_PANIC)
}
