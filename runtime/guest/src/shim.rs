//! The CPL0 shim: everything the guest runs at ring 0, in assembly.
//!
//! Under this machine's kvm_pvm every ring-0 instruction goes through KVM's emulator (~1 µs
//! each, no SSE: shared/research/pvm-guest-spike.md section 1), so ring 0 only sets the machine
//! up and then `iretq`s into the ring-3 Rust workload, which runs natively. The shim keeps one
//! invariant: after it, every guest-physical address below 4 GiB is identity-mapped with the U
//! bit set, so ring 3 can reach its memory and the MMIO console without page faults.
//!
//! What it builds (all inside the ELF image, no fixed addresses besides the link address):
//! * page tables: PML4 -> PDPT -> 4 PDs of 2 MiB pages (identity, P|RW|US|PS);
//! * GDT: kernel code 0x08, kernel data 0x10, user data 0x18, user code 0x20, then one TSS
//!   descriptor per CPU (0x28 + 16 * cpu, at most `abi::MAX_CPUS`);
//! * one TSS per CPU: rsp0 (used by the #GP gate from ring 3) and IST1 (every other gate), each
//!   on that CPU's own stacks (`shim_cpu_init`);
//! * IDT: 256 gates. Exceptions (0-31) are reported to the VMM through the console's fault
//!   registers and stop the vCPU, except a #GP raised by `hlt` at ring 3, which is the halt
//!   service (halt until an interrupt); vectors 32-255 are external interrupts, acknowledged
//!   at the local APIC and counted in `shim_irq_count`;
//! * masks both 8259 PICs (legacy interrupts must not reach a guest that does not expect them).
//!
//! Entry contract (set by the VMM, see colo-runtime's loader): 64-bit mode with the VMM's
//! boot page tables, rdi = command line address, rsi = memory size in bytes, rdx = command
//! line length. The shim passes the same three values to `colo_main` at ring 3.
//!
//! Application processors (`smp`): ring 3 copies the real-mode trampoline
//! (`shim_tramp_start..shim_tramp_end`) to `abi::AP_TRAMPOLINE`, fills the parameter block
//! `abi::AP_PARAMS` (page tables, 64-bit entry, CPU index, ring-3 stack) and sends INIT + SIPI.
//! The AP runs the trampoline in real mode at CS = 0x300, switches straight to long mode on
//! the shim's page tables (CR4.PAE, EFER.LME, CR0.PG|PE, far jump through the trampoline's
//! own GDT), jumps to `shim_ap_entry`, which loads the shared GDT and IDT and this CPU's TSS,
//! and `iretq`s to `colo_ap_main(cpu)` at ring 3. One AP starts at a time: the parameter block
//! is rewritten only after the previous AP reported itself online.

use crate::abi;

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    mov r12, rdi
    mov r13, rsi
    mov r14, rdx

    // Identity map 4 GiB with 2 MiB pages, U bit at every level.
    lea rdi, [rip + shim_pd]
    mov rax, 0x87
    mov ecx, 2048
