/*
 * Ember's Node.js runtime template addon (N-API, so one build serves any Node.js >= 18 it was
 * compiled against). Compiled by `ember-runtimes` at provisioning, with the build tools
 * aws-lambda-ric needs anyway, into <runtime dir>/ember-template.node; loaded only by the
 * agent's Node.js template script (crates/agent/src/container/node_template.mjs), which runs no
 * function code. See ARCHITECTURE.md, "Runtime templates", for the design and its security
 * argument; this file does, in C, what template.py does in Python:
 *
 *   serve(controlFd, readyLine)   the template's loop, blocking, on the control socket. For each
 *                                 request it forks; it returns only in the forked child, with
 *                                 {roles, fds, pipe, spec}: the child has joined the container's
 *                                 cgroup and read the launch spec (the template never reads it).
 *   enter(pipe, ns, runtime)      the child: setns into each namespace, fork twice (the middle
 *                                 process exits in the container's PID namespace, so the runtime
 *                                 is re-parented to its PID 1), and in the runtime make what an
 *                                 exec would have made. Returns only in the runtime: its pid.
 *   fail(pipe, message)           reports an error of the child's JavaScript and exits.
 *
 * Two things make a Node.js process forkable, and the loop checks both before every fork:
 *   - V8 marks its memory MADV_DONTFORK (a child would have no heap): every such mapping is
 *     made inheritable (MADV_DOFORK) first, copy-on-write like any private mapping;
 *   - a Node.js process always has threads besides the main one (V8's platform workers and
 *     delayed-task thread, the inspector's signal thread, libuv's pool once used): the fork
 *     happens only while each of them is asleep in the kernel (futex or epoll wait: idle, as
 *     the main thread is here and gives nothing new to do), and their number is the one the
 *     template had when it said ready (which it says only once they are all asleep). The
 *     child has one thread; uv_loop_fork() gives the loop a new epoll instance, and the
 *     runtime starts V8's platform workers and libuv's pool again (restart_workers,
 *     restart_pool) as its last steps, its privileges already dropped.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 64
#define MAX_LINE 4096

/* ---- small helpers ------------------------------------------------------------------------ */

static void report(int pipe_fd, const char *fmt, ...) {
  char line[MAX_LINE];
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, args);
  va_end(args);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  const char *p = line;
  while (n > 0) {
    ssize_t w = write(pipe_fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= w;
  }
}

/* Reports `what` with errno's text and ends this (child) process. */
static void die(int pipe_fd, const char *what) {
  report(pipe_fd, "error %s: %s", what, strerror(errno));
  _exit(127);
}

static int read_exact(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= r;
  }
  return 0;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= w;
  }
  return 0;
}

static napi_value throw_error(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list args;
  va_start(args, fmt);
  vsnprintf(msg, sizeof msg, fmt, args);
  va_end(args);
  napi_throw_error(env, NULL, msg);
  return NULL;
}

/* ---- the fork point ----------------------------------------------------------------------- */

/* Makes every mapping V8 marked MADV_DONTFORK inheritable: every private anonymous mapping
 * is advised MADV_DOFORK (a no-op where the mark is not set; /proc/self/maps does not show it,
 * and smaps, which does, is not in every procfs). Returns 0, or -1 with `why`. */
static int make_inheritable(char *why, size_t len) {
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) {
    snprintf(why, len, "cannot read /proc/self/maps: %s", strerror(errno));
    return -1;
  }
  char line[1024];
  int ok = 0;
  while (ok == 0 && fgets(line, sizeof line, f)) {
    unsigned long lo, hi, offset, inode;
    char perms[5], dev[16];
    if (sscanf(line, "%lx-%lx %4s %lx %15s %lu", &lo, &hi, perms, &offset, dev, &inode) != 6) continue;
    if (perms[3] != 'p' || inode != 0 || strchr(line, '[')) continue;
    if (madvise((void *)lo, hi - lo, MADV_DOFORK) != 0) {
      snprintf(why, len, "madvise(%lx-%lx, MADV_DOFORK): %s", lo, hi, strerror(errno));
      ok = -1;
    }
  }
  fclose(f);
  return ok;
}

/* The number of this process's threads, or -1. */
static int thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* Whether every thread but the caller sleeps in the kernel waiting for work (a futex or an
 * epoll instance): then none holds a lock or is halfway through a change the child would
 * inherit half made. Writes why not into `why`. */
