/* sheesh-runas [-c CGROUP] [-d DIR] UID GID PROGRAM [ARG...]: run PROGRAM (looked up in PATH) as UID:GID with no
 * supplementary groups, as an ordinary OOM victim (oom_score_adj 0: the agent that starts it has -1000), first
 * joining the cgroup v2 folder CGROUP and changing to DIR. The guest agent starts every exec's shell through it:
 * Python may start a child with vfork (or posix_spawn) only when the child itself switches no user, cgroup or
 * folder, and a static program this small starts in a fraction of util-linux setpriv's time under emulation (no
 * dynamic linking, no locale). The shell is in its job's cgroup before its first instruction, and the agent
 * writes no control file for it. Built static by the image builder; root-owned, not setuid. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long id_arg(const char *s) {
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v == 0 || v > 0x7fffffffUL) {
        fprintf(stderr, "sheesh-runas: bad id %s\n", s);
        exit(127);
    }
    return v;
}

static int write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, value, strlen(value));
    close(fd);
    return n == (ssize_t)strlen(value) ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *cgroup = NULL, *dir = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+c:d:")) != -1) {
        if (opt == 'c')
            cgroup = optarg;
        else if (opt == 'd')
            dir = optarg;
        else
            return 127;
    }
    if (argc - optind < 3) {
        fprintf(stderr, "usage: sheesh-runas [-c CGROUP] [-d DIR] UID GID PROGRAM [ARG...]\n");
        return 127;
    }
    uid_t uid = (uid_t)id_arg(argv[optind]);
    gid_t gid = (gid_t)id_arg(argv[optind + 1]);
    if (cgroup != NULL) {
        char procs[4096];
        if (snprintf(procs, sizeof procs, "%s/cgroup.procs", cgroup) >= (int)sizeof procs ||
            write_file(procs, "0") != 0) {
            perror("sheesh-runas: joining the job's cgroup");
            return 127;
        }
    }
    write_file("/proc/self/oom_score_adj", "0"); /* best effort, as before the agent wrote it */
    if (dir != NULL && chdir(dir) != 0) {
        fprintf(stderr, "sheesh-runas: %s: ", dir);
        perror("chdir");
        return 127;
    }
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        perror("sheesh-runas");
        return 127;
    }
    if (setresuid(0, 0, 0) == 0) { /* never: the switch must not be undoable */
        fprintf(stderr, "sheesh-runas: could not drop root\n");
        return 127;
    }
    execvp(argv[optind + 2], argv + optind + 2);
    perror(argv[optind + 2]);
    return 127;
}
