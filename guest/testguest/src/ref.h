/*
 * Reference functions shared by the guest and the host-side reference
 * programs the Go tests compile: the heap pattern (splitmix64) and the
 * FNV-1a 64 checksum. Keep this file free of anything that needs a libc.
 */
#ifndef TESTGUEST_REF_H
#define TESTGUEST_REF_H

typedef unsigned long long tg_u64;

#define TG_FNV_OFFSET 0xcbf29ce484222325ULL
#define TG_FNV_PRIME 0x00000100000001b3ULL

static inline tg_u64 tg_splitmix64(tg_u64 x)
{
	tg_u64 z;

	x += 0x9e3779b97f4a7c15ULL;
	z = x;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Word `word` (0..511) of heap page `page` before any write-touch. */
static inline tg_u64 tg_heap_word(tg_u64 seed, tg_u64 page, tg_u64 word)
{
	return tg_splitmix64(seed ^ (page << 20) ^ word);
}

/*
 * FNV-1a 64 over n bytes, starting from h (TG_FNV_OFFSET for a fresh
 * hash). Unrolled by eight: under an instruction emulator every
 * instruction counts, and this is the guest's hottest loop.
 */
static inline tg_u64 tg_fnv1a(tg_u64 h, const unsigned char *p, unsigned long n)
{
	const tg_u64 prime = TG_FNV_PRIME;
	unsigned long i = 0;

	for (; i + 8 <= n; i += 8) {
		h = (h ^ p[i]) * prime;
		h = (h ^ p[i + 1]) * prime;
		h = (h ^ p[i + 2]) * prime;
		h = (h ^ p[i + 3]) * prime;
		h = (h ^ p[i + 4]) * prime;
		h = (h ^ p[i + 5]) * prime;
		h = (h ^ p[i + 6]) * prime;
		h = (h ^ p[i + 7]) * prime;
	}
	for (; i < n; i++)
		h = (h ^ p[i]) * prime;
	return h;
}

#endif
