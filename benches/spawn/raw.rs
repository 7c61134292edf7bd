//! The raw spawn limit: the handler started and waited for, with no
//! network, by `fork`, a vfork-style `clone` and `posix_spawn`, serially
//! and from several threads at once. Nothing a super-server does can be
//! faster than this.

use std::ffi::CString;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Fork,
    Vfork,
    PosixSpawn,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Fork, Variant::Vfork, Variant::PosixSpawn];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Fork => "fork+execve",
            Variant::Vfork => "clone(VM|VFORK)+execve",
            Variant::PosixSpawn => "posix_spawn",
        }
    }
}

struct Prepared {
    path: CString,
    argv: [*const libc::c_char; 2],
    envp: [*const libc::c_char; 1],
    devnull: libc::c_int,
}

extern "C" fn vfork_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Prepared` on the suspended parent's frame; the
    // child only makes system calls on it and execs or exits.
    unsafe {
        let p = &*(arg as *const Prepared);
        libc::dup2(p.devnull, 1);
        libc::execve(p.path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        libc::_exit(127)
    }
}

/// Spawns `path` (stdout to /dev/null) and waits for it, `n` times in all
/// from `threads` threads. Returns spawns per second.
pub fn rate(path: &str, variant: Variant, n: usize, threads: usize) -> f64 {
    let t0 = Instant::now();
    let per = n / threads;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| one_thread(path, variant, per));
        }
    });
    (per * threads) as f64 / t0.elapsed().as_secs_f64()
}

fn one_thread(path: &str, variant: Variant, n: usize) {
    let path = CString::new(path).unwrap();
    // SAFETY: opening /dev/null with a NUL-terminated literal.
    let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    assert!(devnull >= 0);
    let p = Prepared {
        argv: [path.as_ptr(), std::ptr::null()],
        envp: [std::ptr::null()],
        path,
        devnull,
    };
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: posix_spawn_file_actions_t is plain data initialized by its
    // init function before use; destroyed below.
    let mut fa: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::posix_spawn_file_actions_init(&mut fa);
        libc::posix_spawn_file_actions_adddup2(&mut fa, devnull, 1);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..n {
        assert!(Instant::now() < deadline, "raw spawn loop took too long");
        // SAFETY (all three): the child makes only dup2/execve/_exit calls
        // on data prepared above, which outlives it.
        let pid = unsafe {
            match variant {
                Variant::Fork => {
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::dup2(devnull, 1);
                        libc::execve(p.path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
                        libc::_exit(127);
                    }
                    pid
                }
                Variant::Vfork => {
                    let top = stack.as_mut_ptr().add(stack.len());
                    let top = top.sub(top as usize % 16);
                    libc::clone(
                        vfork_child,
                        top.cast(),
                        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                        (&p as *const Prepared).cast_mut().cast(),
                    )
                }
                Variant::PosixSpawn => {
                    let mut pid = 0;
                    let r = libc::posix_spawn(
                        &mut pid,
                        p.path.as_ptr(),
                        &fa,
                        std::ptr::null(),
                        p.argv.as_ptr() as *const *mut libc::c_char,
                        p.envp.as_ptr() as *const *mut libc::c_char,
                    );
                    if r == 0 {
                        pid
                    } else {
                        -1
                    }
                }
            }
        };
        assert!(pid > 0, "spawn failed");
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "handler failed: {status}"
        );
    }
    // SAFETY: destroying what was initialized above; closing our fd.
    unsafe {
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::close(devnull);
    }
}