static int others_idle(char *why, size_t len) {
  pid_t self = (pid_t)syscall(SYS_gettid);
  DIR *d = opendir("/proc/self/task");
  if (!d) {
    snprintf(why, len, "cannot list the threads: %s", strerror(errno));
    return 0;
  }
  struct dirent *e;
  int idle = 1;
  while (idle && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    pid_t tid = (pid_t)atoi(e->d_name);
    if (tid == self) continue;
    char path[96], buf[512];
    /* A thread busy a moment ago gets a few tries to go back to sleep. */
    int asleep = 0;
    for (int attempt = 0; attempt < 50 && !asleep; attempt++) {
      snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) break;
      ssize_t n = read(fd, buf, sizeof buf - 1);
      close(fd);
      if (n <= 0) break;
      buf[n] = 0;
      char *end = strrchr(buf, ')');
      char state = end && end[1] == ' ' ? end[2] : '?';
      char wchan[64] = "";
      snprintf(path, sizeof path, "/proc/self/task/%d/wchan", tid);
      fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        n = read(fd, wchan, sizeof wchan - 1);
        close(fd);
        wchan[n > 0 ? n : 0] = 0;
      }
      asleep = state == 'S' && (strstr(wchan, "futex") || strstr(wchan, "epoll"));
      if (!asleep) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        if (attempt == 49)
          snprintf(why, len, "thread %d is not idle (state %c, waiting in %s)", tid, state,
                   wchan[0] ? wchan : "-");
      }
    }
    if (!asleep) {
      if (!why[0]) snprintf(why, len, "thread %d cannot be read", tid);
      idle = 0;
    }
  }
  closedir(d);
  return idle;
}

/* What the template's descriptors are, by identity, at the fork: the runtime closes each of
 * them it still has, and keeps those made after the fork (libuv's, by its fork handlers and
 * uv_loop_fork). */
struct fd_id {
  int fd;
  dev_t dev;
  ino_t ino;
};
static struct fd_id inherited[1024];
static int n_inherited;

static void record_descriptors(void) {
  n_inherited = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  int own = dirfd(d);
  struct dirent *e;
  while ((e = readdir(d)) && n_inherited < (int)(sizeof inherited / sizeof inherited[0])) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    struct stat st;
    if (fd == own || fstat(fd, &st) != 0) continue;
    inherited[n_inherited].fd = fd;
    inherited[n_inherited].dev = st.st_dev;
    inherited[n_inherited].ino = st.st_ino;
    n_inherited++;
  }
  closedir(d);
}

static const char *find_clocks(void);
static void reset_start_time(void);

/* ---- V8's platform workers, started again in the runtime ---------------------------------- */

/* V8 gives its background work (concurrent marking and sweeping, optimizing compilation,
 * WebAssembly's compilation and tier-up: tasks and jobs whose results the main thread waits
 * for) to the worker threads of the platform Node.js made for it at its start
 * (node::NodePlatform: a pool of --v8-pool-size threads and a delayed-task thread, owned by
 * its worker_thread_task_runner_). A forked runtime has none of those threads: what V8 posted
 * would never run, and a wait for it would hang. No public API starts them again, and V8's
 * platform cannot be replaced once V8 runs; so the runtime makes a second NodePlatform with
 * Node.js's own constructor (exported by the executable, as every node:: symbol is), which
 * starts a pool of the template's size as a fresh start's, and swaps the two platforms' task
 * runners (a std::shared_ptr, two words): the platform V8 holds then posts to the new
 * threads. The old runner, whose threads do not exist here, stays with the second platform,
 * which is never destroyed (destroying it would join them).
 *
 * The runner is a private member: the template finds its place once, at its start, as the
 * only place in the platform where the words the platform's own getters return (its tracing
 * controller and page allocator, the members before it) are followed by two non-null words,
 * and refuses to serve (no template: fresh starts) unless exactly one place matches; the
 * runtime checks that the second platform has the same class, the same two words at that
 * place, a runner of its own after them and the same number of threads, before it swaps. */
typedef void *(*platform_getter)(void *);
typedef int (*platform_counter)(void *);
typedef void (*platform_ctor)(void *, int, void *, void *);
static void **platform;
static int runner_word = -1;
static int platform_threads;
static platform_getter platform_tracing, platform_pages;
static platform_counter platform_count;
static platform_ctor platform_new;

/* At most the words of a NodePlatform object looked at (its size is 0x90 in Node.js 20), and
 * the room the runtime's second one gets. */
#define PLATFORM_WORDS 64

