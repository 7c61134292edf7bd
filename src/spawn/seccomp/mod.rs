//! A unit's system call restrictions as one classic BPF program for
//! `seccomp(SECCOMP_SET_MODE_FILTER)`, built in the parent; the child only
//! installs it, as its last step before `execve`.
//!
//! Owns: turning `SystemCallFilter=`, `SystemCallArchitectures=`,
//! `RestrictNamespaces=`, `RestrictAddressFamilies=`, `RestrictRealtime=`,
//! `RestrictSUIDSGID=`, `LockPersonality=`, `MemoryDenyWriteExecute=` and
//! the system call halves of `ProtectClock=`, `ProtectHostname=`,
//! `ProtectKernelModules=` and `ProtectKernelLogs=` into instructions.
//! Must not: install anything (the child does).
//!
//! The program: a system call of another architecture (or x86-64's x32
//! ABI) kills the process whenever a filter is installed (systemd would
//! filter those ABIs too; doorman knows only the native table); then the
//! argument checks of the `Restrict*=` directives, each denying with
//! `EPERM` (`EAFNOSUPPORT` for address families); then the allow or deny
//! list, whose denials get `SystemCallErrorNumber=` or kill the process
//! (`SIGSYS`), as systemd does. In an allow list, system calls newer than
//! the table fail with `ENOSYS`, so that the C library falls back.

mod tables;

use crate::config::sandbox::Sandbox;

/// One instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: u32 = 0;

/// Whether this architecture has a table (elsewhere a unit asking for a
/// filter cannot be served).
pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// A system call's number here, by name.
pub fn number(name: &str) -> Option<u32> {
    tables::NATIVE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, nr)| nr)
}

fn highest() -> u32 {
    tables::NATIVE.iter().map(|&(_, nr)| nr).max().unwrap_or(0)
}

/// A condition on one argument's low 32 bits (flags, modes and policies
/// all live there).
#[derive(Clone, Debug)]
enum Cond {
    /// `(arg & mask) != 0`.
    Any(u32, u32),
    /// `(arg & mask) == mask`.
    All(u32, u32),
    /// `(arg & mask)` is none of the values.
    NotIn(u32, u32, Vec<u32>),
    /// `arg` is one of the values.
    In(u32, Vec<u32>),
}

