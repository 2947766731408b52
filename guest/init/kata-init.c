/*
 * kata-init: PID 1 of the kata-ts guest root filesystem (/sbin/init).
 *
 * The initramfs /init has already mounted /proc, /sys and /dev (devtmpfs) and
 * tmpfs on /run and /tmp, then switch_root'ed here. This program:
 *   1. mounts devpts on /dev/pts, tmpfs on /dev/shm, cgroup2 on /sys/fs/cgroup
 *      and enables the cpu/memory/pids/io controllers for children;
 *   2. starts the agent: /usr/bin/node /usr/lib/kata-agent/agent.js with a
 *      fixed environment, stdout/stderr on /dev/console;
 *   3. reaps every child forever (orphans reparent to PID 1);
 *   4. powers the VM off when the agent exits (KATA_AGENT_EXITED status=<n>)
 *      or when it receives SIGTERM/SIGINT (SIGINT is what Ctrl-Alt-Del sends).
 *
 * Built with `gcc -static -Os` by guest/build.sh. No libc beyond the basics.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define AGENT_NODE "/usr/bin/node"
#define AGENT_SCRIPT "/usr/lib/kata-agent/agent.js"
#define GUEST_PATH "/usr/sbin:/usr/bin:/sbin:/bin"

static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	/* stderr is /dev/console; a short write to the console is not worth retrying. */
	ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
	(void)w;
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Only reached if the platform cannot power off: reboot instead, so a
	 * QEMU started with -no-reboot still exits rather than hanging. */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

/* Mount unless the target already has something mounted (EBUSY is fine). */
static void mount_one(const char *src, const char *dst, const char *type,
		      unsigned long flags, const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) != 0 && errno != EBUSY)
		say("kata-init: mount %s on %s: %s\n", type, dst, strerror(errno));
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t w = write(fd, text, strlen(text));
	(void)w;
	close(fd);
}

static void enable_controllers(void)
{
	/* One write per controller: a single write fails as a whole if any
	 * controller is missing. */
	static const char *const ctl[] = { "+cpu", "+memory", "+pids", "+io", "+cpuset" };
	for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++)
		write_file("/sys/fs/cgroup/cgroup.subtree_control", ctl[i]);
}

static void setup_console(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
}

static pid_t start_agent(const sigset_t *orig)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	sigprocmask(SIG_SETMASK, orig, NULL);
	setsid();
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		if (null != STDIN_FILENO)
			close(null);
	}
	char *const argv[] = { AGENT_NODE, AGENT_SCRIPT, NULL };
	char *const envp[] = {
		"NODE_PATH=/usr/lib/kata-agent/node_modules",
		"UV_THREADPOOL_SIZE=8",
		"HOME=/root",
		"PATH=" GUEST_PATH,
		NULL,
	};
	chdir("/");
	execve(AGENT_NODE, argv, envp);
	say("KATA_AGENT_EXITED status=127 (exec %s: %s)\n", AGENT_NODE, strerror(errno));
	_exit(127);
}

int main(void)
{
	if (getpid() != 1) {
		say("kata-init: must run as PID 1\n");
		return 1;
	}
	setup_console();
	setenv("PATH", GUEST_PATH, 1);
	umask(022);

	/* Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting. */
	reboot(RB_DISABLE_CAD);

	mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		  "newinstance,ptmxmode=0666,mode=0620,gid=5");
	/* /dev/ptmx must point at this devpts instance. */
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") != 0)
		say("kata-init: /dev/ptmx: %s\n", strerror(errno));
	mount_one("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_one("cgroup2", "/sys/fs/cgroup", "cgroup2",
		  MS_NOSUID | MS_NODEV | MS_NOEXEC, "nsdelegate");
	enable_controllers();

	sigset_t mask, orig;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGPWR);
	sigprocmask(SIG_BLOCK, &mask, &orig);

	pid_t agent = start_agent(&orig);
	if (agent < 0) {
		say("KATA_AGENT_EXITED status=-1 (fork: %s)\n", strerror(errno));
		power_off();
	}

	for (;;) {
		siginfo_t si;
		int sig = sigwaitinfo(&mask, &si);
		if (sig < 0)
			continue;
		if (sig == SIGTERM || sig == SIGINT || sig == SIGPWR) {
			say("kata-init: signal %d, powering off\n", sig);
			if (agent > 0)
				kill(agent, SIGTERM);
			power_off();
		}
		if (sig != SIGCHLD)
			continue;
		/* Signals coalesce: reap everything that is ready. */
		for (;;) {
			int status;
			pid_t pid = waitpid(-1, &status, WNOHANG);
			if (pid <= 0)
				break;
			if (pid != agent)
				continue;
			int code = WIFEXITED(status) ? WEXITSTATUS(status)
						     : 128 + WTERMSIG(status);
			say("KATA_AGENT_EXITED status=%d\n", code);
			power_off();
		}
	}
}