static const char *find_platform(void) {
  void *(*current)(void) = (void *(*)(void))dlsym(RTLD_DEFAULT, "_ZN2v88internal2V818GetCurrentPlatformEv");
  platform_tracing = (platform_getter)dlsym(RTLD_DEFAULT, "_ZN4node12NodePlatform20GetTracingControllerEv");
  platform_pages = (platform_getter)dlsym(RTLD_DEFAULT, "_ZN4node12NodePlatform16GetPageAllocatorEv");
  platform_count = (platform_counter)dlsym(RTLD_DEFAULT, "_ZN4node12NodePlatform21NumberOfWorkerThreadsEv");
  platform_new = (platform_ctor)dlsym(
      RTLD_DEFAULT, "_ZN4node12NodePlatformC1EiPN2v817TracingControllerEPNS1_13PageAllocatorE");
  if (!current || !platform_tracing || !platform_pages || !platform_count || !platform_new)
    return "this Node.js does not export its platform's constructor and getters";
  platform = current();
  if (!platform) return "V8 has no platform";
  void *tracing = platform_tracing(platform), *pages = platform_pages(platform);
  /* Within the object: Node.js made it with `new`, so malloc knows its size. */
  size_t words = malloc_usable_size(platform) / sizeof(void *);
  if (words > PLATFORM_WORDS) words = PLATFORM_WORDS;
  int found = 0;
  for (int i = 1; i + 3 < (int)words; i++) {
    if (platform[i] == tracing && platform[i + 1] == pages && platform[i + 2] && platform[i + 3]) {
      runner_word = i + 2;
      found++;
    }
  }
  if (found != 1) {
    runner_word = -1;
    return "cannot find the worker threads' runner in Node.js's platform";
  }
  /* The pool and the delayed-task thread: a fresh start's, the flags being the same. */
  platform_threads = platform_count(platform);
  if (platform_threads < 2) return "Node.js's platform has no worker threads";
  return NULL;
}

static void no_work(uv_work_t *req) { (void)req; }
static void no_work_done(uv_work_t *req, int status) {
  (void)status;
  free(req);
}

/* In the runtime: libuv's pool of its own at once. The template started one (importing the
 * client uses it, as a fresh start's import does), and libuv's fork handler only lets the
 * next use start it again: until then its state names the template's threads, which Node.js
 * joins when it exits (so a runtime that exits before using the pool would hang). A no-op
 * work item starts it now. */
static const char *restart_pool(uv_loop_t *loop) {
  uv_work_t *req = calloc(1, sizeof *req);
  if (!req) return "no memory for libuv's pool";
  if (uv_queue_work(loop, req, no_work, no_work_done) != 0) {
    free(req);
    return "cannot start libuv's pool";
  }
  return NULL;
}

/* In the runtime, its privileges dropped: V8's platform workers, as a fresh start has them. */
static const char *restart_workers(void) {
  void **fresh = calloc(PLATFORM_WORDS, sizeof(void *));
  if (!fresh) return "no memory for the platform";
  void *tracing = platform[runner_word - 2], *pages = platform[runner_word - 1];
  /* Starts platform_threads - 1 workers and a delayed-task thread, and waits for them. */
  platform_new(fresh, platform_threads - 1, tracing, pages);
  if (fresh[0] != platform[0] || fresh[runner_word - 2] != tracing || fresh[runner_word - 1] != pages ||
      !fresh[runner_word] || fresh[runner_word] == platform[runner_word] ||
      platform_count(fresh) != platform_threads)
    return "the new platform is not laid out as the template's";
  for (int i = runner_word; i < runner_word + 2; i++) {
    void *old = platform[i];
    platform[i] = fresh[i];
    fresh[i] = old;
  }
  return NULL;
}

/* ---- serve: the template's loop ----------------------------------------------------------- */

static int control_fd = -1;
static int expected_threads = -1;

/* Parses {"fds": ["role", ...]}: the roles, in order. Returns their number or -1. */
static int parse_roles(const char *json, char roles[][16], int max) {
  const char *p = strstr(json, "\"fds\"");
  if (!p) return -1;
  p = strchr(p, '[');
  if (!p) return -1;
  int n = 0;
  for (p++; *p && *p != ']'; p++) {
    if (*p != '"') continue;
    const char *end = strchr(p + 1, '"');
    if (!end || n == max || end - p - 1 >= 16) return -1;
    memcpy(roles[n], p + 1, end - p - 1);
    roles[n][end - p - 1] = 0;
    n++;
    p = end;
  }
  return n;
}

/* The parent's side of one fork: the child's lines on `r` until the runtime said "ok" and
 * its go-between has exited ("parted"), or an error; then the answer. Returns whether the
 * child read the spec (else the stream is out of step). */
