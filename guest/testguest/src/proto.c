/*
 * The request protocol: a small string builder, the JSON request parser
 * and the touch and read operations. Freestanding and hardware-free, so the Go tests
 * also compile it into a host program (testdata/hostproto.c) and check it
 * against the Go model. Included by main.c; needs ref.h first.
 */

/* A bounded string builder; output past cap is dropped. */
struct tg_sb {
	char *buf;
	unsigned long len, cap;
};

static void sb_ch(struct tg_sb *b, char c)
{
	if (b->len < b->cap)
		b->buf[b->len++] = c;
}

static void sb_s(struct tg_sb *b, const char *s)
{
	while (*s)
		sb_ch(b, *s++);
}

static void sb_u(struct tg_sb *b, tg_u64 v)
{
	char t[20];
	int n = 0;

	do {
		t[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		sb_ch(b, t[--n]);
}

static const char tg_hexdig[] = "0123456789abcdef";

/* Hex without leading zeros (at least one digit). */
static void sb_x(struct tg_sb *b, tg_u64 v)
{
	int i, started = 0;

	for (i = 60; i >= 0; i -= 4) {
		int d = (int)((v >> i) & 15);
		if (d || started || i == 0) {
			sb_ch(b, tg_hexdig[d]);
			started = 1;
		}
	}
}

/* Exactly 16 hex digits. */
static void sb_x16(struct tg_sb *b, tg_u64 v)
{
	int i;

	for (i = 60; i >= 0; i -= 4)
		sb_ch(b, tg_hexdig[(v >> i) & 15]);
}

enum { TG_OP_NONE, TG_OP_TOUCH, TG_OP_EXIT, TG_OP_READ };

/* Most pages one touch or read request may name (bounds its time). */
#define TG_MAX_COUNT (1ULL << 24)
#define TG_PAGE 4096ULL

struct tg_req {
	tg_u64 id, start, count, stride, bytes;
	int op, write;
};

/* What requests work on: the heap and the initrd (size 0: none). */
struct tg_mem {
	tg_u64 *heap;
	tg_u64 heap_pages;
	const unsigned char *initrd;
	tg_u64 initrd_size;
};

struct tg_parser {
	const unsigned char *p;
	unsigned long n, i;
};

static void tg_ws(struct tg_parser *ps)
{
	while (ps->i < ps->n && (ps->p[ps->i] == ' ' || ps->p[ps->i] == '\t' ||
				 ps->p[ps->i] == '\n' || ps->p[ps->i] == '\r'))
		ps->i++;
}

static int tg_peek(struct tg_parser *ps)
{
	return ps->i < ps->n ? ps->p[ps->i] : -1;
}

/* A string without escapes; sets *s and *len to its bytes. */
static const char *tg_str(struct tg_parser *ps, const unsigned char **s, unsigned long *len)
{
	unsigned long st;

	if (tg_peek(ps) != '"')
		return "bad json";
	st = ++ps->i;
	while (ps->i < ps->n && ps->p[ps->i] != '"') {
		if (ps->p[ps->i] == '\\' || ps->p[ps->i] < 0x20)
			return "bad json";
		ps->i++;
	}
	if (ps->i >= ps->n)
		return "bad json";
	*s = ps->p + st;
	*len = ps->i - st;
	ps->i++;
	return 0;
}

static int tg_eq(const unsigned char *s, unsigned long n, const char *lit)
{
	unsigned long i;

	for (i = 0; i < n; i++)
		if (!lit[i] || lit[i] != (char)s[i])
			return 0;
	return lit[n] == 0;
}

/* An unsigned decimal integer. */
static const char *tg_num(struct tg_parser *ps, tg_u64 *v)
{
	tg_u64 x = 0;
	unsigned long st = ps->i;
	int c;

	while ((c = tg_peek(ps)) >= '0' && c <= '9') {
		if (x > (~0ULL - (tg_u64)(c - '0')) / 10)
			return "bad number";
		x = x * 10 + (tg_u64)(c - '0');
		ps->i++;
	}
	c = tg_peek(ps);
	if (ps->i == st || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+')
		return "bad number";
	*v = x;
	return 0;
}

static const char *tg_bool(struct tg_parser *ps, int *v)
{
	if (ps->n - ps->i >= 4 && tg_eq(ps->p + ps->i, 4, "true")) {
		ps->i += 4;
		*v = 1;
		return 0;
	}
	if (ps->n - ps->i >= 5 && tg_eq(ps->p + ps->i, 5, "false")) {
		ps->i += 5;
		*v = 0;
		return 0;
	}
	return "bad json";
}

/*
 * Parses {"id":N,"op":"touch"|"read"|"exit","start":S,"count":C,
 * "stride":K,"write":true|false,"bytes":B} in any order. Defaults: start
 * 0, count 1, stride 1, write false, bytes 4096. Returns an error string, or 0; r->id is set as soon as the
 * id has been read, so an error response can carry it.
 */
static const char *tg_parse_req(const unsigned char *p, unsigned long n, struct tg_req *r)
{
	struct tg_parser ps = {p, n, 0};
	const char *err;
	int have_id = 0;

	r->id = 0;
	r->op = TG_OP_NONE;
	r->start = 0;
	r->count = 1;
	r->stride = 1;
	r->bytes = TG_PAGE;
	r->write = 0;

	tg_ws(&ps);
	if (tg_peek(&ps) != '{')
		return "bad json";
	ps.i++;
	tg_ws(&ps);
	if (tg_peek(&ps) == '}') {
		ps.i++;
	} else {
		for (;;) {
			const unsigned char *k, *s;
			unsigned long kl, sl;

			if ((err = tg_str(&ps, &k, &kl)))
				return err;
			tg_ws(&ps);
			if (tg_peek(&ps) != ':')
				return "bad json";
			ps.i++;
			tg_ws(&ps);
			if (tg_eq(k, kl, "id")) {
				err = tg_num(&ps, &r->id);
				have_id = !err;
			} else if (tg_eq(k, kl, "start")) {
				err = tg_num(&ps, &r->start);
			} else if (tg_eq(k, kl, "count")) {
				err = tg_num(&ps, &r->count);
			} else if (tg_eq(k, kl, "stride")) {
				err = tg_num(&ps, &r->stride);
			} else if (tg_eq(k, kl, "bytes")) {
				err = tg_num(&ps, &r->bytes);
			} else if (tg_eq(k, kl, "write")) {
				err = tg_bool(&ps, &r->write);
			} else if (tg_eq(k, kl, "op")) {
				err = tg_str(&ps, &s, &sl);
				if (!err) {
					if (tg_eq(s, sl, "touch"))
						r->op = TG_OP_TOUCH;
					else if (tg_eq(s, sl, "read"))
						r->op = TG_OP_READ;
					else if (tg_eq(s, sl, "exit"))
						r->op = TG_OP_EXIT;
					else
						err = "unknown op";
				}
			} else {
				err = "unknown key";
			}
			if (err)
				return err;
			tg_ws(&ps);
			if (tg_peek(&ps) == ',') {
				ps.i++;
				tg_ws(&ps);
				continue;
			}
			if (tg_peek(&ps) == '}') {
				ps.i++;
				break;
			}
			return "bad json";
		}
	}
	tg_ws(&ps);
	if (ps.i != ps.n)
		return "bad json";
	if (!have_id)
		return "missing id";
	if (r->op == TG_OP_NONE)
		return "missing op";
	return 0;
}

/*
 * Handles one request (the JSON bytes of one frame) and writes the JSON
 * response, unframed, to out. m->heap holds m->heap_pages pages of 512
 * words; m->initrd holds m->initrd_size bytes, read as pages of 4096 (the
 * last one zero-padded). touch hashes the first `bytes` bytes of heap
 * pages (after the write), read those of initrd pages. Returns 1 when the
 * request was a valid exit.
 */
static int tg_handle(const unsigned char *p, unsigned long n, const struct tg_mem *m,
		     struct tg_sb *out)
{
	struct tg_req r;
	const char *err = tg_parse_req(p, n, &r);
	tg_u64 h = TG_FNV_OFFSET, k, pg, pages = m->heap_pages;

	if (!err && r.op == TG_OP_READ) {
		if (!m->initrd_size)
			err = "no initrd";
		else if (r.write)
			err = "write not allowed";
		pages = (m->initrd_size + TG_PAGE - 1) / TG_PAGE;
	}
	if (!err && (r.op == TG_OP_TOUCH || r.op == TG_OP_READ)) {
		if (r.bytes == 0 || r.bytes > TG_PAGE)
			err = "bytes out of range";
		else if (r.count > TG_MAX_COUNT)
			err = "count too large";
		else if (r.count && (r.start >= pages ||
				     (r.stride && (r.count - 1) > (pages - 1 - r.start) / r.stride)))
			err = "page out of range";
	}
	sb_s(out, "{\"id\":");
	sb_u(out, r.id);
	if (err) {
		sb_s(out, ",\"error\":\"");
		sb_s(out, err);
		sb_s(out, "\"}");
		return 0;
	}
	if (r.op == TG_OP_EXIT) {
		sb_s(out, ",\"ok\":true}");
		return 1;
	}
	for (k = 0, pg = r.start; k < r.count; k++, pg += r.stride) {
		if (r.op == TG_OP_READ) {
			tg_u64 left = m->initrd_size - pg * TG_PAGE, b = r.bytes < left ? r.bytes : left;
			h = tg_fnv1a(h, m->initrd + pg * TG_PAGE, (unsigned long)b);
			for (; b < r.bytes; b++) /* past the end: zero bytes */
				h *= TG_FNV_PRIME;
		} else {
			tg_u64 *w = m->heap + pg * 512;
			if (r.write)
				w[0] += 1;
			h = tg_fnv1a(h, (const unsigned char *)w, (unsigned long)r.bytes);
		}
	}
	sb_s(out, ",\"pages\":");
	sb_u(out, r.count);
	sb_s(out, ",\"checksum\":\"");
	sb_x16(out, h);
	sb_s(out, "\"}");
	return 0;
}
