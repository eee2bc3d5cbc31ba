/*
 * snapfaas testguest: a freestanding x86_64 guest for testing the VMM.
 *
 * Entered in 64-bit mode by the Linux 64-bit boot protocol (start.S:
 * _start, RSI = boot_params) or, under QEMU, through the PVH entry
 * (start.S: pvh_start). Everything is polled: interrupts stay disabled.
 * Built with -mgeneral-regs-only: no SSE/x87/MMX may appear anywhere.
 */
#include "ref.h"

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long usize;

#include "proto.c"

#define barrier() __asm__ volatile("" ::: "memory")
#define ALIGNED(n) __attribute__((aligned(n)))
#define PACKED __attribute__((packed))

extern char _end[];

/* ---------------------------------------------------------------- libc */

void *memset(void *d, int c, usize n)
{
	void *r = d;

	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}

void *memcpy(void *d, const void *s, usize n)
{
	void *r = d;

	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return r;
}

void *memmove(void *d, const void *s, usize n)
{
	if ((usize)d <= (usize)s || (usize)d >= (usize)s + n)
		return memcpy(d, s, n);
	{
		u8 *dl = (u8 *)d + n - 1;
		const u8 *sl = (const u8 *)s + n - 1;
		__asm__ volatile("std; rep movsb; cld" : "+D"(dl), "+S"(sl), "+c"(n) : : "memory");
	}
	return d;
}