static int answer(int r, pid_t child) {
  char out[8192];
  size_t len = 0;
  int ok = 0, parted = 0, spec = 0, pid = -1;
  char error[MAX_LINE] = "";
  size_t scanned = 0;
  for (;;) {
    while (1) {
      char *nl = memchr(out + scanned, '\n', len - scanned);
      if (!nl) break;
      *nl = 0;
      char *line = out + scanned;
      if (strcmp(line, "ok") == 0) ok = 1;
      else if (strcmp(line, "parted") == 0) parted = 1;
      else if (strcmp(line, "spec") == 0) spec = 1;
      else if (strncmp(line, "pid ", 4) == 0) pid = atoi(line + 4);
      else if (strncmp(line, "error ", 6) == 0 && !error[0])
        snprintf(error, sizeof error, "%s", line + 6);
      scanned = nl - out + 1;
    }
    if ((ok && parted) || error[0]) break;
    if (len == sizeof out - 1) break;
    ssize_t n = read(r, out + len, sizeof out - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += n;
  }
  char reply[MAX_LINE * 2 + 64];
  if (error[0]) {
    /* JSON-escape the message: quotes, backslashes and controls. */
    char esc[MAX_LINE * 2];
    size_t j = 0;
    for (size_t i = 0; error[i] && j < sizeof esc - 8; i++) {
      unsigned char c = (unsigned char)error[i];
      if (c == '"' || c == '\\') {
        esc[j++] = '\\';
        esc[j++] = c;
      } else if (c < 0x20) {
        j += snprintf(esc + j, sizeof esc - j, "\\u%04x", c);
      } else {
        esc[j++] = c;
      }
    }
    esc[j] = 0;
    snprintf(reply, sizeof reply, "{\"error\": \"%s\"}\n", esc);
  } else if (ok && parted && pid > 0) {
    snprintf(reply, sizeof reply, "{\"pid\": %d}\n", pid);
  } else {
    snprintf(reply, sizeof reply, "{\"error\": \"the template's child ended without a word\"}\n");
  }
  write_all(control_fd, reply, strlen(reply));
  char sink[4096];
  while (read(r, sink, sizeof sink) > 0) {
  }
  close(r);
  int status;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  return spec;
}

/* serve(controlFd, readyLine): never returns in the template; returns in each forked child. */
static napi_value serve(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok)
    return throw_error(env, "serve(controlFd, readyLine)");
  char ready[65536];
  size_t ready_len;
  if (napi_get_value_string_utf8(env, argv[1], ready, sizeof ready, &ready_len) != napi_ok)
    return throw_error(env, "serve: readyLine must be a string");
  control_fd = fd;
  const char *clocks = find_clocks();
  if (clocks) return throw_error(env, "%s", clocks);
  const char *workers = find_platform();
  if (workers) return throw_error(env, "%s", workers);
  /* Ready only once V8's workers have finished what the template's start gave them. */
  char busy[512] = "";
  for (int attempt = 0; attempt < 100; attempt++) {
    busy[0] = 0;
    if (others_idle(busy, sizeof busy)) break;
  }
  if (busy[0]) return throw_error(env, "the template's threads do not settle: %s", busy);
  expected_threads = thread_count();
  if (write_all(control_fd, ready, ready_len) != 0) _exit(1);

  for (;;) {
    char head[4];
    char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct iovec iov = {head, sizeof head};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    ssize_t got = recvmsg(control_fd, &msg, MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) _exit(0); /* the agent is gone */
    int fds[MAX_FDS];
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (int i = 0; i < k && nfds < MAX_FDS; i++)
          memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      }
    }
    if (got < 4 && read_exact(control_fd, head + got, 4 - got) != 0) _exit(1);
    uint32_t n = ((uint32_t)(unsigned char)head[0] << 24) | ((uint32_t)(unsigned char)head[1] << 16) |
                 ((uint32_t)(unsigned char)head[2] << 8) | (uint32_t)(unsigned char)head[3];
    if (n > 65536) _exit(1);
    char *header = calloc(1, n + 1);
    if (!header || read_exact(control_fd, header, n) != 0) _exit(1);
    char roles[MAX_FDS][16];
    int nroles = parse_roles(header, roles, MAX_FDS);
    free(header);

    char why[512] = "";
    int refuse = 0;
    if (nroles != nfds) {
      snprintf(why, sizeof why, "%d descriptors for %d roles", nfds, nroles);
      refuse = 1;
    } else if (thread_count() != expected_threads) {
      snprintf(why, sizeof why, "the template has %d threads, not the %d it started with",
               thread_count(), expected_threads);
      refuse = 1;
    } else if (!others_idle(why, sizeof why)) {
      refuse = 1;
    } else if (make_inheritable(why, sizeof why) != 0) {
      refuse = 1;
    }
    if (refuse) {
      /* The spec is still in the socket: answered, then the template ends (the agent starts
       * a new one). */
      char reply[600];
      snprintf(reply, sizeof reply, "{\"error\": \"%s\"}\n", why);
      write_all(control_fd, reply, strlen(reply));
      _exit(1);
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) _exit(1);
    record_descriptors();
    pid_t pid = fork();
    if (pid < 0) _exit(1);
    if (pid == 0) {
      close(p[0]);
      int w = p[1];
      /* The cgroup first: every page this process touches from here on is the container's. */
      for (int i = 0; i < nfds; i++)
        if (strcmp(roles[i], "procs") == 0 && write(fds[i], "0", 1) != 1) die(w, "joining the cgroup");
      char len[4];
      if (read_exact(control_fd, len, 4) != 0) die(w, "reading the spec");
      uint32_t m = ((uint32_t)(unsigned char)len[0] << 24) | ((uint32_t)(unsigned char)len[1] << 16) |
                   ((uint32_t)(unsigned char)len[2] << 8) | (uint32_t)(unsigned char)len[3];
      char *spec = m <= (1u << 24) ? malloc(m + 1) : NULL;
      if (!spec || read_exact(control_fd, spec, m) != 0) die(w, "reading the spec");
      spec[m] = 0;
      report(w, "spec");
      napi_value out, roles_js, fds_js, v;
      napi_create_object(env, &out);
      napi_create_array_with_length(env, nfds, &roles_js);
      napi_create_array_with_length(env, nfds, &fds_js);
      for (int i = 0; i < nfds; i++) {
        napi_create_string_utf8(env, roles[i], NAPI_AUTO_LENGTH, &v);
        napi_set_element(env, roles_js, i, v);
        napi_create_int32(env, fds[i], &v);
        napi_set_element(env, fds_js, i, v);
      }
      napi_set_named_property(env, out, "roles", roles_js);
      napi_set_named_property(env, out, "fds", fds_js);
      napi_create_int32(env, w, &v);
      napi_set_named_property(env, out, "pipe", v);
      napi_create_string_utf8(env, spec, m, &v);
      napi_set_named_property(env, out, "spec", v);
      free(spec);
      return out;
    }
    close(p[1]);
    for (int i = 0; i < nfds; i++) close(fds[i]);
    if (!answer(p[0], pid)) _exit(1);
  }
}

