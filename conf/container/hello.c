/* The container's handler: says who it runs as, on its stdout (the
 * connection), so that a client can check the privilege drop.
 * Built with `gcc -static` by build-rootfs: it needs nothing at run time. */
#include <stdio.h>
#include <unistd.h>
#include <sys/types.h>

int main(void)
{
	gid_t groups[64];
	int n = getgroups(64, groups);

	printf("hello from uid=%u gid=%u groups=", (unsigned)getuid(), (unsigned)getgid());
	for (int i = 0; i < n; i++)
		printf("%s%u", i ? "," : "", (unsigned)groups[i]);
	printf(" pid=%d\n", (int)getpid());
	return 0;
}