/// Deny system call `nr` with `ret` when every condition holds.
#[derive(Clone, Debug)]
struct Rule {
    nr: u32,
    conds: Vec<Cond>,
    ret: u32,
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

/// The rules of the argument-checking directives.
fn rules(sb: &Sandbox) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut deny = |name: &str, conds: Vec<Cond>, ret: u32| {
        if let Some(nr) = number(name) {
            out.push(Rule { nr, conds, ret });
        }
    };
    let eperm = errno(libc::EPERM);
    if sb.restrict_realtime {
        // Policy (argument 1) other than OTHER, BATCH, IDLE, with
        // SCHED_RESET_ON_FORK masked off.
        deny(
            "sched_setscheduler",
            vec![Cond::NotIn(1, !0x4000_0000, vec![0, 3, 5])],
            eperm,
        );
    }
    if sb.lock_personality {
        deny(
            "personality",
            vec![Cond::NotIn(0, !0, vec![0, 0xffff_ffff])],
            eperm,
        );
    }
    if sb.restrict_suid_sgid {
        // mode_t is 16 bits wide on some targets.
        #[allow(clippy::useless_conversion)]
        let sid = u32::from(libc::S_ISUID | libc::S_ISGID);
        let creat = libc::O_CREAT as u32;
        for (name, arg) in [
            ("chmod", 1),
            ("fchmod", 1),
            ("fchmodat", 2),
            ("fchmodat2", 2),
            ("mkdir", 1),
            ("mkdirat", 2),
            ("mknod", 1),
            ("mknodat", 2),
            ("creat", 1),
        ] {
            deny(name, vec![Cond::Any(arg, sid)], eperm);
        }
        deny("open", vec![Cond::Any(1, creat), Cond::Any(2, sid)], eperm);
        deny(
            "openat",
            vec![Cond::Any(2, creat), Cond::Any(3, sid)],
            eperm,
        );
        // Its flags are in a structure the filter cannot read.
        deny("openat2", vec![], errno(libc::ENOSYS));
    }
    if sb.memory_deny_write_execute {
        let (w, x) = (libc::PROT_WRITE as u32, libc::PROT_EXEC as u32);
        deny("mmap", vec![Cond::All(2, w | x)], eperm);
        deny("mprotect", vec![Cond::Any(2, x)], eperm);
        deny("pkey_mprotect", vec![Cond::Any(2, x)], eperm);
        deny("shmat", vec![Cond::Any(2, libc::SHM_EXEC as u32)], eperm);
    }
    if let Some(allowed) = sb.namespaces {
        let forbidden = (crate::config::sandbox::all_namespaces() & !allowed) as u32;
        if forbidden != 0 {
            deny("unshare", vec![Cond::Any(0, forbidden)], eperm);
            deny("clone", vec![Cond::Any(0, forbidden)], eperm);
            deny("clone3", vec![], errno(libc::ENOSYS));
            deny("setns", vec![Cond::In(1, vec![0])], eperm);
            deny("setns", vec![Cond::Any(1, forbidden)], eperm);
        }
    }
    if let Some((allow, fams)) = &sb.address_families {
        let fams: Vec<u32> = fams.iter().map(|&f| f as u32).collect();
        let c = if *allow {
            Cond::NotIn(0, !0, fams)
        } else {
            Cond::In(0, fams)
        };
        deny("socket", vec![c], errno(libc::EAFNOSUPPORT));
    }
    let mut plain = |names: &[&str]| {
        for n in names {
            deny(n, vec![], eperm);
        }
    };
    if sb.protect_clock {
        plain(&[
            "clock_settime",
            "clock_adjtime",
            "settimeofday",
            "adjtimex",
            "stime",
        ]);
    }
    if sb.protect_hostname {
        plain(&["sethostname", "setdomainname"]);
    }
    if sb.protect_kernel_modules {
        plain(&["init_module", "finit_module", "delete_module"]);
    }
    if sb.protect_kernel_logs {
        plain(&["syslog"]);
    }
    out
}

