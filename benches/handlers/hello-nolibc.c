/* The same handler without libc (x86-64 Linux): two system calls, so that
 * exec and process teardown are all that is left of the handler's cost. */
static long sys3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return r;
}

void _start(void)
{
    long ok = sys3(1 /* write */, 1, (long)"hello\n", 6) == 6;
    sys3(60 /* exit */, ok ? 0 : 1, 0, 0);
    for (;;) {
    }
}
