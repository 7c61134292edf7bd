/* The yardstick: a minimal C spawner, no features at all.
 * epoll, accept4 until EAGAIN, vfork + dup2 + execve, SIGCHLD through a
 * signalfd, waitpid until nothing is left. Not a super-server: what the
 * kernel lets a spawner do on this machine, to read doorman's numbers by.
 *
 *     minspawn PORT PROGRAM     (binds 127.0.0.1:PORT)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: minspawn PORT PROGRAM\n");
        return 2;
    }
    char *args[] = {argv[2], NULL};
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
        perror("bind/listen");
        return 1;
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    ev.data.fd = sfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    sigset_t empty;
    sigemptyset(&empty);
    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == sfd) {
                struct signalfd_siginfo si[16];
                while (read(sfd, si, sizeof si) > 0) {
                }
                while (waitpid(-1, NULL, WNOHANG) > 0) {
                }
                continue;
            }
            int c;
            while ((c = accept4(l, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                pid_t p = vfork();
                if (p == 0) {
                    sigprocmask(SIG_SETMASK, &empty, NULL);
                    dup2(c, 0);
                    dup2(c, 1);
                    dup2(c, 2);
                    execve(args[0], args, environ);
                    _exit(127);
                }
                close(c);
            }
        }
    }
}