/* ---- enter: the child's way into the container -------------------------------------------- */

struct rlim {
  int resource;
  rlim_t soft, hard;
};

struct runtime_spec {
  uid_t uid;
  gid_t gid;
  char cwd[4096];
  char **argv;
  char **env;
  struct rlim rlimits[16];
  int n_rlimits;
  struct sock_fprog programs[8];
  int n_programs;
  int log_fd;
};

static char **strings(napi_env env, napi_value array) {
  uint32_t n = 0;
  if (napi_get_array_length(env, array, &n) != napi_ok) return NULL;
  char **out = calloc(n + 1, sizeof(char *));
  for (uint32_t i = 0; out && i < n; i++) {
    napi_value v;
    size_t len;
    napi_get_element(env, array, i, &v);
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
    out[i] = malloc(len + 1);
    if (!out[i]) return NULL;
    napi_get_value_string_utf8(env, v, out[i], len + 1, &len);
  }
  return out;
}

static int get_u32(napi_env env, napi_value obj, const char *name, uint32_t *out) {
  napi_value v;
  return napi_get_named_property(env, obj, name, &v) == napi_ok &&
                 napi_get_value_uint32(env, v, out) == napi_ok
             ? 0
             : -1;
}

/* The runtime object JavaScript hands over: {uid, gid, cwd, argv, env ("K=V"), rlimits
 * ([[resource, soft, hard]]), seccomp ([Buffer]), log}. */
static const char *read_runtime(napi_env env, napi_value obj, struct runtime_spec *rt) {
  uint32_t u;
  napi_value v;
  size_t len;
  if (get_u32(env, obj, "uid", &u)) return "uid";
  rt->uid = u;
  if (get_u32(env, obj, "gid", &u)) return "gid";
  rt->gid = u;
  if (get_u32(env, obj, "log", &u)) return "log";
  rt->log_fd = (int)u;
  if (napi_get_named_property(env, obj, "cwd", &v) != napi_ok ||
      napi_get_value_string_utf8(env, v, rt->cwd, sizeof rt->cwd, &len) != napi_ok)
    return "cwd";
  if (napi_get_named_property(env, obj, "argv", &v) != napi_ok || !(rt->argv = strings(env, v)))
    return "argv";
  if (napi_get_named_property(env, obj, "env", &v) != napi_ok || !(rt->env = strings(env, v)))
    return "env";
  uint32_t n;
  if (napi_get_named_property(env, obj, "rlimits", &v) != napi_ok ||
      napi_get_array_length(env, v, &n) != napi_ok || n > 16)
    return "rlimits";
  rt->n_rlimits = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value item, x;
    int64_t r, soft, hard;
    napi_get_element(env, v, i, &item);
    if (napi_get_element(env, item, 0, &x) != napi_ok || napi_get_value_int64(env, x, &r) != napi_ok ||
        napi_get_element(env, item, 1, &x) != napi_ok || napi_get_value_int64(env, x, &soft) != napi_ok ||
        napi_get_element(env, item, 2, &x) != napi_ok || napi_get_value_int64(env, x, &hard) != napi_ok)
      return "rlimits";
    rt->rlimits[i].resource = (int)r;
    rt->rlimits[i].soft = (rlim_t)soft;
    rt->rlimits[i].hard = (rlim_t)hard;
  }
  if (napi_get_named_property(env, obj, "seccomp", &v) != napi_ok ||
      napi_get_array_length(env, v, &n) != napi_ok || n > 8)
    return "seccomp";
  rt->n_programs = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value item;
    void *data;
    size_t bytes;
    napi_get_element(env, v, i, &item);
    if (napi_get_buffer_info(env, item, &data, &bytes) != napi_ok || bytes % 8 || bytes == 0)
      return "seccomp";
    void *copy = malloc(bytes);
    if (!copy) return "seccomp";
    memcpy(copy, data, bytes);
    rt->programs[i].len = (unsigned short)(bytes / 8);
    rt->programs[i].filter = copy;
  }
  return NULL;
}