/// The whole program for `sb`, or `None` if it asks for no filter.
pub fn program(sb: &Sandbox) -> Option<Vec<Insn>> {
    if !sb.seccomp() {
        return None;
    }
    let ins = |code, jt, jf, k| Insn { code, jt, jf, k };
    let mut p = vec![
        ins(LD_W_ABS, 0, 0, ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, NR),
    ];
    if cfg!(target_arch = "x86_64") {
        // The x32 ABI: same architecture word, numbers with bit 30 set.
        p.push(ins(JGE_K, 0, 1, 0x4000_0000));
        p.push(ins(RET_K, 0, 0, RET_KILL_PROCESS));
    }
    for r in rules(sb) {
        // nr != r.nr: skip the block. The block loads arguments, so it
        // ends by loading the number again.
        let mut block: Vec<Insn> = Vec::new();
        // Each condition jumps past the block's return when it does not
        // hold; those jumps are patched once the return's place is known.
        enum Patch {
            Jt(usize),
            Jf(usize),
            Ja(usize),
        }
        let mut fails: Vec<Patch> = Vec::new();
        for c in &r.conds {
            match c {
                Cond::Any(a, m) => {
                    block.push(ins(LD_W_ABS, 0, 0, arg_lo(*a)));
                    block.push(ins(JSET_K, 0, 0, *m));
                    fails.push(Patch::Jf(block.len() - 1));
                }
                Cond::All(a, m) => {
                    block.push(ins(LD_W_ABS, 0, 0, arg_lo(*a)));
                    block.push(ins(ALU_AND_K, 0, 0, *m));
                    block.push(ins(JEQ_K, 0, 0, *m));
                    fails.push(Patch::Jf(block.len() - 1));
                }
                Cond::NotIn(a, m, vals) => {
                    block.push(ins(LD_W_ABS, 0, 0, arg_lo(*a)));
                    if *m != !0 {
                        block.push(ins(ALU_AND_K, 0, 0, *m));
                    }
                    // Equal to one of them: the condition does not hold.
                    for v in vals {
                        block.push(ins(JEQ_K, 0, 0, *v));
                        fails.push(Patch::Jt(block.len() - 1));
                    }
                }
                Cond::In(a, vals) => {
                    block.push(ins(LD_W_ABS, 0, 0, arg_lo(*a)));
                    // Equal to one: holds (on to the next condition, past
                    // the jump that follows); none: does not.
                    let n = vals.len();
                    for (i, v) in vals.iter().enumerate() {
                        block.push(ins(JEQ_K, (n - i) as u8, 0, *v));
                    }
                    block.push(ins(JA, 0, 0, 0));
                    fails.push(Patch::Ja(block.len() - 1));
                }
            }
        }
        block.push(ins(RET_K, 0, 0, r.ret));
        let after = block.len();
        for f in fails {
            match f {
                Patch::Jt(i) => block[i].jt = (after - i - 1) as u8,
                Patch::Jf(i) => block[i].jf = (after - i - 1) as u8,
                Patch::Ja(i) => block[i].k = (after - i - 1) as u32,
            }
        }
        if !r.conds.is_empty() {
            block.push(ins(LD_W_ABS, 0, 0, NR));
        }
        p.push(ins(JEQ_K, 0, block.len() as u8, r.nr));
        p.extend(block);
    }
    let deny_ret = sb.syscall_errno.map_or(RET_KILL_PROCESS, errno);
    match &sb.syscalls {
        None => p.push(ins(RET_K, 0, 0, RET_ALLOW)),
        Some(f) => {
            let mut nrs: Vec<u32> = f.names.iter().filter_map(|n| number(n)).collect();
            if f.allow {
                // What the child itself still calls after installing the
                // filter, and what every process needs to end.
                for n in [
                    "execve",
                    "exit",
                    "exit_group",
                    "rt_sigreturn",
                    "rt_sigprocmask",
                ] {
                    nrs.extend(number(n));
                }
            }
            nrs.sort_unstable();
            nrs.dedup();
            if f.allow {
                p.push(ins(JGE_K, 0, 1, highest() + 1));
                p.push(ins(RET_K, 0, 0, errno(libc::ENOSYS)));
            }
            let (hit, miss) = if f.allow {
                (RET_ALLOW, deny_ret)
            } else {
                (deny_ret, RET_ALLOW)
            };
            for nr in nrs {
                p.push(ins(JEQ_K, 0, 1, nr));
                p.push(ins(RET_K, 0, 0, hit));
            }
            p.push(ins(RET_K, 0, 0, miss));
        }
    }
    Some(p)
}

