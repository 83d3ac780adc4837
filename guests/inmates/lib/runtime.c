/*
 * runtime.c - C entry, exit protocol, IDT and exception reporting, AP entry.
 */
#include "inmate.h"

const struct hvm_start_info *start_info;
void (*volatile ap_c_entry)(u32 slot);

void cmdline_init(const struct hvm_start_info *si);	/* cmdline.c */
void console_force_unlock(void);			/* console.c */

/* ---- exit protocol --------------------------------------------------- */

noreturn void inmate_exit(u8 code)
{
	outb(EXIT_PORT, code);
	/* Only reached if nothing listens on the exit port. */
	halt_forever();
}

noreturn void inmate_pass(void)
{
	printk("INMATE %s PASS\n", inmate_name);
	inmate_exit(EXIT_PASS);
}

noreturn void inmate_fail(u8 code, const char *fmt, ...)
{
	char reason[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintk(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	printk("INMATE %s FAIL: %s\n", inmate_name, reason);
	inmate_exit(code < 2 ? EXIT_FAIL : code);
}

/* ---- IDT: report exceptions instead of triple-faulting --------------- */

struct idt_gate {
	u16 off_lo;
	u16 selector;
	u8 ist;
	u8 type_attr;
	u16 off_mid;
	u32 off_hi;
	u32 reserved;
} __attribute__((packed));

/* 256 gates; the limit covers the 32 exception gates until an inmate adds a
 * vector (idt_set_gate), so a stray vector above them still raises #GP. */
static struct idt_gate idt[256] __attribute__((aligned(16)));
static struct {
	u16 pad[3];	/* aligns base on 8 bytes */
	u16 limit;
	u64 base;
} __attribute__((packed, aligned(8))) idt_desc;

extern const char exc_stubs[];	/* entry.S: 32 stubs, 16 bytes apart */

static void set_gate(unsigned int vec, u64 addr)
{
	idt[vec].off_lo = addr & 0xffff;
	idt[vec].selector = 0x18;		/* 64-bit code segment of entry.S */
	idt[vec].ist = 0;
	idt[vec].type_attr = 0x8e;		/* present, DPL 0, interrupt gate */
	idt[vec].off_mid = (addr >> 16) & 0xffff;
	idt[vec].off_hi = addr >> 32;
	idt[vec].reserved = 0;
}

static void idt_init(void)
{
	for (unsigned int i = 0; i < 32; i++)
		set_gate(i, (u64)(exc_stubs + 16 * i));
	idt_desc.limit = 32 * sizeof(idt[0]) - 1;
	idt_desc.base = (u64)idt;
}

void idt_set_gate(unsigned int vec, const void *handler)
{
	if (vec < 32 || vec >= ARRAY_SIZE(idt))
		inmate_fail(EXIT_FAIL, "idt_set_gate: vector %u is not 32-255", vec);
	set_gate(vec, (u64)handler);
	if ((vec + 1) * sizeof(idt[0]) - 1 > idt_desc.limit)
		idt_desc.limit = (vec + 1) * sizeof(idt[0]) - 1;
	idt_load();
}

void idt_load(void)
{
	__asm__ volatile("lidt %0" :: "m"(idt_desc.limit));
}

struct exc_frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;	/* pushed by the CPU */
};

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
	"#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
	"#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

void exception_handler(struct exc_frame *f);
void exception_handler(struct exc_frame *f)
{
	u64 cr2;

	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	/* The fault may have hit inside printk with the console lock held. */
	console_force_unlock();
	inmate_fail(EXIT_EXCEPTION, "exception %lu %s err=%#lx rip=%#lx rsp=%#lx cr2=%#lx apic=%u",
		    f->vector, exc_names[f->vector & 31], f->error, f->rip, f->rsp, cr2, lapic_id());
}

/* ---- C entry points ----------------------------------------------------- */

void inmate_start(void);
void inmate_start(void)
{
	/* First thing: tell the VMM we reached C in long mode. */
	mmio_write8(BOOT_MARKER_MMIO, BOOT_MARKER_VALUE);

	idt_init();
	idt_load();

	if (boot_ebx && ((const struct hvm_start_info *)(u64)boot_ebx)->magic == HVM_START_MAGIC)
		start_info = (const struct hvm_start_info *)(u64)boot_ebx;
	else
		printk("INMATE %s: warning: ebx=%#x is not a hvm_start_info, no cmdline\n",
		       inmate_name, boot_ebx);
	/* Copies the cmdline: the VMM's low memory is not ours to keep using. */
	cmdline_init(start_info);

	inmate_main();
	inmate_pass();
}

void ap_start_c(u32 slot);
void ap_start_c(u32 slot)
{
	void (*fn)(u32) = ap_c_entry;

	idt_load();
	if (fn)
		fn(slot);
	halt_forever();
}

void ap_trampoline_install(void)
{
	extern const char ap_trampoline[], ap_trampoline_end[];

	memcpy((void *)AP_TRAMPOLINE, ap_trampoline, ap_trampoline_end - ap_trampoline);
}