/* Points /proc/self/{cmdline,environ} at what an exec would show (PR_SET_MM_MAP: every other
 * field as it is, the executable kept). The blobs live as long as the process. */
static int set_proc_view(char **argv, char **envp) {
  size_t alen = 0, elen = 0;
  for (char **a = argv; *a; a++) alen += strlen(*a) + 1;
  for (char **e = envp; *e; e++) elen += strlen(*e) + 1;
  char *ablob = malloc(alen ? alen : 1), *eblob = malloc(elen ? elen : 1);
  if (!ablob || !eblob) return -1;
  char *p = ablob;
  for (char **a = argv; *a; a++) p = stpcpy(p, *a) + 1;
  p = eblob;
  for (char **e = envp; *e; e++) p = stpcpy(p, *e) + 1;
  char stat[4096];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, stat, sizeof stat - 1);
  close(fd);
  if (n <= 0) return -1;
  stat[n] = 0;
  char *rest = strrchr(stat, ')');
  if (!rest) return -1;
  /* Fields from 3 on (proc(5) numbers them from 1). */
  unsigned long long field[64] = {0};
  int i = 3;
  for (char *tok = strtok(rest + 1, " "); tok && i < 64; tok = strtok(NULL, " "), i++) {
    if (i == 3) continue; /* the state, a letter */
    field[i] = strtoull(tok, NULL, 10);
  }
  struct prctl_mm_map m;
  memset(&m, 0, sizeof m);
  m.start_code = field[26];
  m.end_code = field[27];
  m.start_stack = field[28];
  m.start_data = field[45];
  m.end_data = field[46];
  m.start_brk = field[47];
  m.brk = (unsigned long)sbrk(0);
  m.arg_start = (unsigned long)ablob;
  m.arg_end = (unsigned long)(ablob + alen);
  m.env_start = (unsigned long)eblob;
  m.env_end = (unsigned long)(eblob + elen);
  m.auxv = NULL;
  m.auxv_size = 0;
  m.exe_fd = (unsigned int)-1;
  return prctl(PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0);
}

/* As ember_sandbox::privileges::drop_to: bounding and ambient sets, groups, gid, uid, the
 * remaining sets, no_new_privs; dumpable again, as an exec would leave it. */
static const char *drop_privileges(uid_t uid, gid_t gid) {
  int last = 40;
  FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
  if (f) {
    if (fscanf(f, "%d", &last) != 1) last = 40;
    fclose(f);
  }
  for (int cap = 0; cap <= last; cap++)
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return "dropping a capability";
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return "ambient capabilities";
  if (setgroups(0, NULL) != 0) return "setgroups";
  if (setresgid(gid, gid, gid) != 0) return "setresgid";
  if (setresuid(uid, uid, uid) != 0) return "setresuid";
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &header, data) != 0) return "clearing capabilities";
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return "no_new_privs";
  if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) return "dumpable";
  return NULL;
}

/* Closes every descriptor this process inherited from the template (the control socket, the
 * namespaces, the cgroup files, V8's and libuv's old ones) but stdio and `keep`. Those made
 * since the fork stay: the loop's own (uv_loop_fork's new epoll instance, wakeup eventfd and
 * signal pipe: named by the loop, as anonymous inodes all share one identity) and libuv's
 * global signal pipe (remade by its fork handler: a pipe of another identity).
 *
 * The template's other anonymous-inode descriptors and pipes belong to event loops the
 * runtime does not run: the template's delayed-task thread's (an epoll instance and the
 * eventfd that wakes it; the runtime's own comes with the workers restart_workers starts, and
 * the old runner, which would write to that eventfd when given a delayed task, is given none
 * once the runners are swapped) and the tracing agent's (an epoll instance and a wakeup pipe,
 * run once more when Node.js exits). Each becomes a fresh descriptor of the runtime's own, of
 * the same kind, at the same number (a pipe's two ends one new pipe's): the template's are
 * never reached, and libuv, which aborts the process when a write, a wait or a registration on
 * them fails, finds them working (an exit's last turn of the tracing loop waits on an empty
 * epoll instance). */
