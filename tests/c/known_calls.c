// A program whose behaviour is known exactly, for custom metrics (uprobe / uretprobe):
// `known_calls N USEC` waits for a line on stdin, then calls `taskscope_known_work` exactly N
// times, each spinning USEC microseconds by CLOCK_MONOTONIC, and prints the time the calls
// took by its own clock (ns, summed over the calls). It then waits for stdin to close.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

// noinline and used: the symbol must exist and every call must go through it.
__attribute__((noinline, used)) long long taskscope_known_work(long long usec) {
    long long start = now_ns(), spins = 0;
    while (now_ns() - start < usec * 1000) {
        spins++;
    }
    return spins;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: known_calls N USEC\n");
        return 2;
    }
    long n = atol(argv[1]);
    long long usec = atoll(argv[2]), total = 0, spins = 0;
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) {
        return 1;
    }
    for (long i = 0; i < n; i++) {
        long long start = now_ns();
        spins += taskscope_known_work(usec);
        total += now_ns() - start;
    }
    printf("%lld %lld\n", total, spins);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
