"""Trusted setup of the code-execution sandbox: namespaces, a private root filesystem,
resource limits, dropped privileges and a seccomp filter (part of the runner's source; see
:mod:`rlfoundry.rewards.sandbox_runner`).

``isolation: namespaces``: the runner ``unshare``s new mount, PID, network, IPC and UTS
namespaces (and a user namespace when not root); PID 1 of the new PID namespace then builds
a root of its own (:func:`build_root`): a tmpfs holding read-only bind mounts of only
``/usr``, ``/lib*``, ``/bin``, ``/sbin``, ``/etc/ld.so.cache`` and the interpreter's prefix
(its ``site-packages`` hidden), ``/dev/{null,zero,random,urandom}``, a fresh ``/proc`` of the
new PID namespace (``hidepid=2``), and the working directory ``/sandbox`` and ``/tmp``, both on
one private, size-limited tmpfs; it ``pivot_root``s into it, detaches the host's tree and
makes ``/`` read-only. Then, in the program's process (:func:`become_program`): resource
limits; root dropped (to ``nobody``, or every capability inside a user namespace);
``no_new_privs``; and the seccomp filter of :func:`seccomp_program`.
"""

import ctypes
import os
import resource
import struct
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP, CLONE_NEWTIME = 0x02000000, 0x00000080
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 4, 38, 22
ROOT_MOUNTS = ("/tmp", "/mnt", "/media", "/srv", "/opt", "/var/tmp")
SYSTEM_DIRS = ("usr", "lib", "lib64", "lib32", "libx32", "bin", "sbin")
DEVICES = ("null", "zero", "random", "urandom")

# seccomp: syscalls refused with EPERM (clone only with namespace flags; clone3: ENOSYS, so
# the C library falls back to clone, whose flags the filter can read)
BLOCKED = ("ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
           "chroot", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf",
           "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module",
           "delete_module", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
           "open_by_handle_at", "name_to_handle_at", "userfaultfd", "io_uring_setup",
           "io_uring_enter", "io_uring_register", "kcmp", "personality", "fsopen", "fsconfig",
           "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "settimeofday",
           "clock_settime", "adjtimex", "sethostname", "setdomainname", "pidfd_getfd",
           "iopl", "ioperm", "vhangup", "lookup_dcookie")
SYSCALLS = {  # name: (x86_64, aarch64); -1 where the architecture has no such call
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "bpf": (321, 280), "perf_event_open": (298, 241),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "syslog": (103, 116), "acct": (163, 89),
    "quotactl": (179, 60), "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "userfaultfd": (323, 282), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "kcmp": (312, 272), "personality": (135, 92),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "move_mount": (429, 429), "open_tree": (428, 428), "mount_setattr": (442, 442),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "adjtimex": (159, 171),
    "sethostname": (170, 161), "setdomainname": (171, 162), "pidfd_getfd": (438, 438),
    "iopl": (172, -1), "ioperm": (173, -1), "vhangup": (153, 58), "lookup_dcookie": (212, 18),
    "clone": (56, 220), "clone3": (435, 435), "ioctl": (16, 29),
}
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}
NAMESPACE_FLAGS = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
                   | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWTIME)
TIOCSTI = 0x5412
EPERM, ENOSYS = 1, 38

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """The sandbox could not be built (reported on the setup pipe; not the program's fault)."""


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def c_path(path):
    return None if path is None else os.fsencode(path)


def mount(source, target, fstype=None, flags=0, data=None):
    check(libc.mount(c_path(source), c_path(target), c_path(fstype), ctypes.c_ulong(flags),
                     c_path(data)), f"mount {fstype or source} on {target}")


# ------------------------------------------------------------------------ namespaces, root