int memcmp(const void *a, const void *b, usize n)
{
	const volatile u8 *x = a, *y = b;
	usize i;

	for (i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

/* ----------------------------------------------------------- hardware */

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline u32 mmio_r32(u64 a)
{
	u32 v;

	__asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory");
	return v;
}

static inline void mmio_w32(u64 a, u32 v)
{
	__asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(a) : "memory");
}

/* Busy-waits about `cycles` TSC cycles. */
static void delay(u64 cycles)
{
	u64 t0 = rdtsc();

	while (rdtsc() - t0 < cycles)
		barrier();
}

#define COM1 0x3f8
#define PORT_SNAPSHOT 0x3f0
#define PORT_I8042 0x64

static void uart_putc(char c)
{
	u32 spin = 0;

	while (!(inb(COM1 + 5) & 0x20) && ++spin < 100000)
		;
	outb(COM1, (u8)c);
}

static void uart_write(const char *s, usize n)
{
	usize i;

	for (i = 0; i < n; i++)
		uart_putc(s[i]);
}

/* One console line at a time: line_begin, sb_*(&L, ...), line_end. */
static char linebuf[512];
static struct tg_sb L;

static void line_begin(void)
{
	L.buf = linebuf;
	L.len = 0;
	L.cap = sizeof(linebuf) - 1;
}

static void line_end(void)
{
	L.buf[L.len++] = '\n';
	uart_write(L.buf, L.len);
}

static void say(const char *s)
{
	line_begin();
	sb_s(&L, s);
	line_end();
}

struct dtr {
	u16 limit;
	u64 base;
} PACKED;

static void __attribute__((noreturn)) machine_reset(void)
{
	struct dtr zero = {0, 0};

	/* i8042 reset; if the VMM keeps running us, triple-fault. */
	outb(PORT_I8042, 0xfe);
	__asm__ volatile("lidt %0; int3" : : "m"(zero));
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) idle(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) fatal(const char *s)
{
	line_begin();
	sb_s(&L, "FATAL: ");
	sb_s(&L, s);
	line_end();
	machine_reset();
}

/* --------------------------------------------------- paging, IDT, faults */

/*
 * Identity map of the first 4 GiB with 2 MiB pages (the VMM's map covers
 * only 1 GiB; virtio-mmio lives at 3.25 GiB). Also used by the PVH stub.
 */
u64 pt_pml4[512] ALIGNED(4096);
u64 pt_pdpt[512] ALIGNED(4096);
u64 pt_pd[4 * 512] ALIGNED(4096);

static void setup_paging(void)
{
	u64 i;

	for (i = 0; i < 4 * 512; i++) {
		u64 a = i << 21;
		/* 0x83: present, writable, 2 MiB; PCD|PWT (0x18) from 3 GiB up. */
		pt_pd[i] = a | 0x83 | (a >= 0xc0000000ULL ? 0x18 : 0);
	}
	for (i = 0; i < 4; i++)
		pt_pdpt[i] = (u64)&pt_pd[i * 512] | 3;
	pt_pml4[0] = (u64)pt_pdpt | 3;
	__asm__ volatile("mov %0, %%cr3" : : "r"((u64)pt_pml4) : "memory");
}

struct idt_gate {
	u16 off0, sel;
	u8 ist, type;
	u16 off1;
	u32 off2, zero;
} PACKED;

static struct idt_gate idt[32] ALIGNED(16);
extern const u64 exc_stubs[32];

static void setup_idt(void)
{
	struct dtr d;
	u16 cs;
	int i;

	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (i = 0; i < 32; i++) {
		u64 h = exc_stubs[i];
		idt[i].off0 = (u16)h;
		idt[i].sel = cs;
		idt[i].ist = 0;
		idt[i].type = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
		idt[i].off1 = (u16)(h >> 16);
		idt[i].off2 = (u32)(h >> 32);
		idt[i].zero = 0;
	}
	d.limit = sizeof(idt) - 1;
	d.base = (u64)idt;
	__asm__ volatile("lidt %0" : : "m"(d));
}

/* Called by start.S with f = {vector, error, rip, cs, rflags, rsp, ss}. */
void __attribute__((used, noreturn)) exc_handler(u64 *f)
{
	char buf[128];
	struct tg_sb b = {buf, 0, sizeof(buf) - 1};

	sb_s(&b, "EXCEPTION vector=");
	sb_u(&b, f[0]);
	sb_s(&b, " rip=0x");
	sb_x(&b, f[2]);
	sb_s(&b, " err=0x");
	sb_x(&b, f[1]);
	if (f[0] == 14) {
		u64 cr2;
		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		sb_s(&b, " cr2=0x");
		sb_x(&b, cr2);
	}
	buf[b.len++] = '\n';
	uart_write(buf, b.len);
	machine_reset();
}

static void __attribute__((noinline)) fault_sse(void)
{
	/* The one deliberate SSE instruction: #UD (CR4.OSFXSR is clear). */
	__asm__ volatile("pxor %xmm0, %xmm0");
}

static void __attribute__((noinline)) fault_triple(void)
{
	struct dtr zero = {0, 0};

	__asm__ volatile("lidt %0; ud2" : : "m"(zero));
}

/* ------------------------------------------------------ boot information */

#define MAX_DEVS 16

enum { FAULT_NONE, FAULT_SSE, FAULT_TRIPLE };

struct mmio_dev {
	u64 size, base;
	u32 irq;
};

static struct {
	u64 heap_mb, seed, port;
	int fault;
	int ndev;
	struct mmio_dev dev[MAX_DEVS];
} cfg;

/* Memory map: RAM ranges from e820 (zero page) or the PVH memmap. */
#define MAX_RAM 32
static struct {
	u64 start, end;
} ram[MAX_RAM];
static int nram, have_map;

/* The initrd from boot_params (ramdisk_image/size); size 0: none. */
static u64 initrd_addr, initrd_size;

static void add_ram(u64 addr, u64 size, u32 type)
{
	have_map = 1;
	if (type == 1 && nram < MAX_RAM && size) {
		ram[nram].start = addr;
		ram[nram].end = addr + size;
		nram++;
	}
}

static int ram_covers(u64 start, u64 end)
{
	int i;

	if (!have_map)
		return 1;
	for (i = 0; i < nram; i++)
		if (ram[i].start <= start && end <= ram[i].end)
			return 1;
	return 0;
}

static u64 rd64(const u8 *p)
{
	u64 v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static u32 rd32(const u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static int is_space(int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int has_prefix(const char *s, usize n, const char *p, usize *pl)
{
	usize i;

	for (i = 0; p[i]; i++)
		if (i >= n || s[i] != p[i])
			return 0;
	*pl = i;
	return 1;
}

/*
 * Parses a number at s[*i..n): 0x-prefixed hex or decimal; with
 * suffixes, K/M/G multiply. Returns 0 on failure.
 */
static int parse_num(const char *s, usize n, usize *i, u64 *v, int suffixes)
{
	u64 x = 0;
	usize st;
	int hex = 0;

	if (*i + 1 < n && s[*i] == '0' && (s[*i + 1] == 'x' || s[*i + 1] == 'X')) {
		hex = 1;
		*i += 2;
	}
	st = *i;
	while (*i < n) {
		char c = s[*i];
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (hex && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (hex && c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			break;
		x = x * (hex ? 16 : 10) + (u64)d;
		(*i)++;
	}
	if (*i == st)
		return 0;
	if (suffixes && *i < n) {
		char c = s[*i];
		if (c == 'k' || c == 'K')
			x <<= 10, (*i)++;
		else if (c == 'm' || c == 'M')
			x <<= 20, (*i)++;
		else if (c == 'g' || c == 'G')
			x <<= 30, (*i)++;
	}
	*v = x;
	return 1;
}

/* A whole word `value` as a number. */
static int word_num(const char *s, usize n, u64 *v)
{
	usize i = 0;
	u64 x;

	if (!parse_num(s, n, &i, &x, 0) || i != n)
		return 0;
	*v = x;
	return 1;
}

/* virtio_mmio.device=<size>@<base>:<irq>[:<id>] */
static void parse_virtio(const char *s, usize n)
{
	struct mmio_dev d;
	usize i = 0;
	u64 irq;

	if (!parse_num(s, n, &i, &d.size, 1) || i >= n || s[i++] != '@')
		return;
	if (!parse_num(s, n, &i, &d.base, 1) || i >= n || s[i++] != ':')
		return;
	if (!parse_num(s, n, &i, &irq, 0))
		return;
	d.irq = (u32)irq;
	if (cfg.ndev < MAX_DEVS)
		cfg.dev[cfg.ndev++] = d;
}

static void parse_cmdline(const char *s, usize n)
{
	usize i = 0;

	cfg.heap_mb = 16;
	cfg.seed = 1;
	cfg.port = 1234;
	while (i < n) {
		usize st, wl, pl;
		const char *w;
		u64 v;

		while (i < n && is_space(s[i]))
			i++;
		st = i;
		while (i < n && !is_space(s[i]))
			i++;
		w = s + st;
		wl = i - st;
		if (!wl)
			continue;
		if (has_prefix(w, wl, "virtio_mmio.device=", &pl))
			parse_virtio(w + pl, wl - pl);
		else if (has_prefix(w, wl, "testguest.heap_mb=", &pl) && word_num(w + pl, wl - pl, &v))
			cfg.heap_mb = v;
		else if (has_prefix(w, wl, "testguest.seed=", &pl) && word_num(w + pl, wl - pl, &v))
			cfg.seed = v;
		else if (has_prefix(w, wl, "testguest.port=", &pl) && word_num(w + pl, wl - pl, &v))
			cfg.port = v;
		else if (has_prefix(w, wl, "testguest.fault=", &pl)) {
			if (tg_eq((const u8 *)w + pl, wl - pl, "sse"))
				cfg.fault = FAULT_SSE;
			else if (tg_eq((const u8 *)w + pl, wl - pl, "triple"))
				cfg.fault = FAULT_TRIPLE;
		}
	}
}

/* Reads the command line and memory map from boot_params or PVH info. */
static void read_boot_info(const u8 *bp, const u8 *pvh)
{
	const char *cl = 0;
	usize n = 0, max = 4096;
	int i;

	if (bp) {
		u64 ptr = rd32(bp + 0x228) | (u64)rd32(bp + 0x0c8) << 32;
		u32 size = rd32(bp + 0x238);
		int ne = bp[0x1e8];
		if (size)
			max = size;
		cl = (const char *)ptr;
		/* ramdisk_image/size, with ext_ramdisk_image/size as high halves. */
		initrd_addr = rd32(bp + 0x218) | (u64)rd32(bp + 0x0c0) << 32;
		initrd_size = rd32(bp + 0x21c) | (u64)rd32(bp + 0x0c4) << 32;
		for (i = 0; i < ne && i < 128; i++) {
			const u8 *e = bp + 0x2d0 + 20 * i;
			add_ram(rd64(e), rd64(e + 8), rd32(e + 16));
		}
	} else if (pvh && rd32(pvh) == 0x336ec578) {
		cl = (const char *)rd64(pvh + 24);
		if (rd32(pvh + 4) >= 1) {
			const u8 *m = (const u8 *)rd64(pvh + 40);
			u32 ne = rd32(pvh + 48);
			for (i = 0; m && (u32)i < ne && i < 128; i++)
				add_ram(rd64(m + 24 * i), rd64(m + 24 * i + 8), rd32(m + 24 * i + 16));
		}
	}
	if (cl)
		while (n < max && cl[n])
			n++;
	parse_cmdline(cl, n);
}

/* ------------------------------------------------------------ virtio */

#define VIRTIO_MAGIC 0x74726976
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS 0x060
#define R_INT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_DRIVER 0x090
#define R_QUEUE_DEVICE 0x0a0
#define R_CONFIG_GEN 0x0fc
#define R_CONFIG 0x100

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_FAILED 128

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define QMAX 64 /* largest queue size we use */

struct vq_desc {
	u64 addr;
	u32 len;
	u16 flags, next;
};

struct vq_avail {
	u16 flags, idx;
	u16 ring[QMAX];
};

struct vq_used {
	u16 flags, idx;
	struct {
		u32 id, len;
	} ring[QMAX];
};

/* One page each for the descriptor table, avail ring and used ring. */
struct vq_mem {
	struct vq_desc desc[QMAX] ALIGNED(4096);
	struct vq_avail avail ALIGNED(4096);
	struct vq_used used ALIGNED(4096);
};

struct vq {
	volatile struct vq_mem *m;
	u64 base;
	u32 sel;
	u16 num, next_avail, last_used;
};

#define NVQ 6
static struct vq_mem vq_mem[NVQ] ALIGNED(4096);
static int vq_mem_used;

static void vq_push(struct vq *q, u16 head)
{
	q->m->avail.ring[q->next_avail & (q->num - 1)] = head;
	barrier();
	q->next_avail++;
	q->m->avail.idx = q->next_avail;
	barrier();
}

static void vq_notify(struct vq *q)
{
	mmio_w32(q->base + R_QUEUE_NOTIFY, q->sel);
}

static int vq_used(struct vq *q, u32 *id, u32 *len)
{
	u16 i = q->m->used.idx;

	if (i == q->last_used)
		return 0;
	barrier();
	*id = q->m->used.ring[q->last_used & (q->num - 1)].id;
	*len = q->m->used.ring[q->last_used & (q->num - 1)].len;
	q->last_used++;
	return 1;
}

/* Acknowledges whatever interrupt the device raised (we poll). */
static void vdev_ack(u64 base)
{
	u32 s = mmio_r32(base + R_INT_STATUS);

	if (s)
		mmio_w32(base + R_INT_ACK, s);
}

/*
 * Resets and initializes the device at base up to (not including)
 * DRIVER_OK, with only VIRTIO_F_VERSION_1 negotiated, and sets up nq
 * queues. Returns an error string or 0.
 */
static const char *vdev_init(u64 base, struct vq *qs, int nq)
{
	u32 spin = 0;
	int i;

	mmio_w32(base + R_STATUS, 0);
	while (mmio_r32(base + R_STATUS) != 0)
		if (++spin > 1000000)
			return "reset did not complete";
	mmio_w32(base + R_STATUS, S_ACKNOWLEDGE);
	mmio_w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	mmio_w32(base + R_DEV_FEATURES_SEL, 1);
	if (!(mmio_r32(base + R_DEV_FEATURES) & 1)) {
		mmio_w32(base + R_STATUS, S_FAILED);
		return "no VIRTIO_F_VERSION_1";
	}
	mmio_w32(base + R_DRV_FEATURES_SEL, 0);
	mmio_w32(base + R_DRV_FEATURES, 0);
	mmio_w32(base + R_DRV_FEATURES_SEL, 1);
	mmio_w32(base + R_DRV_FEATURES, 1);
	mmio_w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	if (!(mmio_r32(base + R_STATUS) & S_FEATURES_OK)) {
		mmio_w32(base + R_STATUS, S_FAILED);
		return "FEATURES_OK not accepted";
	}
	for (i = 0; i < nq; i++) {
		struct vq *q = &qs[i];
		u32 max;
		u16 num = QMAX;
		u64 a;

		if (vq_mem_used >= NVQ)
			return "out of queue memory";
		mmio_w32(base + R_QUEUE_SEL, (u32)i);
		if (mmio_r32(base + R_QUEUE_READY)) {
			mmio_w32(base + R_STATUS, S_FAILED);
			return "queue already ready";
		}
		max = mmio_r32(base + R_QUEUE_NUM_MAX);
		if (!max) {
			mmio_w32(base + R_STATUS, S_FAILED);
			return "queue not available";
		}
		while (num > max)
			num >>= 1;
		q->m = &vq_mem[vq_mem_used++];
		q->base = base;
		q->sel = (u32)i;
		q->num = num;
		q->next_avail = 0;
		q->last_used = 0;
		mmio_w32(base + R_QUEUE_NUM, num);
		a = (u64)q->m->desc;
		mmio_w32(base + R_QUEUE_DESC, (u32)a);
		mmio_w32(base + R_QUEUE_DESC + 4, (u32)(a >> 32));
		a = (u64)&q->m->avail;
		mmio_w32(base + R_QUEUE_DRIVER, (u32)a);
		mmio_w32(base + R_QUEUE_DRIVER + 4, (u32)(a >> 32));
		a = (u64)&q->m->used;
		mmio_w32(base + R_QUEUE_DEVICE, (u32)a);
		mmio_w32(base + R_QUEUE_DEVICE + 4, (u32)(a >> 32));
		/* We poll: ask the device not to interrupt (a hint). */
		q->m->avail.flags = 1;
		mmio_w32(base + R_QUEUE_READY, 1);
	}
	return 0;
}

static void vdev_driver_ok(u64 base)
{
	mmio_w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/* A 64-bit config field, read as two 32-bit halves under ConfigGeneration. */
static u64 vdev_cfg64(u64 base, u32 off)
{
	u32 g, lo, hi;

	do {
		g = mmio_r32(base + R_CONFIG_GEN);
		lo = mmio_r32(base + R_CONFIG + off);
		hi = mmio_r32(base + R_CONFIG + off + 4);
	} while (g != mmio_r32(base + R_CONFIG_GEN));
	return (u64)hi << 32 | lo;
}

/* -------------------------------------------------------------- block */

#define BLK_T_IN 0
#define BLK_T_GET_ID 8
#define DISK_MAX 65536
#define TIMEOUT_IO (1ULL << 34) /* TSC cycles: several seconds */

static struct {
	u64 base, capacity;
	struct vq q;
} blk;

static struct {
	u32 type, reserved;
	u64 sector;
} blk_hdr ALIGNED(16);
static volatile u8 blk_status ALIGNED(16);
static u8 diskbuf[DISK_MAX + 8 + 512] ALIGNED(4096);

/* One synchronous request; returns the status byte or -1 on timeout. */
static int blk_req(u32 type, u64 sector, void *buf, u32 len)
{
	volatile struct vq_desc *d = blk.q.m->desc;
	u64 t0;
	u32 id, ulen;

	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	blk_status = 0xff;
	d[0].addr = (u64)&blk_hdr;
	d[0].len = sizeof(blk_hdr);
	d[0].flags = DESC_F_NEXT;
	d[0].next = 1;
	d[1].addr = (u64)buf;
	d[1].len = len;
	d[1].flags = DESC_F_WRITE | DESC_F_NEXT;
	d[1].next = 2;
	d[2].addr = (u64)&blk_status;
	d[2].len = 1;
	d[2].flags = DESC_F_WRITE;
	d[2].next = 0;
	vq_push(&blk.q, 0);
	vq_notify(&blk.q);
	t0 = rdtsc();
	while (!vq_used(&blk.q, &id, &ulen))
		if (rdtsc() - t0 > TIMEOUT_IO)
			return -1;
	vdev_ack(blk.base);
	barrier();
	return blk_status;
}

/* Reads len bytes (a multiple of 512) from sector into buf, 4 KiB a go. */
static int blk_read(u64 sector, u8 *buf, u32 len)
{
	while (len) {
		u32 n = len > 4096 ? 4096 : len;
		if (blk_req(BLK_T_IN, sector, buf, n) != 0)
			return -1;
		sector += n / 512;
		buf += n;
		len -= n;
	}
	return 0;
}

static void put_printable(struct tg_sb *b, const u8 *p, usize n)
{
	usize i;

	for (i = 0; i < n; i++)
		sb_ch(b, p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.');
}

#define DISK_LINE_MAX 200

static void disk_report(void)
{
	u32 len, total, i;
	u8 id[21];
	int st;

	blk.capacity = vdev_cfg64(blk.base, 0);
	if (blk.capacity == 0) {
		say("disk: empty");
	} else if (blk_read(0, diskbuf, 512)) {
		say("disk: read error");
	} else if (memcmp(diskbuf, "SFTG", 4) != 0) {
		say("disk: unformatted");
	} else {
		len = rd32(diskbuf + 4);
		if (len > DISK_MAX)
			len = DISK_MAX;
		total = (8 + len + 511) & ~511u;
		if (total / 512 > blk.capacity) {
			say("disk: truncated");
		} else if (total > 512 && blk_read(1, diskbuf + 512, total - 512)) {
			say("disk: read error");
		} else {
			for (i = 0; i < len && diskbuf[8 + i] != '\n'; i++)
				;
			line_begin();
			sb_s(&L, "disk: ");
			put_printable(&L, diskbuf + 8, i < DISK_LINE_MAX ? i : DISK_LINE_MAX);
			line_end();
			line_begin();
			sb_s(&L, "disk-checksum: ");
			sb_x16(&L, tg_fnv1a(TG_FNV_OFFSET, diskbuf + 8, len));
			line_end();
		}
	}
	/* GET_ID has no feature bit: a device without it answers UNSUPP. */
	memset(diskbuf, 0, 20);
	st = blk_req(BLK_T_GET_ID, 0, diskbuf, 20);
	if (st == 0) {
		for (i = 0; i < 20 && diskbuf[i]; i++)
			id[i] = diskbuf[i];
		line_begin();
		sb_s(&L, "disk-id: ");
		put_printable(&L, id, i);
		line_end();
	}
}

/* -------------------------------------------------------------- vsock */

#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
enum {
	OP_REQUEST = 1,
	OP_RESPONSE,
	OP_RST,
	OP_SHUTDOWN,
	OP_RW,
	OP_CREDIT_UPDATE,
	OP_CREDIT_REQUEST
};
#define HDR_SIZE 44
#define VS_BUF 4096
#define VS_NRX 32
#define VS_NEV 4
#define BUF_ALLOC 65536
#define MAX_REQ 16384
#define CONNECT_TRIES 20
#define TIMEOUT_CONNECT (1ULL << 32)
#define RETRY_PAUSE (1ULL << 30)
#define LOCAL_PORT_BASE 1024

struct vhdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} PACKED;

enum { VS_CLOSED, VS_CONNECTING, VS_CONNECTED };

static struct {
	u64 base, cid;
	struct vq rx, tx, ev;
	int state;
	u32 local_port, peer_port, next_port;
	u32 peer_buf_alloc, peer_fwd_cnt, tx_cnt, fwd_cnt, fwd_sent;
	int broken; /* the device stopped answering */
} vs;

static u8 rxbufs[VS_NRX][VS_BUF] ALIGNED(4096);
static u8 txbuf[VS_BUF] ALIGNED(4096);
static u8 evbufs[VS_NEV][8] ALIGNED(64);
/* Received stream bytes: sbuf[shead..slen) are not yet consumed. */
static u8 sbuf[BUF_ALLOC];
static u32 shead, slen;
static u8 respbuf[512];

static void rx_give(u16 i)
{
	volatile struct vq_desc *d = &vs.rx.m->desc[i];

	d->addr = (u64)rxbufs[i];
	d->len = VS_BUF;
	d->flags = DESC_F_WRITE;
	d->next = 0;
	vq_push(&vs.rx, i);
}

static void ev_give(u16 i)
{
	volatile struct vq_desc *d = &vs.ev.m->desc[i];

	d->addr = (u64)evbufs[i];
	d->len = sizeof(evbufs[i]);
	d->flags = DESC_F_WRITE;
	d->next = 0;
	vq_push(&vs.ev, i);
}

/* Sends one packet (header + n payload bytes) and waits for the device to take it. */
static int vs_send(u32 src_port, u32 dst_port, u16 op, u32 flags, const u8 *p, u32 n)
{
	struct vhdr *h = (struct vhdr *)txbuf;
	volatile struct vq_desc *d = vs.tx.m->desc;
	u64 t0;
	u32 id, len;

	if (vs.broken)
		return -1;
	h->src_cid = vs.cid;
	h->dst_cid = VSOCK_HOST_CID;
	h->src_port = src_port;
	h->dst_port = dst_port;
	h->len = n;
	h->type = VSOCK_TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = BUF_ALLOC;
	h->fwd_cnt = vs.fwd_cnt;
	if (n)
		memcpy(txbuf + HDR_SIZE, p, n);
	d[0].addr = (u64)txbuf;
	d[0].len = HDR_SIZE + n;
	d[0].flags = 0;
	d[0].next = 0;
	vq_push(&vs.tx, 0);
	vq_notify(&vs.tx);
	t0 = rdtsc();
	while (!vq_used(&vs.tx, &id, &len))
		if (rdtsc() - t0 > TIMEOUT_IO) {
			vs.broken = 1;
			say("vsock: tx timeout");
			return -1;
		}
	if (src_port == vs.local_port && dst_port == vs.peer_port)
		vs.fwd_sent = vs.fwd_cnt;
	return 0;
}

static int vs_ctrl(u16 op, u32 flags)
{
	return vs_send(vs.local_port, vs.peer_port, op, flags, 0, 0);
}

static void vs_close(const char *why)
{
	if (vs.state != VS_CLOSED && why) {
		line_begin();
		sb_s(&L, "vsock: ");
		sb_s(&L, why);
		line_end();
	}
	vs.state = VS_CLOSED;
}

static void vs_packet(const u8 *buf, u32 len)
{
	const struct vhdr *h = (const struct vhdr *)buf;
	u32 n;

	if (len < HDR_SIZE)
		return;
	n = h->len;
	if (n > len - HDR_SIZE)
		n = len - HDR_SIZE;
	if (h->type != VSOCK_TYPE_STREAM)
		return;
	if (vs.state == VS_CLOSED || h->dst_port != vs.local_port ||
	    h->src_port != vs.peer_port || h->src_cid != VSOCK_HOST_CID) {
		/* Not our connection: refuse (never answer a reset with one). */
		if (h->op != OP_RST)
			vs_send(h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		return;
	}
	vs.peer_buf_alloc = h->buf_alloc;
	vs.peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		if (vs.state == VS_CONNECTING)
			vs.state = VS_CONNECTED;
		break;
	case OP_RST:
		vs_close(vs.state == VS_CONNECTED ? "connection reset by host" : 0);
		break;
	case OP_SHUTDOWN:
		vs_ctrl(OP_RST, 0);
		vs_close("closed by host");
		break;
	case OP_RW:
		if (vs.state != VS_CONNECTED)
			break;
		if (n > sizeof(sbuf) - slen && shead) {
			memmove(sbuf, sbuf + shead, slen - shead);
			slen -= shead;
			shead = 0;
		}
		if (n > sizeof(sbuf) - slen) {
			/* The host overran the credit we gave it. */
			vs_ctrl(OP_RST, 0);
			vs_close("host exceeded its credit");
			break;
		}
		memcpy(sbuf + slen, buf + HDR_SIZE, n);
		slen += n;
		break;
	case OP_CREDIT_REQUEST:
		vs_ctrl(OP_CREDIT_UPDATE, 0);
		break;
	case OP_REQUEST:
		vs_send(h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		break;
	default: /* CREDIT_UPDATE: the credit was taken above */
		break;
	}
}

/* Processes every received packet and hands the buffers back. */
static void vs_poll(void)
{
	u32 id, len;
	int got = 0;

	while (vq_used(&vs.ev, &id, &len)) {
		if (id < vs.ev.num) {
			if (len >= 4 && rd32(evbufs[id]) == 0) {
				/*
				 * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (after a
				 * restore), first: packets queued with it
				 * belong to connections it ended.
				 */
				vs.cid = vdev_cfg64(vs.base, 0);
				vs_close("transport reset");
			}
			ev_give((u16)id);
		}
		got = 2;
	}
	while (vq_used(&vs.rx, &id, &len)) {
		if (id < vs.rx.num) {
			vs_packet(rxbufs[id], len);
			rx_give((u16)id);
		}
		got |= 1;
	}
	if (got & 1)
		vq_notify(&vs.rx);
	if (got & 2)
		vq_notify(&vs.ev);
	if (got)
		vdev_ack(vs.base);
}

static int vs_connect(void)
{
	int try;

	for (try = 0; try < CONNECT_TRIES; try++) {
		u64 t0;

		if (try)
			delay(RETRY_PAUSE);
		vs.local_port = LOCAL_PORT_BASE + vs.next_port++;
		vs.peer_port = (u32)cfg.port;
		vs.tx_cnt = vs.fwd_cnt = vs.fwd_sent = 0;
		vs.peer_buf_alloc = vs.peer_fwd_cnt = 0;
		slen = shead = 0;
		vs.state = VS_CONNECTING;
		line_begin();
		sb_s(&L, "vsock: cid ");
		sb_u(&L, vs.cid);
		sb_s(&L, " port ");
		sb_u(&L, vs.local_port);
		sb_s(&L, " connecting to 2:");
		sb_u(&L, vs.peer_port);
		line_end();
		if (vs_ctrl(OP_REQUEST, 0))
			return 0;
		t0 = rdtsc();
		while (vs.state == VS_CONNECTING && rdtsc() - t0 < TIMEOUT_CONNECT)
			vs_poll();
		if (vs.state == VS_CONNECTED) {
			say("vsock: connected");
			return 1;
		}
		if (vs.state == VS_CONNECTING)
			vs_ctrl(OP_RST, 0);
		vs.state = VS_CLOSED;
		if (vs.broken)
			return 0;
	}
	return 0;
}

/* What the host's last header lets us send. */
static u32 vs_credit(void)
{
	u32 used = vs.tx_cnt - vs.peer_fwd_cnt;

	return used < vs.peer_buf_alloc ? vs.peer_buf_alloc - used : 0;
}

/* Sends stream bytes within the host's credit. */
static int vs_write(const u8 *p, u32 n)
{
	while (n && vs.state == VS_CONNECTED) {
		u32 credit = vs_credit();
		u32 c = n;

		if (!credit) {
			/* Ask again now and then until the host makes room. */
			u64 t0 = rdtsc();
			if (vs_ctrl(OP_CREDIT_REQUEST, 0))
				return -1;
			while (vs.state == VS_CONNECTED && !vs_credit() && rdtsc() - t0 < TIMEOUT_CONNECT)
				vs_poll();
			continue;
		}
		if (c > credit)
			c = credit;
		if (c > VS_BUF - HDR_SIZE)
			c = VS_BUF - HDR_SIZE;
		if (vs_send(vs.local_port, vs.peer_port, OP_RW, 0, p, c))
			return -1;
		vs.tx_cnt += c;
		p += c;
		n -= c;
	}
	return vs.state == VS_CONNECTED ? 0 : -1;
}

static u64 *heap;
static u64 heap_pages;

/* Serves every complete request frame in sbuf. */
static void vs_serve(void)
{
	while (vs.state == VS_CONNECTED && slen - shead >= 4) {
		const u8 *f = sbuf + shead;
		u32 n = (u32)f[0] << 24 | (u32)f[1] << 16 | (u32)f[2] << 8 | f[3];
		struct tg_sb r = {(char *)respbuf + 4, 0, sizeof(respbuf) - 4};
		int exit = 0, toobig = n > MAX_REQ;

		if (toobig) {
			sb_s(&r, "{\"id\":0,\"error\":\"request too large\"}");
		} else if (slen - shead < 4 + n) {
			break;
		} else {
			struct tg_mem m = {heap, heap_pages, (const u8 *)initrd_addr, initrd_size};
			exit = tg_handle(f + 4, n, &m, &r);
			shead += 4 + n;
			vs.fwd_cnt += 4 + n;
		}
		/* f is dead from here: vs_write may compact sbuf. */
		respbuf[0] = (u8)(r.len >> 24);
		respbuf[1] = (u8)(r.len >> 16);
		respbuf[2] = (u8)(r.len >> 8);
		respbuf[3] = (u8)r.len;
		if (vs_write(respbuf, 4 + (u32)r.len))
			break;
		if (toobig) {
			vs_ctrl(OP_RST, 0);
			vs_close("request too large");
			break;
		}
		if (exit) {
			say("exit");
			machine_reset();
		}
	}
	if (vs.state != VS_CONNECTED || shead == slen)
		slen = shead = 0;
}

static void __attribute__((noreturn)) vsock_run(void)
{
	/* A restored VM may have a transport reset waiting: take it before
	 * connecting, not after. */
	vs_poll();
	vs.cid = vdev_cfg64(vs.base, 0);
	for (;;) {
		if (vs.state != VS_CONNECTED && !vs_connect()) {
			say("vsock: connect failed");
			idle();
		}
		vs_poll();
		vs_serve();
		if (vs.state == VS_CONNECTED && vs.fwd_cnt - vs.fwd_sent >= BUF_ALLOC / 2)
			vs_ctrl(OP_CREDIT_UPDATE, 0);
	}
}

/* -------------------------------------------------------------- main */

static const char *dev_kind(u32 id)
{
	switch (id) {
	case VIRTIO_ID_BLOCK:
		return "block";
	case VIRTIO_ID_VSOCK:
		return "vsock";
	case 0:
		return "empty";
	}
	return "unsupported";
}

static void probe(void)
{
	int i;

	for (i = 0; i < cfg.ndev; i++) {
		struct mmio_dev *d = &cfg.dev[i];
		const char *err = 0;
		u32 magic = 0, ver = 0, id = 0;

		line_begin();
		sb_s(&L, "virtio: 0x");
		sb_x(&L, d->base);
		sb_s(&L, " irq ");
		sb_u(&L, d->irq);
		sb_s(&L, ": ");
		if (d->base + 0x200 > 0x100000000ULL || (d->base & 3)) {
			err = "outside the 4 GiB identity map";
		} else {
			magic = mmio_r32(d->base + R_MAGIC);
			ver = mmio_r32(d->base + R_VERSION);
			id = mmio_r32(d->base + R_DEVICE_ID);
			if (magic != VIRTIO_MAGIC)
				err = "bad magic";
			else if (ver != 2)
				err = "not a modern (version 2) device";
		}
		if (err) {
			sb_s(&L, err);
			line_end();
			continue;
		}
		sb_s(&L, dev_kind(id));
		if (id == VIRTIO_ID_BLOCK && !blk.base) {
			err = vdev_init(d->base, &blk.q, 1);
			if (!err) {
				blk.base = d->base;
				vdev_driver_ok(d->base);
			}
		} else if (id == VIRTIO_ID_VSOCK && !vs.base) {
			struct vq qs[3];
			err = vdev_init(d->base, qs, 3);
			if (!err) {
				u16 k;
				vs.rx = qs[0];
				vs.tx = qs[1];
				vs.ev = qs[2];
				vs.base = d->base;
				for (k = 0; k < vs.rx.num && k < VS_NRX; k++)
					rx_give(k);
				for (k = 0; k < vs.ev.num && k < VS_NEV; k++)
					ev_give(k);
				vdev_driver_ok(d->base);
				vq_notify(&vs.rx);
				vq_notify(&vs.ev);
			}
		} else if (id == VIRTIO_ID_BLOCK || id == VIRTIO_ID_VSOCK) {
			sb_s(&L, " (ignored: not the first)");
		}
		if (err) {
			sb_s(&L, " (failed: ");
			sb_s(&L, err);
			sb_s(&L, ")");
		}
		line_end();
	}
}

/*
 * Reports the initrd; one outside RAM or the 4 GiB identity map is
 * reported and then ignored (read requests answer "no initrd").
 */
static void initrd_report(void)
{
	u64 end = initrd_addr + initrd_size;

	line_begin();
	sb_s(&L, "initrd: ");
	if (!initrd_size) {
		sb_s(&L, "none");
	} else {
		sb_u(&L, initrd_size);
		sb_s(&L, " bytes at 0x");
		sb_x(&L, initrd_addr);
		if (end < initrd_addr || end > 0x100000000ULL || !ram_covers(initrd_addr, end)) {
			sb_s(&L, " outside RAM (ignored)");
			initrd_addr = initrd_size = 0;
		}
	}
	line_end();
}

static void fill_heap(void)
{
	u64 base = ((u64)_end + 0x1fffff) & ~0x1fffffULL;
	u64 size = cfg.heap_mb << 20;
	u64 i, j, *w;
	const char *err = 0;

	if (cfg.heap_mb > 4096 || base + size > 0xc0000000ULL || !ram_covers(base, base + size))
		err = " does not fit in RAM";
	else if (initrd_size && size && base < initrd_addr + initrd_size && initrd_addr < base + size)
		err = " overlaps the initrd";
	if (err) {
		line_begin();
		sb_s(&L, "heap: ");
		sb_u(&L, cfg.heap_mb);
		sb_s(&L, " MiB at 0x");
		sb_x(&L, base);
		sb_s(&L, err);
		line_end();
		machine_reset();
	}
	heap = (u64 *)base;
	heap_pages = size >> 12;
	for (i = 0, w = heap; i < heap_pages; i++) {
		u64 b = cfg.seed ^ (i << 20);
		for (j = 0; j < 512; j++)
			*w++ = tg_splitmix64(b ^ j);
	}
	line_begin();
	sb_s(&L, "heap: ");
	sb_u(&L, heap_pages);
	sb_s(&L, " pages at 0x");
	sb_x(&L, base);
	line_end();
}

void __attribute__((used, noreturn)) kmain(const u8 *bp, const u8 *pvh)
{
	setup_idt();
	setup_paging();
	say("snapfaas testguest v1");
	read_boot_info(bp, pvh);

	line_begin();
	sb_s(&L, "config: heap_mb=");
	sb_u(&L, cfg.heap_mb);
	sb_s(&L, " seed=");
	sb_u(&L, cfg.seed);
	sb_s(&L, " port=");
	sb_u(&L, cfg.port);
	sb_s(&L, " fault=");
	sb_s(&L, cfg.fault == FAULT_SSE ? "sse" : cfg.fault == FAULT_TRIPLE ? "triple" : "none");
	sb_s(&L, " virtio=");
	sb_u(&L, (u64)cfg.ndev);
	sb_s(&L, " boot=");
	sb_s(&L, bp ? "linux64" : "pvh");
	line_end();

	if (cfg.fault == FAULT_SSE)
		fault_sse();
	else if (cfg.fault == FAULT_TRIPLE)
		fault_triple();
	if (cfg.fault)
		fatal("fault did not fault");

	probe();
	if (blk.base)
		disk_report();
	else
		say("disk: none");

	initrd_report();
	fill_heap();

	outb(PORT_SNAPSHOT, 123); /* boot done */
	outb(PORT_SNAPSHOT, 124); /* snapshot now; a restored VM resumes here */

	if (vs.base)
		vsock_run();
	say("ready");
	idle();
}
