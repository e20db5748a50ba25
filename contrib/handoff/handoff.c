// How a connection reaches the process that serves it, measured without the
// rest of pgcorral: one server process and its workers, each connection
// answered with one byte and closed, CLIENTS threads connecting in a loop.
//
//   fork    the server accepts and forks a child per connection (pgcorral
//           with worker_max_clients = 1)
//   accept  WORKERS pre-forked workers call accept(2) on the inherited
//           listener; the server does nothing
//   pass    the server accepts and sends the socket to an idle worker over a
//           SOCK_SEQPACKET pair (SCM_RIGHTS); the worker answers READY when
//           done (pgcorral's hand-off)
//
// Prints connections per second and the CPU time of the server and its
// workers per connection (getrusage of the reaped tree).
//
//   cc -O2 -o handoff contrib/handoff/handoff.c -lpthread
//   ./handoff MODE SECONDS CLIENTS WORKERS      e.g. ./handoff pass 5 10 12
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int port;
static volatile int stop_clients;
static long counts[256];

static void *client(void *arg) {
  long i = (long)arg;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
  while (!stop_clients) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (void *)&a, sizeof a) < 0) { close(s); continue; }
    char c;
    if (read(s, &c, 1) == 1) counts[i]++;
    close(s);
  }
  return NULL;
}

static volatile sig_atomic_t quit;
static long drops;
static void on_term(int s) { (void)s; quit = 1; }
static pid_t pids[256]; static int npids;
static void finish(void) {
  if (drops) fprintf(stderr, "server: %ld turns found no idle worker\n", drops);
  for (int i = 0; i < npids; i++) kill(pids[i], SIGKILL);
  while (wait(NULL) > 0) {}
  _exit(0);
}

static void serve(int fd) { char c = 'x'; write(fd, &c, 1); close(fd); }

static void send_fd(int ch, int fd) {
  char b = 'c';
  struct iovec iov = {&b, 1};
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  sendmsg(ch, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int recv_fd(int ch) {
  char b;
  struct iovec iov = {&b, 1};
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  ssize_t n = recvmsg(ch, &m, MSG_CMSG_CLOEXEC);
  if (n <= 0 || (m.msg_flags & MSG_CTRUNC)) return -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  if (!c) return -1;
  int fd; memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 5) { fprintf(stderr, "usage\n"); return 2; }
  const char *mode = argv[1];
  int secs = atoi(argv[2]), nclients = atoi(argv[3]), nworkers = atoi(argv[4]);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1; setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
  bind(l, (void *)&a, sizeof a); listen(l, 1024);
  socklen_t al = sizeof a; getsockname(l, (void *)&a, &al); port = ntohs(a.sin_port);

  pid_t server = fork();
  if (server == 0) {
    struct sigaction sa = {.sa_handler = on_term}; sigaction(SIGTERM, &sa, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ~0ull};
    int ch[256]; int idle[256]; int nidle = 0;
    if (!strcmp(mode, "accept")) {
      // Workers block in accept(2) on the listener they inherited (the
      // kernel wakes one per connection); the server only waits.
      for (int w = 0; w < nworkers; w++) {
        if ((pids[npids++] = fork()) == 0) {
          signal(SIGTERM, SIG_DFL);
          int f = fcntl(l, F_GETFL); fcntl(l, F_SETFL, f & ~O_NONBLOCK);
          for (;;) { int c = accept4(l, NULL, NULL, SOCK_CLOEXEC); if (c >= 0) serve(c); }
        }
      }
      while (!quit) pause();
      finish();
    }
    if (!strcmp(mode, "pass")) {
      for (int w = 0; w < nworkers; w++) {
        int sv[2]; socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv);
        if ((pids[npids++] = fork()) == 0) {
          signal(SIGTERM, SIG_DFL);
          close(sv[0]); close(l);
          for (;;) { int c = recv_fd(sv[1]); if (c < 0) _exit(0); serve(c); char r = 'R'; send(sv[1], &r, 1, MSG_NOSIGNAL); }
        }
        close(sv[1]); ch[w] = sv[0]; fcntl(ch[w], F_SETFL, O_NONBLOCK);
        struct epoll_event e = {.events = EPOLLIN, .data.u64 = w}; epoll_ctl(ep, EPOLL_CTL_ADD, ch[w], &e);
        idle[nidle++] = w;
      }
    }
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    signal(SIGCHLD, SIG_DFL);
    for (;;) {
      if (quit) finish();
      struct epoll_event evs[64];
      int n = epoll_wait(ep, evs, 64, 100);
      for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == ~0ull) {
          for (;;) {
            // Without an idle worker the client waits in the backlog for one
            // (the listener is level-triggered: it is seen again next turn).
            if (strcmp(mode, "fork") && nidle == 0) { drops++; break; }
            int c = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c < 0) break;
            if (!strcmp(mode, "fork")) {
              if (fork() == 0) { signal(SIGTERM, SIG_DFL); int f = fcntl(c, F_GETFL); fcntl(c, F_SETFL, f & ~O_NONBLOCK); serve(c); _exit(0); }
              close(c);
            } else if (nidle > 0) {
              send_fd(ch[idle[--nidle]], c); close(c);
            } else {
              close(c);
            }
          }
        } else {
          int w = evs[i].data.u64; char r;
          while (recv(ch[w], &r, 1, MSG_DONTWAIT) == 1) idle[nidle++] = w;
        }
      }
      while (waitpid(-1, NULL, WNOHANG) > 0) {}
    }
  }
  close(l);
  usleep(200000);
  pthread_t t[256];
  struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < nclients; i++) pthread_create(&t[i], NULL, client, (void *)i);
  sleep(secs);
  stop_clients = 1;
  for (int i = 0; i < nclients; i++) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  kill(server, SIGTERM);
  waitpid(server, NULL, 0);
  struct rusage ru; getrusage(RUSAGE_CHILDREN, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  double el = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  long total = 0; for (int i = 0; i < nclients; i++) total += counts[i];
  printf("%-6s clients=%d workers=%d conns=%ld rate=%.0f/s server_cpu=%.2fs cpu_per_conn=%.1fus\n",
         mode, nclients, nworkers, total, total / el, cpu, cpu * 1e6 / total);
  return 0;
}