static void close_inherited(int keep, uv_loop_t *loop) {
  int own[] = {keep, loop->backend_fd, loop->async_io_watcher.fd, loop->async_wfd,
               loop->signal_pipefd[0], loop->signal_pipefd[1], loop->inotify_fd};
  /* The template's pipes already replaced: their inode, and the new pipe's ends. */
  struct {
    ino_t ino;
    int ends[2];
  } pipes[32];
  int n_pipes = 0;
  for (int i = 0; i < n_inherited; i++) {
    int fd = inherited[i].fd;
    struct stat st;
    int keep_it = fd <= 2;
    for (size_t k = 0; k < sizeof own / sizeof own[0]; k++) keep_it |= own[k] == fd;
    if (keep_it || fstat(fd, &st) != 0) continue;
    if (st.st_dev != inherited[i].dev || st.st_ino != inherited[i].ino) continue;
    int mode = fcntl(fd, F_GETFL);
    if (S_ISFIFO(st.st_mode) && mode >= 0) {
      /* A pipe of a loop the runtime does not run (the tracing agent's, whose wakeup Node.js
       * uses when it exits): both ends, wherever they are, become one new pipe's. */
      int j = 0;
      while (j < n_pipes && pipes[j].ino != st.st_ino) j++;
      if (j == n_pipes && n_pipes < (int)(sizeof pipes / sizeof pipes[0]) &&
          pipe2(pipes[j].ends, O_CLOEXEC | O_NONBLOCK) == 0) {
        pipes[j].ino = st.st_ino;
        n_pipes++;
      }
      if (j < n_pipes && dup3(pipes[j].ends[(mode & O_ACCMODE) == O_WRONLY ? 1 : 0], fd, O_CLOEXEC) >= 0)
        continue;
    }
    if ((st.st_mode & S_IFMT) == 0) {
      /* An anonymous inode: replaced at the same number by a fresh one of its kind, an empty
       * epoll instance for an epoll instance, else an eventfd. */
      char path[64], kind[64] = "";
      snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
      ssize_t n = readlink(path, kind, sizeof kind - 1);
      kind[n > 0 ? n : 0] = 0;
      int dummy = strstr(kind, "eventpoll") ? epoll_create1(EPOLL_CLOEXEC)
                                            : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (dummy >= 0 && dup3(dummy, fd, O_CLOEXEC) >= 0) {
        close(dummy);
        continue;
      }
      if (dummy >= 0) close(dummy);
    }
    close(fd);
  }
  for (int j = 0; j < n_pipes; j++) {
    close(pipes[j].ends[0]);
    close(pipes[j].ends[1]);
  }
}

/* The clocks Node.js reports a process's age by: process.uptime() counts from
 * node::per_process::node_start_time, performance.now() from performance_process_start, and
 * performance.timeOrigin is the first of the isolate's milestones (a buffer of doubles:
 * [0] the origin's wall-clock timestamp in microseconds, [1] its hrtime in nanoseconds),
 * found once in the template by its two values. A runtime sets all of them to its own start,
 * as a fresh process has them. */
static uint64_t *node_start_time, *perf_start;
static double *perf_stamp, *milestones;

static const char *find_clocks(void) {
  node_start_time = dlsym(RTLD_DEFAULT, "_ZN4node11per_process15node_start_timeE");
  perf_start = dlsym(RTLD_DEFAULT, "_ZN4node11performance25performance_process_startE");
  perf_stamp = dlsym(RTLD_DEFAULT, "_ZN4node11performance35performance_process_start_timestampE");
  if (!node_start_time || !perf_start || !perf_stamp) return "this Node.js does not export its start clocks";
  double want[2] = {*perf_stamp, (double)*perf_start};
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) return "cannot read /proc/self/maps";
  char line[1024];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    char perms[5];
    unsigned long offset;
    char dev[16];
    unsigned long inode;
    if (sscanf(line, "%lx-%lx %4s %lx %15s %lu", &lo, &hi, perms, &offset, dev, &inode) != 6) continue;
    if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || inode != 0) continue;
    if (strstr(line, "[stack") || strstr(line, "[vvar") || strstr(line, "[vsyscall")) continue;
    for (double *p = (double *)lo; p + 1 < (double *)hi; p++) {
      if (memcmp(p, want, sizeof want) == 0) {
        found++;
        milestones = p;
      }
    }
  }
  fclose(f);
  if (found != 1) {
    milestones = NULL;
    return "cannot find the time origin of performance";
  }
  return NULL;
}

