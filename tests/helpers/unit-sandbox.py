#!/usr/bin/python3
"""Run a command under the sandbox settings of a systemd unit, without systemd.

    unit-sandbox.py UNIT_FILE WRITABLE_DIR -- COMMAND [ARGS...]

Needs root (it sets up a mount namespace, then drops to the user `nobody`). It applies what
this machine can check without systemd as PID 1, read from the unit's [Service] section:

- SystemCallFilter= (allow and ~deny lines, groups expanded by `systemd-analyze syscall-filter`),
  SystemCallErrorNumber=, SystemCallArchitectures=native, RestrictAddressFamilies= (a seccomp
  filter, loaded through libseccomp as systemd does),
- NoNewPrivileges=, CapabilityBoundingSet= (empty), UMask=, LimitCORE=,
- ProtectProc= and ProcSubset= (a private /proc mounted with hidepid= and subset=),
- ProtectSystem=strict with ReadWritePaths= (the whole tree read-only, WRITABLE_DIR writable),
  ProtectHome=yes (an empty read-only tmpfs over /home and /root).

User= becomes `nobody` (the unit's user does not exist here) and HOME the writable directory. A
checkout in a folder other users cannot enter (mktemp -d: 0700) is made reachable in the sandbox
only (make_reachable).
Not applied: the cgroup settings (MemoryMax=, DevicePolicy=), PrivateTmp=, RestrictNamespaces= and the
other settings systemd implements with namespaces or cgroups this machine does not hand out.
The first line on stderr is `unit-sandbox: ...` with what was applied; then the command runs (exec).
"""
import ctypes
import ctypes.util
import errno
import os
import re
import resource
import socket
import subprocess
import sys

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_DUMPABLE = 38, 24, 4
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (a new syscall: same number everywhere)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4


def SCMP_ACT_ERRNO(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def unreachable_ancestor(path: str) -> str | None:
    """The outermost folder above `path` that other users cannot enter (mktemp -d makes it 0700)."""
    parts = path.split("/")[1:-1]
    for i in range(1, len(parts) + 1):
        folder = "/" + "/".join(parts[:i])
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def make_reachable(paths: list) -> str | None:
    """In this mount namespace only: covers the folder that hides `paths` from other users with an
    empty tmpfs (mode 0755) and binds each path back at its own place, so the unprivileged user
    reaches the checkout wherever it was cloned. Returns the covered folder, if any."""
    blocked = {unreachable_ancestor(path) for path in paths} - {None}
    if not blocked:
        return None
    cover = min(blocked, key=len)
    if any(not other.startswith(cover + "/") and other != cover for other in blocked):
        raise SystemExit(f"unit-sandbox: {sorted(blocked)} are closed to other users; clone into a folder they can enter")
    # Held open across the cover: bound back from /proc/self/fd.
    held = [(path, os.open(path, os.O_PATH)) for path in paths if path.startswith(cover + "/")]
    mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for path, fd in held:
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    return cover


def service_settings(path: str) -> dict:
    settings: dict = {}
    section = None
    for raw in open(path, encoding="utf-8"):
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def syscall_groups() -> dict:
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^@[\w-]+$", line):
            current = groups.setdefault(line, [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names, groups) -> set:
    out = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def allowed_syscalls(lines, groups) -> set:
    """systemd's semantics: the first line decides allow- or deny-list; later lines add or remove."""
    allowed = None
    for line in lines:
        deny = line.startswith("~")
        names = expand(line.lstrip("~").split(), groups)
        if allowed is None:
            if deny:
                raise SystemExit("unit-sandbox: a deny-list-only SystemCallFilter= is not supported")
            allowed = set()
        allowed = allowed - names if deny else allowed | names
    return allowed or set()


def main() -> None:
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        raise SystemExit(__doc__)
    unit, writable, command = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[4:]
    s = service_settings(unit)
    one = lambda key, default=None: s.get(key, [default])[-1]
    groups = syscall_groups()
    allowed = allowed_syscalls(s.get("SystemCallFilter", []), groups)
    if not allowed:
        raise SystemExit("unit-sandbox: the unit has no SystemCallFilter= allow-list")
    families = [getattr(socket, f) for f in " ".join(s.get("RestrictAddressFamilies", [])).split()]
    error_number = getattr(errno, one("SystemCallErrorNumber", "") or "", None)
    nobody = 65534

    # Mounts: private /proc, read-only tree with one writable directory, empty home folders.
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    covered = make_reachable([os.getcwd(), writable])
    proc_options = []
    if one("ProtectProc", "default") != "default":
        proc_options.append(f"hidepid={one('ProtectProc')}")
    if one("ProcSubset", "all") == "pid":
        proc_options.append("subset=pid")
    if one("ProtectSystem") == "strict":
        libc.syscall.restype = ctypes.c_long
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
        check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, attr, ctypes.c_size_t(32)), "mount_setattr /")
        # systemd leaves the API file systems alone: /dev (with /dev/shm) stays writable.
        if os.path.ismount("/dev"):
            clear = (ctypes.c_uint64 * 4)(0, MOUNT_ATTR_RDONLY, 0, 0)
            check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/dev", AT_RECURSIVE, clear, ctypes.c_size_t(32)), "mount_setattr /dev")
        mount(writable, writable, None, MS_BIND)
        mount(None, writable, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    if one("ProtectHome") == "yes":
        for home in ("/home", "/root", "/run/user"):
            if os.path.isdir(home):
                mount("tmpfs", home, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ",".join(proc_options) or None)

    # Credentials: no capabilities, the unprivileged user, no new privileges.
    if one("CapabilityBoundingSet") == "":
        cap = 0
        while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            cap += 1
    os.setgroups([])
    os.setgid(nobody)
    os.setuid(nobody)
    if one("NoNewPrivileges") == "yes":
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if one("UMask"):
        os.umask(int(one("UMask"), 8))
    if one("LimitCORE") == "0":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # System calls: everything else fails with SystemCallErrorNumber (systemd kills without it).
    default_action = SCMP_ACT_ERRNO(error_number) if error_number else 0x80000000  # SCMP_ACT_KILL_PROCESS
    ctx = seccomp.seccomp_init(default_action)
    if not ctx:
        raise SystemExit("unit-sandbox: seccomp_init failed")
    added = 0
    for name in sorted(allowed):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number == -1 or (name == "socket" and families):
            continue  # unknown here, or added below with the family condition
        if seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None) == 0:
            added += 1
    if families and "socket" in allowed:
        number = seccomp.seccomp_syscall_resolve_name(b"socket")
        for family in families:
            cmp = ScmpArgCmp(0, SCMP_CMP_EQ, int(family), 0)
            check(seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 1, ctypes.pointer(cmp)), "seccomp socket rule")
    os.environ["HOME"] = writable
    print(
        f"unit-sandbox: uid {os.getuid()}, {added} system calls allowed (else "
        f"{one('SystemCallErrorNumber') or 'kill'}), socket families {' '.join(s.get('RestrictAddressFamilies', ['any']))}, "
        f"/proc {','.join(proc_options) or 'default'}, read-only / except {writable}"
        + (f"; {covered} (closed to other users) covered, {os.getcwd()} bound back" if covered else ""),
        file=sys.stderr,
        flush=True,
    )
    check(seccomp.seccomp_load(ctx), "seccomp_load")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
