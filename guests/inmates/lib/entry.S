/*
 * entry.S - PVH entry, switch to long mode, AP trampoline, exception stubs.
 *
 * Boot ABI (PVH, as QEMU's -kernel and the rtvisor VMM implement it):
 * 32-bit protected mode, paging off, flat CS/DS, interrupts off, ebx =
 * guest-physical address of struct hvm_start_info.  We trust nothing else:
 * we load our own GDT, build nothing at run time (the page tables below are
 * fully static, so there is no loop for a slow instruction emulator to grind
 * through), enable PAE + long mode and call C on our own stack.
 *
 * The APs come in through ap_trampoline (16-bit, copied to AP_TRAMPOLINE by
 * C code), jump straight to ap_start32 in this image and share the same
 * GDT, page tables and IDT.
 */

#define CS32		0x08
#define DS		0x10
#define CS64		0x18

#define MSR_EFER	0xc0000080
#define EFER_LME	0x100
#define CR0_PE		0x00000001
#define CR0_PG		0x80000000
#define CR4_PAE		0x20

#define BSP_STACK_SIZE	16384
#define AP_STACK_SIZE	8192
#define MAX_CPUS	64		/* keep in sync with inmate.h */

/*
 * PVH ELF note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY).  The
 * descriptor is 8 bytes like Linux's: QEMU reads a u64 from ELF64 notes,
 * 4-byte readers see the same (little-endian) 32-bit entry address.  The
 * section must stay 4-aligned: QEMU aligns the name to the segment's p_align.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f
	.long 4f - 3f
	.long 18
1:	.asciz "Xen"
2:	.balign 4
3:	.quad pvh_start32
4:	.balign 4

/* Load PAE page tables, set EFER.LME, turn on paging, far-jump to 64-bit. */
.macro ENTER_LONG_MODE target
	mov	%cr4, %eax
	or	$CR4_PAE, %eax
	mov	%eax, %cr4
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	$MSR_EFER, %ecx
	rdmsr
	or	$EFER_LME, %eax
	wrmsr
	mov	%cr0, %eax
	or	$(CR0_PG | CR0_PE), %eax
	mov	%eax, %cr0
	ljmp	$CS64, $\target
.endm

.macro LOAD_DATA_SEGMENTS
	mov	$DS, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	mov	%eax, %fs
	mov	%eax, %gs
.endm

	.section .text.boot, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	mov	%ebx, %esi		/* hvm_start_info; ebx is clobbered below */
	lgdt	gdt_desc		/* the PVH flat segments make this absolute load work */
	ljmp	$CS32, $1f
1:	LOAD_DATA_SEGMENTS
	/* Zero .bss ourselves: a reset may rerun us over dirty memory. */
	mov	$__bss_start, %edi
	mov	$__bss_end, %ecx
	sub	%edi, %ecx
	shr	$2, %ecx
	xor	%eax, %eax
	rep stosl
	mov	%esi, boot_ebx
	ENTER_LONG_MODE bsp_start64

	.globl ap_start32
ap_start32:
	LOAD_DATA_SEGMENTS
	ENTER_LONG_MODE ap_start64

	.code64
bsp_start64:
	LOAD_DATA_SEGMENTS
	mov	$bsp_stack_top, %rsp
	xor	%ebp, %ebp
	call	inmate_start		/* never returns */
	jmp	halt

ap_start64:
	LOAD_DATA_SEGMENTS
	/* Take a stack slot: lock xadd is atomic without cmpxchg16b. */
	mov	$1, %eax
	lock xadd %eax, ap_slots_used(%rip)
	cmp	$(MAX_CPUS - 1), %eax
	jae	halt			/* more APs than stacks: park this one */
	mov	%eax, %edi		/* slot number: argument to ap_start_c */
	lea	1(%rax), %rsp
	shl	$13, %rsp		/* * AP_STACK_SIZE (1 << 13) */
#if AP_STACK_SIZE != (1 << 13)
#error "fix the shift above"
#endif
	add	$ap_stacks, %rsp
	xor	%ebp, %ebp
	call	ap_start_c		/* never returns */

	.globl halt
