/*
 * Host-side harness for the guest's request handling (src/proto.c): fills
 * a heap as the guest does, loads an initrd (optional), then answers
 * framed requests from stdin on stdout.
 * Usage: hostproto <seed> <pages> [<initrd file>]
 */
#include <stdio.h>
#include <stdlib.h>
#include "ref.h"
#include "proto.c"

int main(int argc, char **argv)
{
	tg_u64 seed, pages, i, j, *heap;
	static unsigned char req[1 << 16];
	static char resp[1024];
	struct tg_mem m = {0, 0, 0, 0};

	if (argc != 3 && argc != 4)
		return 2;
	if (argc == 4) {
		FILE *f = fopen(argv[3], "rb");
		unsigned char *b = 0;
		size_t n = 0, cap = 0, got;

		if (!f)
			return 1;
		do {
			if (n == cap && !(b = realloc(b, cap = 2 * cap + 4096)))
				return 1;
			got = fread(b + n, 1, cap - n, f);
			n += got;
		} while (got);
		fclose(f);
		m.initrd = b;
		m.initrd_size = n;
	}
	seed = strtoull(argv[1], 0, 0);
	pages = strtoull(argv[2], 0, 0);
	heap = malloc(pages * 4096 + 1);
	if (!heap)
		return 1;
	for (i = 0; i < pages; i++)
		for (j = 0; j < 512; j++)
			heap[i * 512 + j] = tg_heap_word(seed, i, j);
	m.heap = heap;
	m.heap_pages = pages;
	for (;;) {
		unsigned char h[4];
		unsigned long n;
		struct tg_sb out = {resp, 0, sizeof(resp)};

		if (fread(h, 1, 4, stdin) != 4)
			return 0;
		n = (unsigned long)h[0] << 24 | h[1] << 16 | h[2] << 8 | h[3];
		if (n > sizeof(req) || fread(req, 1, n, stdin) != n)
			return 1;
		tg_handle(req, n, &m, &out);
		h[0] = (unsigned char)(out.len >> 24);
		h[1] = (unsigned char)(out.len >> 16);
		h[2] = (unsigned char)(out.len >> 8);
		h[3] = (unsigned char)out.len;
		fwrite(h, 1, 4, stdout);
		fwrite(resp, 1, out.len, stdout);
		fflush(stdout);
	}
}