/// Interprets `prog` for one system call (tests: what the kernel would
/// decide), with its arguments' low words.
#[cfg(test)]
pub fn run(prog: &[Insn], nr: u32, arch: u32, args: [u32; 6]) -> u32 {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                a = match i.k {
                    NR => nr,
                    ARCH => arch,
                    k if k >= 16 && (k - 16) % 8 == 0 => args[((k - 16) / 8) as usize],
                    _ => 0,
                }
            }
            ALU_AND_K => a &= i.k,
            JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
            JGE_K => pc += if a >= i.k { i.jt } else { i.jf } as usize,
            JSET_K => pc += if a & i.k != 0 { i.jt } else { i.jf } as usize,
            JA => pc += i.k as usize,
            RET_K => return i.k,
            c => panic!("unknown instruction {c:#x}"),
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::config::sandbox::merge_syscall_filter;

    fn nr(n: &str) -> u32 {
        number(n).unwrap()
    }

    #[test]
    fn the_program_decides_as_the_directives_say() {
        let mut sb = Sandbox {
            native_only: true,
            restrict_realtime: true,
            lock_personality: true,
            memory_deny_write_execute: true,
            restrict_suid_sgid: true,
            namespaces: Some(libc::CLONE_NEWNS as u64),
            address_families: Some((true, vec![libc::AF_UNIX, libc::AF_INET])),
            syscall_errno: Some(libc::EPERM),
            ..Sandbox::default()
        };
        sb.syscalls = merge_syscall_filter(None, "@system-service").unwrap();
        let p = program(&sb).unwrap();
        assert!(p.len() < 4096);
        let run = |n: &str, args: [u32; 6]| run(&p, nr(n), AUDIT_ARCH, args);
        let z = [0; 6];
        assert_eq!(run("read", z), RET_ALLOW);
        assert_eq!(
            run("reboot", z),
            errno(libc::EPERM),
            "not in @system-service"
        );
        assert_eq!(run("mount", z), errno(libc::EPERM));
        // Another architecture, or x32: killed.
        assert_eq!(super::run(&p, 0, 0x4000_0003, z), RET_KILL_PROCESS);
        assert_eq!(super::run(&p, 0x4000_0000, AUDIT_ARCH, z), RET_KILL_PROCESS);
        // Newer than the table: ENOSYS, for the C library to fall back.
        assert_eq!(super::run(&p, 1000, AUDIT_ARCH, z), errno(libc::ENOSYS));
        // RestrictRealtime: FIFO refused, OTHER (with reset-on-fork) fine.
        assert_eq!(
            run("sched_setscheduler", [0, 1, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            run("sched_setscheduler", [0, 0x4000_0000, 0, 0, 0, 0]),
            RET_ALLOW
        );
        // LockPersonality: a query or PER_LINUX only.
        assert_eq!(run("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run("personality", [0x0040_0000, 0, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        // MemoryDenyWriteExecute.
        assert_eq!(run("mmap", [0, 0, 3, 0, 0, 0]), RET_ALLOW, "read+write");
        assert_eq!(
            run("mmap", [0, 0, 6, 0, 0, 0]),
            errno(libc::EPERM),
            "write+exec"
        );
        assert_eq!(run("mprotect", [0, 0, 5, 0, 0, 0]), errno(libc::EPERM));
        // RestrictSUIDSGID: a set-uid chmod and O_CREAT with one.
        assert_eq!(run("fchmodat", [0, 0, 0o4755, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(run("fchmodat", [0, 0, 0o755, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run("openat", [0, 0, 0o100, 0o2755, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            run("openat", [0, 0, 0, 0o2755, 0, 0]),
            RET_ALLOW,
            "no O_CREAT"
        );
        // RestrictNamespaces=mnt.
        assert_eq!(
            run("unshare", [libc::CLONE_NEWNS as u32, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run("unshare", [libc::CLONE_NEWNET as u32, 0, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(run("setns", [3, 0, 0, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(run("clone3", z), errno(libc::ENOSYS));
        // RestrictAddressFamilies.
        assert_eq!(
            run("socket", [libc::AF_INET as u32, 1, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run("socket", [libc::AF_NETLINK as u32, 3, 0, 0, 0, 0]),
            errno(libc::EAFNOSUPPORT)
        );
        // A deny list without an error number kills.
        let sb = Sandbox {
            syscalls: merge_syscall_filter(None, "~@mount").unwrap(),
            ..Sandbox::default()
        };
        let p = program(&sb).unwrap();
        assert_eq!(super::run(&p, nr("mount"), AUDIT_ARCH, z), RET_KILL_PROCESS);
        assert_eq!(super::run(&p, nr("read"), AUDIT_ARCH, z), RET_ALLOW);
        assert!(program(&Sandbox::default()).is_none());
    }
}
