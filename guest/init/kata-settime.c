/*
 * kata-settime: sets the guest's wall clock from the host's, without the loss of a spawn.
 *
 *   kata-settime SEC NSEC MONO_NS
 *
 * SEC.NSEC is the host's wall clock as the agent received it (Kata's SetGuestDateTime), MONO_NS the guest's
 * CLOCK_MONOTONIC in nanoseconds at that moment (the agent reads it on receipt). The clock is set to
 * SEC.NSEC plus the monotonic time elapsed since then, so the time this process took to start (a tenth of a
 * second and more under TCG) is not lost, nor are the fractions of a second `date -s @SEC` drops.
 * Exit status: 0 set, 1 clock_settime failed, 2 usage.
 *
 * Built with `gcc -static -Os` by guest/build.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int parse(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < 0)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	int64_t sec, nsec, mono;
	if (argc != 4 || parse(argv[1], &sec) || parse(argv[2], &nsec) || parse(argv[3], &mono) || nsec >= 1000000000) {
		fprintf(stderr, "usage: kata-settime SEC NSEC MONO_NS\n");
		return 2;
	}
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t elapsed = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec - mono;
	if (elapsed < 0)
		elapsed = 0;
	int64_t total = nsec + elapsed;
	struct timespec t = { .tv_sec = sec + total / 1000000000, .tv_nsec = total % 1000000000 };
	if (clock_settime(CLOCK_REALTIME, &t) != 0) {
		fprintf(stderr, "kata-settime: clock_settime: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