shim_fill_pd:
    mov qword ptr [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz shim_fill_pd
    lea rdi, [rip + shim_pdpt]
    lea rax, [rip + shim_pd]
    or rax, 0x7
    mov ecx, 4
shim_fill_pdpt:
    mov qword ptr [rdi], rax
    add rax, 4096
    add rdi, 8
    dec ecx
    jnz shim_fill_pdpt
    lea rax, [rip + shim_pdpt]
    or rax, 0x7
    mov qword ptr [rip + shim_pml4], rax
    lea rax, [rip + shim_pml4]
    mov cr3, rax

    lgdt [rip + shim_gdtr]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    // Reload CS with a far return (REX.W retf).
    lea rax, [rip + shim_cs_reloaded]
    push 0x08
    push rax
    .byte 0x48, 0xcb
shim_cs_reloaded:
    xor ebx, ebx
    call shim_cpu_init

    // IDT: gate i -> shim_stubs + 16 * i.
    lea rsi, [rip + shim_stubs]
    lea rdi, [rip + shim_idt]
    xor ecx, ecx
shim_fill_idt:
    mov rax, rsi
    and eax, 0xffff
    mov rdx, rsi
    shr rdx, 16
    and edx, 0xffff
    shl rdx, 48
    or rax, rdx
    // selector 0x08, IST 1, present interrupt gate DPL 0
    mov rdx, 0x00008e0100080000
    cmp ecx, 13
    jne shim_gate_kind_done
    // #GP (the halt service): no IST (from ring 3 the CPU switches to TSS.rsp0)
    mov rdx, 0x00008e0000080000
shim_gate_kind_done:
    or rax, rdx
    mov qword ptr [rdi], rax
    mov rax, rsi
    shr rax, 32
    mov qword ptr [rdi + 8], rax
    add rsi, 16
    add rdi, 16
    inc ecx
    cmp ecx, 256
    jne shim_fill_idt
    lidt [rip + shim_idtr]

    // Mask both PICs (OCW1).
    mov al, 0xff
    out 0x21, al
    out 0xa1, al

    // Enter ring 3: ss, rsp, rflags (IF set), cs, rip.
    mov rdi, r12
    mov rsi, r13
    mov rdx, r14
    push 0x1b
    lea rax, [rip + __stack_top]
    push rax
    push 0x202
    push 0x23
    lea rax, [rip + shim_user_start]
    push rax
    iretq

    // Ring 3 trampoline: `call` keeps the SysV stack alignment for colo_main.
shim_user_start:
    call colo_main
    ud2

    // rbx = CPU index: fill that CPU's TSS (rsp0, IST1, no I/O bitmap) and its 16-byte
    // descriptor (limit 0x67, type 0x89 available) at GDT offset 0x28 + 16 * cpu, then load
    // TR with it. The GDT must already be loaded. Clobbers rax, rcx, rdx, r8, r9.
shim_cpu_init:
    mov rax, rbx
    shl rax, 7
    lea rdx, [rip + shim_tss]
    add rdx, rax
    lea rax, [rbx + 1]
    shl rax, {kstack_shift}
    lea rcx, [rip + shim_rsp0_stacks]
    add rcx, rax
    mov qword ptr [rdx + 4], rcx
    lea rcx, [rip + shim_ist1_stacks]
    add rcx, rax
    mov qword ptr [rdx + 36], rcx
    mov word ptr [rdx + 102], 104
    mov rax, rdx
    mov rcx, rax
    and ecx, 0xffffff
    shl rcx, 16
    or rcx, 0x67
    mov r8, 0x89
    shl r8, 40
    or rcx, r8
    mov r8, rax
    shr r8, 24
    and r8, 0xff
    shl r8, 56
    or rcx, r8
    lea r8, [rip + shim_gdt_tss]
    mov r9, rbx
    shl r9, 4
    add r8, r9
    mov qword ptr [r8], rcx
    shr rax, 32
    mov qword ptr [r8 + 8], rax
    mov rax, rbx
    shl rax, 4
    add rax, 0x28
    ltr ax
    ret

    // An AP arrives here from the trampoline: long mode, CPL0, the shim's page tables, the
    // trampoline's GDT, no stack yet.
    .global shim_ap_entry
shim_ap_entry:
    lgdt [rip + shim_gdtr]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rbx, qword ptr [{params} + {p_cpu}]
    lea rsp, [rip + shim_rsp0_stacks]
    lea rax, [rbx + 1]
    shl rax, {kstack_shift}
    add rsp, rax
    lea rax, [rip + shim_ap_cs_reloaded]
    push 0x08
    push rax
    .byte 0x48, 0xcb
shim_ap_cs_reloaded:
    call shim_cpu_init
    lidt [rip + shim_idtr]
    mov rdi, rbx
    push 0x1b
    push qword ptr [{params} + {p_stack}]
    push 0x202
    push 0x23
    lea rax, [rip + shim_ap_user_start]
    push rax
    iretq
shim_ap_user_start:
    call colo_ap_main
    ud2

    // The real-mode AP trampoline, never run here: ring 3 copies it to {tramp} (SIPI vector
    // {tramp} >> 12), so every address below is that copy's (CS = DS = {tramp} >> 4).
    .global shim_tramp_start
    .global shim_tramp_end
    .balign 16
shim_tramp_start:
    .code16
    cli
    mov ax, cs
    mov ds, ax
    // lgdt [shim_tramp_gdtr] (DS-relative disp16; the assembler takes no label difference).
    .byte 0x0f, 0x01, 0x16
    .word shim_tramp_gdtr - shim_tramp_start
    // CR4: PAE | OSFXSR | OSXMMEXCPT (ring 3 uses SSE).
    mov eax, 0x620
    mov cr4, eax
    mov eax, dword ptr [{params_off} + {p_cr3}]
    mov cr3, eax
    // EFER: LME | NXE.
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x900
    wrmsr
    // CR0: PG | NE | ET | MP | PE, caches on.
    mov eax, 0x80000033
    mov cr0, eax
    // ljmpl 0x08:(64-bit code below), 32-bit offset.
    .byte 0x66, 0xea
    .long {tramp} + (shim_tramp64 - shim_tramp_start)
    .word 0x08
    .code64
shim_tramp64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rax, qword ptr [{params} + {p_entry}]
    jmp rax
    .balign 8
shim_tramp_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
shim_tramp_gdt_end:
shim_tramp_gdtr:
    .word shim_tramp_gdt_end - shim_tramp_gdt - 1
    .long {tramp} + (shim_tramp_gdt - shim_tramp_start)
shim_tramp_end:

    // One 16-byte stub per vector: push a zero error code where the CPU pushes none, push the
    // vector, jump to the common handler.
    .balign 16
shim_stubs:
    .set shim_vec, 0
    .rept 256
    .balign 16
    .if (shim_vec == 8) || (shim_vec == 10) || (shim_vec == 11) || (shim_vec == 12) || (shim_vec == 13) || (shim_vec == 14) || (shim_vec == 17) || (shim_vec == 21) || (shim_vec == 29) || (shim_vec == 30)
    .else
    .byte 0x6a, 0x00
    .endif
    .byte 0x68
    .long shim_vec
    jmp shim_trap_common
    .set shim_vec, shim_vec + 1
    .endr

    // Stack here: [rsp] vector, [rsp+8] error code, [rsp+16] rip, cs, rflags, rsp, ss.
shim_trap_common:
    cmp qword ptr [rsp], 13
    je shim_gp
    cmp qword ptr [rsp], 32
    jae shim_irq
shim_fault:
    mov rdx, {console}
    mov rax, qword ptr [rsp + 16]
    mov qword ptr [rdx + {fault_rip}], rax
    mov rax, cr2
    mov qword ptr [rdx + {fault_addr}], rax
    mov rax, qword ptr [rsp + 8]
    shl rax, 8
    or rax, qword ptr [rsp]
    mov qword ptr [rdx + {fault}], rax
shim_dead:
    cli
    hlt
    jmp shim_dead

    // External interrupt: count it, EOI at the local APIC, return.
shim_irq:
    inc qword ptr [rip + shim_irq_count]
    push rax
    mov rax, {lapic_eoi}
    mov dword ptr [rax], 0
    pop rax
    add rsp, 16
    iretq

    // Halt service: ring 3 executes `hlt`, which faults (#GP, it is privileged) into here;
    // rdi = the interrupt count the caller last saw. `int n` cannot be used: kvm_pvm turns it
    // into #UD at ring 3 (measured). The #GP gate has no IST, so an interrupt taken during the
    // `hlt` below (IST1) cannot overwrite this frame. The gate cleared IF, so comparing here
    // and then `sti; hlt` (hlt runs in sti's interrupt shadow) cannot miss a wake-up.
shim_gp:
    test qword ptr [rsp + 24], 3
    jz shim_fault
    push rax
    mov rax, qword ptr [rsp + 24]
    cmp byte ptr [rax], 0xf4
    pop rax
    jne shim_fault
    add qword ptr [rsp + 16], 1
    cmp rdi, qword ptr [rip + shim_irq_count]
    jne shim_halt_done
    sti
    hlt
    cli
shim_halt_done:
    add rsp, 16
    iretq

    .section .data.shim, "aw"
    .balign 16
shim_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cff3000000ffff
    .quad 0x00affb000000ffff
shim_gdt_tss:
    .skip 16 * {max_cpus}
shim_gdt_end:
    .balign 16
    .word 0
shim_gdtr:
    .word shim_gdt_end - shim_gdt - 1
    .quad shim_gdt
    .balign 16
    .word 0
shim_idtr:
    .word 4095
    .quad shim_idt
    .global shim_irq_count
shim_irq_count:
    .quad 0

    .section .bss.shim, "aw", @nobits
    .balign 4096
    .global shim_pml4
shim_pml4:
    .skip 4096
shim_pdpt:
    .skip 4096
shim_pd:
    .skip 4 * 4096
shim_idt:
    .skip 4096
    // One 128-byte TSS per CPU (104 used), filled by shim_cpu_init.
shim_tss:
    .skip 128 * {max_cpus}
    .balign 16
shim_rsp0_stacks:
    .skip (1 << {kstack_shift}) * {max_cpus}
shim_ist1_stacks:
    .skip (1 << {kstack_shift}) * {max_cpus}
"#,
    console = const abi::CONSOLE_BASE,
    fault = const abi::REG_FAULT,
    fault_rip = const abi::REG_FAULT_RIP,
    fault_addr = const abi::REG_FAULT_ADDR,
    lapic_eoi = const abi::LAPIC_EOI,
    max_cpus = const abi::MAX_CPUS,
    kstack_shift = const KSTACK_SHIFT,
    tramp = const abi::AP_TRAMPOLINE,
    params = const abi::AP_PARAMS,
    params_off = const abi::AP_PARAMS - abi::AP_TRAMPOLINE,
    p_cr3 = const abi::AP_PARAM_CR3,
    p_entry = const abi::AP_PARAM_ENTRY,
    p_cpu = const abi::AP_PARAM_CPU,
    p_stack = const abi::AP_PARAM_STACK,
);

/// Each CPU's rsp0 and IST1 stacks are 2^13 = 8 KiB (the handlers push a few words).
const KSTACK_SHIFT: u32 = 13;