def enter_namespaces(job):
    """Unshare every namespace but the cgroup one; not root (or ``user_namespace``): also a
    user namespace mapping us to root inside it, so the rest is allowed."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    userns = uid != 0 or job.get("user_namespace")
    if userns:
        flags |= CLONE_NEWUSER
    check(libc.unshare(ctypes.c_int(flags)), "unshare")
    if userns:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                           ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def interpreter_dirs():
    """Host directories the interpreter needs, outside the system directories."""
    wanted = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
              os.path.dirname(os.path.realpath(sys.executable)),
              os.path.dirname(os.path.realpath(os.__file__))}
    system = tuple(os.path.realpath("/" + d) + "/" for d in SYSTEM_DIRS)
    keep = sorted(p for p in wanted if not (p + "/").startswith(system))
    return [p for p in keep if not any(p.startswith(q + "/") for q in keep if q != p)]


def pick_mount_point(sources):
    for path in ROOT_MOUNTS:
        if os.path.isdir(path) and not os.path.islink(path) and not any(
                s == path or s.startswith(path + "/") for s in sources):
            return path
    raise SetupError(f"no directory to build the sandbox root on (tried {ROOT_MOUNTS})")


def bind(source, target, writable=False):
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY)
    mount(None, target, None, flags | (0 if source.startswith("/dev/") else MS_NODEV))


def build_root(job):
    """Make a private root of read-only system and interpreter files, /dev, /proc and a
    private /tmp, and move into it (this process is PID 1 of the new PID namespace)."""
    limits = job["limits"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    extra = interpreter_dirs()
    root = pick_mount_point(extra)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=512,mode=0755")
    for name in SYSTEM_DIRS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), root + host)
        elif os.path.isdir(host):
            bind(host, root + host)
    for path in extra:
        bind(path, root + path)
        hidden = os.path.join(path, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                              "site-packages")
        if os.path.isdir(hidden):
            mount("tmpfs", root + hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    if os.path.exists("/etc/ld.so.cache"):
        bind("/etc/ld.so.cache", root + "/etc/ld.so.cache")
    for name in DEVICES:
        bind(f"/dev/{name}", f"{root}/dev/{name}", writable=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.mkdir(root + "/proc", 0o555)
    try:
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    except SetupError:
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    uid, gid = (job["uid"], job["gid"]) if job["uid"] is not None else (0, 0)
    scratch = root + "/.scratch"  # one tmpfs (one size limit) for the working dir and /tmp
    os.mkdir(scratch, 0o700)
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={limits['tmp_bytes']},nr_inodes=4096,mode=0700")
    for name, mode in (("sandbox", 0o700), ("tmp", 0o1777)):
        os.mkdir(f"{scratch}/{name}")
        os.chmod(f"{scratch}/{name}", mode)
        os.chown(f"{scratch}/{name}", uid, gid)
        os.mkdir(f"{root}/{name}", 0o755)
        mount(f"{scratch}/{name}", f"{root}/{name}", None, MS_BIND)
    check(libc.umount2(c_path(scratch), MNT_DETACH), "detach the scratch tmpfs")
    os.rmdir(scratch)
    os.chdir(root)
    check(libc.syscall(SYSCALLS["pivot_root"][ARCHES[os.uname().machine][0]], b".", b"."),
          "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the host's tree")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    libc.sethostname(b"sandbox", 7)


# ------------------------------------------------------------------------------- seccomp


def seccomp_program(machine):
    """A classic-BPF seccomp filter for this architecture (see BLOCKED)."""
    column, arch = ARCHES[machine]
    nr = {name: numbers[column] for name, numbers in SYSCALLS.items() if numbers[column] >= 0}
    LD, JEQ, JSET, JGE, RET = 0x20, 0x15, 0x45, 0x35, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    errno = 0x00050000
    code = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI: numbers with bit 30 set
        code += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, errno | EPERM)]
    for name in BLOCKED:
        if name in nr:
            code += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, errno | EPERM)]
    code += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, errno | ENOSYS),
             (JEQ, 0, 4, nr["clone"]), (LD, 0, 0, 16), (JSET, 0, 1, NAMESPACE_FLAGS),
             (RET, 0, 0, errno | EPERM), (RET, 0, 0, ALLOW),
             (JEQ, 0, 3, nr["ioctl"]), (LD, 0, 0, 24), (JEQ, 0, 1, TIOCSTI),
             (RET, 0, 0, errno | EPERM), (RET, 0, 0, ALLOW)]
    return b"".join(struct.pack("HBBI", *ins) for ins in code)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp():
    machine = os.uname().machine
    if machine not in ARCHES:
        raise SetupError(f"no seccomp filter for the {machine} architecture")
    program = seccomp_program(machine)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "seccomp")


# ------------------------------------------------------------------------------ landlock

LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


class RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi():
    """The kernel's Landlock ABI version (0: none)."""
    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(abi, 0)


