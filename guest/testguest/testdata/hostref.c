/*
 * Host-side reference for the Go tests: prints heap words and page
 * checksums computed with the guest's own ref.h.
 *   w <seed> <page> <word> <value>
 *   p <seed> <page> <writes> <fnv of the page's bytes>
 */
#include <stdio.h>
#include "ref.h"

static const tg_u64 seeds[] = {0, 1, 7, 0xdeadbeefcafef00dULL, ~0ULL};
static const tg_u64 pages[] = {0, 1, 2, 511, 4095, 262143, 1ULL << 40};
static const tg_u64 words[] = {0, 1, 255, 511};

int main(void)
{
	unsigned i, j, k;

	for (i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
		for (j = 0; j < sizeof(pages) / sizeof(pages[0]); j++) {
			unsigned char b[4096];
			tg_u64 w;
			int writes;

			for (k = 0; k < sizeof(words) / sizeof(words[0]); k++)
				printf("w %llu %llu %llu %llu\n", seeds[i], pages[j], words[k],
				       tg_heap_word(seeds[i], pages[j], words[k]));
			for (writes = 0; writes < 3; writes++) {
				for (k = 0; k < 512; k++) {
					unsigned s;
					w = tg_heap_word(seeds[i], pages[j], k);
					if (k == 0)
						w += (tg_u64)writes;
					for (s = 0; s < 8; s++)
						b[8 * k + s] = (unsigned char)(w >> (8 * s));
				}
				printf("p %llu %llu %d %016llx\n", seeds[i], pages[j], writes,
				       tg_fnv1a(TG_FNV_OFFSET, b, sizeof(b)));
			}
		}
	return 0;
}