halt:
	cli
	hlt
	jmp	halt

/*
 * Exception stubs, one per vector 0..31, each 16 bytes apart so C can find
 * stub i at exc_stubs + 16 * i.  They push a dummy error code where the CPU
 * does not, then the vector number, so the frame always has the same shape.
 */
.macro EXC_STUB vec
	.balign 16
	.if !((\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30))
	push	$0
	.endif
	push	$\vec
	jmp	exc_common
.endm

	.balign 16
	.globl exc_stubs
exc_stubs:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	EXC_STUB \v
	.endr

exc_common:
	push	%rax
	push	%rbx
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%rbp
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	mov	%rsp, %rdi		/* struct exc_frame * */
	call	exception_handler	/* never returns */
	jmp	halt

/*
 * AP trampoline: 16-bit real mode, copied to AP_TRAMPOLINE (SIPI vector
 * AP_TRAMPOLINE >> 12, so CS = 0x4000, IP = 0).  Position independent: it
 * only addresses its own data relative to its start (DS = CS) and then
 * far-jumps to ap_start32 inside this image, which is above 1 MiB, so it
 * needs protected mode first.
 */
	.code16
	.balign 16
	.globl ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	cld
	mov	%cs, %ax
	mov	%ax, %ds
	lgdtl	(ap_gdt_desc - ap_trampoline)
	mov	%cr0, %eax
	or	$CR0_PE, %eax
	mov	%eax, %cr0
	ljmpl	$CS32, $ap_start32
	.balign 8
ap_gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt
ap_trampoline_end:
	.code64

	.section .data, "aw"
	.balign 16
gdt:
	.quad	0
	.quad	0x00cf9b000000ffff	/* 0x08: 32-bit code, flat 4 GiB (accessed bit preset: */
	.quad	0x00cf93000000ffff	/* 0x10: data, flat 4 GiB      no descriptor writes later) */
	.quad	0x00af9b000000ffff	/* 0x18: 64-bit code */
gdt_end:
	.balign 8
	.skip	6			/* pad: puts the base field below on an 8-byte boundary */
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt			/* lgdt in 32-bit mode reads only the low 4 bytes */

/*
 * Identity map of the low 4 GiB with 2 MiB pages (PSE is architectural in
 * long mode; 1 GiB pages would need pdpe1gb, which a VMM may hide).  The
 * top GiB (0xc0000000-0xffffffff: MMIO marker 0xd0000000, IOAPIC, LAPIC)
 * is mapped PCD|PWT, i.e. uncached.
 */
#define PTE_P	0x01
#define PTE_RW	0x02
#define PTE_PWT	0x08
#define PTE_PCD	0x10
#define PTE_PS	0x80
	.section .data.pagetables, "aw"
	.balign 4096
pml4:
	.quad	pdpt + (PTE_P | PTE_RW)
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0000 + (PTE_P | PTE_RW)
	.quad	pd + 0x1000 + (PTE_P | PTE_RW)
	.quad	pd + 0x2000 + (PTE_P | PTE_RW)
	.quad	pd + 0x3000 + (PTE_P | PTE_RW)
	.fill	508, 8, 0
pd:
	i = 0
	.rept	2048
	.quad	(i << 21) | (PTE_P | PTE_RW | PTE_PS) | ((i >= 1536) & (PTE_PCD | PTE_PWT))
	i = i + 1
	.endr

	.section .bss, "aw", @nobits
	.balign 16
	.globl boot_ebx, ap_slots_used
boot_ebx:
	.long	0
ap_slots_used:
	.long	0
	.balign 16
bsp_stack:
	.skip	BSP_STACK_SIZE
bsp_stack_top:

	/* Not zeroed at boot (placed after __bss_end): only APs use them. */
	.section .stacks, "aw", @nobits
	.balign 16
ap_stacks:
	.skip	AP_STACK_SIZE * (MAX_CPUS - 1)

	.section .note.GNU-stack, "", @progbits