def install_landlock(workdir, read_paths):
    """Landlock (``process`` mode): files only under ``workdir`` (anything) and
    ``read_paths`` (read, execute); with ABI 4+ no TCP bind or connect; with ABI 6+ no
    abstract UNIX socket or signal outside the sandbox. Needs ``no_new_privs``."""
    abi = landlock_abi()
    if abi < 1:
        raise SetupError("landlock: not supported by this kernel")
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (
        FS_IOCTL_DEV if abi >= 5 else 0)
    attr = RulesetAttr(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        check(-1, "landlock_create_ruleset")
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    rules = [(workdir, fs), ("/dev/null", FS_READ_FILE | FS_WRITE_FILE)]
    rules += [(path, read) for path in read_paths]
    try:
        for path, rights in rules:
            if not os.path.exists(path):
                continue
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    rights &= FILE_RIGHTS
                rule = PathBeneath(rights & fs, fd)
                check(libc.syscall(LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0),
                      f"landlock rule for {path}")
            finally:
                os.close(fd)
        check(libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def landlock_read_paths():
    system = [os.path.realpath("/" + d) for d in SYSTEM_DIRS]
    devices = [f"/dev/{name}" for name in DEVICES if name != "null"]
    return system + interpreter_dirs() + ["/etc/ld.so.cache"] + devices


# ------------------------------------------------------------------- the program's process


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def drop_capabilities():
    """Inside a user namespace (not root outside): keep the uid, drop every capability."""
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; fails past the last capability
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), data), "capset")


def set_limits(limits):
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)


def become_program(job):
    """Limits, identity, seccomp: the last steps before model-written code runs."""
    for name in job["preload"]:
        __import__(name)
    set_limits(job["limits"])
    os.chdir(job["workdir"])
    if job["uid"] is not None:  # the trainer is root (and no user namespace was made)
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
    elif os.geteuid() == 0:  # root inside a user namespace only
        drop_capabilities()
    n = job["limits"]["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if job.get("landlock"):
        install_landlock(os.path.realpath(job["workdir"]), landlock_read_paths())
    if job["seccomp"]:
        install_seccomp()


def in_fork(fn):
    """Run ``fn`` in a throwaway child: None if it worked, else why not."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()
            os._exit(0)
        except BaseException as e:
            os.write(w, f"{type(e).__name__}: {e}".encode()[:2000])
            os._exit(1)
    os.close(w)
    text = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        text += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return text.decode(errors="replace") or f"exit status {status}"


def probe(job):
    """Which protections work here, each tried in a throwaway child."""
    def namespaces():
        enter_namespaces(job)
        error = in_fork(lambda: (build_root(job), os.listdir("/sandbox")))
        if error:
            raise SetupError(error)

    def setuid():
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])

    def landlock():
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        install_landlock("/", [])

    tries = {"rlimits": lambda: set_limits(job["limits"]), "seccomp": install_seccomp,
             "namespaces": namespaces, "landlock": landlock}
    if job["uid"] is not None:
        tries["setuid"] = setuid
    found = {}
    for name, fn in tries.items():
        error = in_fork(fn)
        found[name] = error is None
        if error:
            found[name + "_error"] = error
    return found