static void reset_start_time(void) {
  uint64_t now = uv_hrtime();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  double stamp = (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
  *node_start_time = now;
  *perf_start = now;
  *perf_stamp = stamp;
  milestones[0] = stamp;
  milestones[1] = (double)now;
}

/* enter(pipe, [[nstype, fd], ...], runtime): returns only in the runtime, which is then what
 * the ordinary start's exec would have made, its seccomp filter installed. */
static napi_value enter(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t w;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &w) != napi_ok)
    return throw_error(env, "enter(pipe, namespaces, runtime)");
  uint32_t nns;
  if (napi_get_array_length(env, argv[1], &nns) != napi_ok || nns > 16)
    return throw_error(env, "enter: namespaces");
  int ns_type[16], ns_fd[16];
  for (uint32_t i = 0; i < nns; i++) {
    napi_value item, x;
    napi_get_element(env, argv[1], i, &item);
    napi_get_element(env, item, 0, &x);
    napi_get_value_int32(env, x, &ns_type[i]);
    napi_get_element(env, item, 1, &x);
    napi_get_value_int32(env, x, &ns_fd[i]);
  }
  static struct runtime_spec rt;
  const char *bad = read_runtime(env, argv[2], &rt);
  if (bad) return throw_error(env, "enter: runtime.%s", bad);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_error(env, "enter: no loop");

  /* What V8 mapped since the template's fork (the spec's objects) is inherited too; read
   * while this process's /proc is still the VM's. */
  char why[256];
  if (make_inheritable(why, sizeof why) != 0) {
    report(w, "error %s", why);
    _exit(127);
  }
  for (uint32_t i = 0; i < nns; i++)
    if (setns(ns_fd[i], ns_type[i]) != 0) die(w, "setns");
  pid_t middle = fork();
  if (middle < 0) die(w, "fork");
  if (middle > 0) {
    int status;
    while (waitpid(middle, &status, 0) < 0 && errno == EINTR) {
    }
    /* The go-between has exited, so the runtime is its PID 1's child now: only then may the
     * agent tell PID 1 to wait for it (before, PID 1 would find no child at all). */
    report(w, "parted");
    _exit(0);
  }
  /* In the container's PID namespace, with a pid past a fresh start's (its PID 1 moved the
   * counter): the runtime gets the pid a fresh start's runtime has. Best effort. */
  int last = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
  if (last >= 0) {
    if (write(last, "1", 1) != 1) {
    }
    close(last);
  }
  pid_t runtime = fork();
  if (runtime < 0) die(w, "fork");
  if (runtime > 0) {
    report(w, "pid %d", runtime);
    _exit(0);
  }

  /* The runtime. */
  if (setsid() < 0) die(w, "setsid");
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) die(w, "/dev/null");
  if (dup2(null, 0) < 0 || dup2(rt.log_fd, 1) < 0 || dup2(rt.log_fd, 2) < 0) die(w, "stdio");
  close(null);
  /* The loop gets a new epoll instance, wakeup and signal descriptors of its own. */
  int err = uv_loop_fork(loop);
  if (err != 0) {
    report(w, "error uv_loop_fork: %s", uv_strerror(err));
    _exit(127);
  }
  close_inherited(w, loop);
  for (int i = 0; i < rt.n_rlimits; i++) {
    struct rlimit r = {rt.rlimits[i].soft, rt.rlimits[i].hard};
    if (setrlimit(rt.rlimits[i].resource, &r) != 0) die(w, "setrlimit");
  }
  umask(022);
  if (chdir(rt.cwd) != 0) die(w, "chdir");
  if (clearenv() != 0) die(w, "clearenv");
  for (char **e = rt.env; *e; e++)
    if (putenv(*e) != 0) die(w, "putenv");
  if (set_proc_view(rt.argv, rt.env) != 0) die(w, "the /proc view");
  reset_start_time();
  const char *failed = drop_privileges(rt.uid, rt.gid);
  if (failed) die(w, failed);
  /* Last, as for an exec'd runtime: from here on the filter holds. */
  for (int i = 0; i < rt.n_programs; i++)
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &rt.programs[i], 0, 0) != 0) die(w, "seccomp");
  /* Only now: a thread gets its creator's credentials, capabilities, no_new_privs and seccomp
   * filter, so V8's workers are born as restricted as a fresh start's. */
  const char *workers = restart_workers();
  if (!workers) workers = restart_pool(loop);
  if (workers) {
    report(w, "error %s", workers);
    _exit(127);
  }
  report(w, "ok");
  close(w);
  napi_value pid;
  napi_create_int32(env, (int32_t)getpid(), &pid);
  return pid;
}

/* fail(pipe, message): the child's JavaScript failed before the runtime ran. */
static napi_value fail(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t w = -1;
  char msg[MAX_LINE - 16] = "failed";
  size_t len;
  if (argc >= 1) napi_get_value_int32(env, argv[0], &w);
  if (argc >= 2) napi_get_value_string_utf8(env, argv[1], msg, sizeof msg, &len);
  for (char *p = msg; *p; p++)
    if (*p == '\n') *p = ' ';
  if (w >= 0) report(w, "error %s", msg);
  _exit(127);
}

/* seed(): a random 31-bit integer, not 0, from the kernel's generator (getrandom): what the
 * runtime seeds Math.random with, without loading anything of Node.js's crypto. */
static napi_value seed(napi_env env, napi_callback_info info) {
  (void)info;
  uint32_t value = 0;
  while (value == 0) {
    if (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value) return throw_error(env, "getrandom: %s", strerror(errno));
    value &= 0x7fffffff;
  }
  napi_value v;
  napi_create_int32(env, (int32_t)value, &v);
  return v;
}

/* threads(): this process's thread count (for the template's own checks and tests). */
static napi_value threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_int32(env, thread_count(), &v);
  return v;
}

NAPI_MODULE_INIT() {
  const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {{"serve", serve}, {"enter", enter}, {"fail", fail}, {"threads", threads}, {"seed", seed}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}
