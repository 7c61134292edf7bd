/* The benchmark's static handler: writes "hello\n" to stdout and exits. */
#include <unistd.h>

int main(void)
{
    return write(1, "hello\n", 6) == 6 ? 0 : 1;
}
