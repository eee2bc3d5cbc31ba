/*
 * Entry points of the testguest.
 *
 * _start (the ELF entry): Linux 64-bit boot protocol. Long mode is on,
 * RSI = physical address of boot_params, interrupts disabled; no stack is
 * assumed.
 *
 * pvh_start (XEN_ELFNOTE_PHYS32_ENTRY, used by QEMU -kernel): 32-bit
 * protected mode, paging off, EBX = physical address of hvm_start_info.
 * It builds the identity map, enters long mode and joins the 64-bit path.
 */

	.section .note.pvh, "a", @note
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 8			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad pvh_start
	.balign 4

	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	cli
	cld
	movq %rsi, %r12			/* boot_params */
	xorl %r13d, %r13d		/* no PVH start info */
	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	jmp 1f

pvh_start64:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	xorl %r12d, %r12d
	movl %edi, %r13d		/* hvm_start_info */
1:
	leaq stack_top(%rip), %rsp
	xorl %ebp, %ebp
	movq %r12, %rdi
	movq %r13, %rsi
	call kmain
2:
	cli
	hlt
	jmp 2b

/* Exception stubs: push a zero error code where the CPU pushes none. */
	.section .text
	.irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
exc\n:
	pushq $0
	pushq $\n
	jmp exc_common
	.endr
	.irp n, 8,10,11,12,13,14,17,21,29,30
exc\n:
	pushq $\n
	jmp exc_common
	.endr
exc_common:
	movq %rsp, %rdi			/* {vector, error, rip, cs, rflags, rsp, ss} */
	andq $-16, %rsp
	call exc_handler
3:
	cli
	hlt
	jmp 3b

	.section .rodata
	.balign 8
	.globl exc_stubs
exc_stubs:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad exc\n
	.endr

	/* The boot GDT, as the VMM's: 0x08 64-bit code, 0x10 data. */
	.balign 8
gdt:
	.quad 0
	.quad 0x00af9b000000ffff
	.quad 0x00cf93000000ffff
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.section .text32, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	movl %ebx, %edi
	lgdt gdt_desc
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	/* pml4[0] -> pdpt; pdpt[0..3] -> pd; pd: 2048 2 MiB pages = 4 GiB. */
	movl $pt_pdpt + 3, pt_pml4
	movl $0, pt_pml4 + 4
	xorl %ecx, %ecx
4:
	movl %ecx, %eax
	shll $12, %eax
	addl $pt_pd + 3, %eax
	movl %eax, pt_pdpt(, %ecx, 8)
	movl $0, pt_pdpt + 4(, %ecx, 8)
	incl %ecx
	cmpl $4, %ecx
	jb 4b
	xorl %ecx, %ecx
5:
	movl %ecx, %eax
	shll $21, %eax
	orl $0x83, %eax
	movl %eax, pt_pd(, %ecx, 8)
	movl $0, pt_pd + 4(, %ecx, 8)
	incl %ecx
	cmpl $2048, %ecx
	jb 5b
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $pt_pml4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx		/* EFER */
	rdmsr
	orl $0x100, %eax		/* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* PG | PE */
	movl %eax, %cr0
	ljmp $0x08, $pvh_start64

	.section .bss
	.balign 16
stack:
	.skip 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
