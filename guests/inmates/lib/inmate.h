/*
 * inmate.h - the tiny runtime shared by all rtvisor test inmates.
 *
 * Inmates are freestanding 64-bit programs entered through the PVH boot ABI
 * (see lib/entry.S and docs/inmates.md).  Everything here avoids SSE/x87 and
 * any instruction the nested KVM's instruction emulator cannot handle
 * (cmpxchg16b, xsave, popcnt, clac/stac, int3, fwait).
 */
#ifndef INMATE_H
#define INMATE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define noreturn __attribute__((noreturn))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- fixed addresses and ports of the VMM contract ---------------------- */
#define COM1_PORT	0x3f8
#define EXIT_PORT	0xf4		/* 0 = power off/success, 1 = reboot, >= 2 = failure */
#define BOOT_MARKER_MMIO 0xd0000000UL	/* write 123 here early: the VMM's boot-time marker */
#define BOOT_MARKER_VALUE 123
#define PIOLOOP_PORT	0x404		/* unused by QEMU pc/microvm; the per-exit benchmark port */
#define LAPIC_BASE	0xfee00000UL
#define AP_TRAMPOLINE	0x40000UL	/* SIPI vector 0x40; must be < 1 MiB and 4 KiB aligned */
#define MAX_CPUS	64

/* failure codes written to EXIT_PORT (0 and 1 are reserved by the protocol) */
#define EXIT_PASS	0
#define EXIT_FAIL	2		/* the inmate's own check failed */
#define EXIT_EXCEPTION	3		/* unexpected CPU exception */
#define EXIT_BADBOOT	4		/* entry state did not match the PVH contract */

/* ---- port and MMIO access ------------------------------------------------ */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void mmio_write8(u64 addr, u8 v) { *(volatile u8 *)addr = v; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline void cpuid(u32 leaf, u32 subleaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(subleaf));
}

static inline noreturn void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- spinlock: xchg only (implicitly locked, no cmpxchg needed) ---------- */
typedef struct { volatile u32 v; } spinlock_t;
static inline void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE))
		while (l->v)
			cpu_relax();
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE); }

/* ---- PVH start info (xen/include/public/arch-x86/hvm/start_info.h) ------- */
#define HVM_START_MAGIC 0x336ec578
struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;	/* version >= 1 */
	u32 memmap_entries;	/* version >= 1 */
	u32 reserved;
};
struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

/* ---- provided by each inmate --------------------------------------------- */
extern const char inmate_name[];
/* Returning from inmate_main() means PASS; failures call inmate_fail(). */
void inmate_main(void);

/* ---- runtime (lib/runtime.c) -------------------------------------------- */
extern const struct hvm_start_info *start_info;	/* NULL if ebx had no valid magic */
extern u32 boot_ebx;				/* raw ebx at entry */
noreturn void inmate_exit(u8 code);		/* write EXIT_PORT, then cli; hlt forever */
noreturn void inmate_pass(void);
noreturn void inmate_fail(u8 code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void idt_load(void);				/* also used by APs */
/* An interrupt gate for vector 32-255 on the runtime's IDT, loaded on this CPU. */
void idt_set_gate(unsigned int vec, const void *handler);

/* ---- console (lib/console.c) -------------------------------------------- */
void console_putc(char c);
int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintk(const char *fmt, va_list ap);
int snprintk(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintk(char *buf, size_t size, const char *fmt, va_list ap);

/* ---- strings (lib/string.c) --------------------------------------------- */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* ---- command line (lib/cmdline.c) --------------------------------------- */
const char *cmdline(void);			/* never NULL; "" if none */
/* Copies the value of "key=value" into buf; returns false if key is absent. */
bool cmdline_get(const char *key, char *buf, size_t size);
u64 cmdline_get_u64(const char *key, u64 dflt);
bool parse_u64(const char *s, u64 *out);	/* decimal or 0x-hex, whole string */

/* ---- MP table (lib/mptable.c) ------------------------------------------- */
struct mp_info {
	u64 mpf_addr;		/* floating pointer structure */
	u64 table_addr;		/* configuration table */
	u32 lapic_addr;
	u32 nr_cpus;		/* enabled processor entries */
	u8 apic_ids[MAX_CPUS];
	u8 bsp_apic_id;		/* from the entry with the BSP flag, 0xff if none */
};
/* Returns NULL on success, else a static string saying what is wrong. */
const char *mptable_find(struct mp_info *info);

/* ---- LAPIC and timing (lib/lapic.c) ------------------------------------- */
#define LAPIC_ID	0x020
#define LAPIC_SVR	0x0f0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
static inline u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_enable(void);
bool lapic_send_ipi(u32 apic_id, u32 icr_lo);	/* false if delivery never completed */
extern u64 tsc_khz;
bool timer_init(void);				/* calibrate TSC with PIT channel 2 */
void udelay(u64 us);
static inline u64 tsc_to_us(u64 cycles) { return cycles * 1000 / tsc_khz; }

/* ---- statistics (lib/stats.c) ------------------------------------------ */
void sort_u64(u64 *a, u64 n);
/* Sorts the n samples (TSC cycles) and prints "<who>: <rounds> round trips:
 * median <ns> ns, p99 <ns> ns, max <ns> ns". */
void print_round_trips(const char *who, u64 rounds, u64 *cycles, u64 n);

/* ---- AP startup (lib/entry.S, lib/runtime.c) ---------------------------- */
/* Set before sending SIPIs; each AP calls it on its own stack, in long mode. */
extern void (*volatile ap_c_entry)(u32 slot);
extern volatile u32 ap_slots_used;		/* AP stacks handed out so far (lock xadd) */
void ap_trampoline_install(void);		/* copy the real-mode trampoline to AP_TRAMPOLINE */

#endif
