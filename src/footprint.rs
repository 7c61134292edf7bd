//! Keeping an idle doorman small.
//!
//! After a configuration is loaded, most of what start-up touched is never
//! needed again: the parsers, the name-service modules, most of libc.
//! Three things are given back:
//!
//! - free heap memory, with `malloc_trim`;
//! - the page-table entries of clean, file-backed, read-only mappings
//!   (program text, read-only data, shared libraries), with
//!   `MADV_DONTNEED`. Such a page is an unmodified copy of its file: the
//!   kernel may drop it at any time under memory pressure, and the next
//!   touch maps it again from the page cache. Doing it at once only stops
//!   an idle daemon from being counted for code it ran once. Mappings
//!   holding any private (copy-on-write) page are left alone: for them
//!   `MADV_DONTNEED` would throw modified contents away (RELRO is the case
//!   in point).
//!
//! - the main stack below the frame that gives memory back: start-up runs
//!   deeper than the loop ever does (its frames are gone by then: see
//!   `main.rs`). The pages below the stack pointer hold nothing live in a
//!   process with one thread and no signal handlers (signals are read
//!   from a signalfd): `MADV_DONTNEED` drops them and the next call that
//!   reaches that deep gets zero pages.
//!
//! Once the first file page is gone, every instruction run until the
//! loop's wait maps its page back in, and with it the kernel's
//! fault-around window (64 KiB of the file around it; `MADV_RANDOM` does
//! not turn that off). So the giving back itself runs no libc: the
//! `madvise` calls are made with the system-call instruction from this
//! frame, and nothing after them allocates or asks libc anything.
//! Measured with one service (`-q`, 0.5 s after start, five runs): libc's
//! text came back as 128 KiB in four runs of five when the calls went
//! through libc's wrapper (`VmRSS` 460-524 KiB); through the instruction,
//! only the wait's own 64 KiB window does (388-456 KiB).

use std::fs::File;
use std::io::{Read, Seek};

/// `/proc/self/smaps`, opened once (close-on-exec) and read again from
/// the start each time: giving memory back opens no file descriptor.
#[derive(Debug)]
pub struct Footprint {
    smaps: Option<File>,
    page: usize,
}

impl Footprint {
    pub fn new() -> Footprint {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Footprint {
            smaps: File::open("/proc/self/smaps").ok(),
            page: if page > 0 { page as usize } else { 4096 },
        }
    }

    /// Gives back free heap, the pages of clean file mappings and the
    /// stack below this frame.
    pub fn release(&mut self) {
        // The ranges are copied to the stack and every allocation is freed
        // before the heap is trimmed and the first page goes: what runs
        // after that maps pages back in.
        let mut ranges = [(0usize, 0usize); 256];
        let mut n = 0;
        if let Some(maps) = self.smaps.as_mut().and_then(read_smaps) {
            for r in clean_file_mappings(&maps)
                .into_iter()
                .take(ranges.len() - 1)
            {
                ranges[n] = r;
                n += 1;
            }
            if let Some((start, top)) = stack_mapping(&maps) {
                // The address of a local stands for the stack pointer:
                // this frame and every caller's lie above it. The margin
                // keeps the frames of the calls made from here on (the
                // loop's wait) out of the range. Only on the main thread
                // (the daemon's only one): a thread of a test harness has
                // its stack elsewhere, and [stack] is then left alone.
                let here = std::ptr::addr_of!(ranges) as usize;
                let end = here.saturating_sub(STACK_MARGIN) & !(self.page - 1);
                if (start..top).contains(&here) && end > start {
                    ranges[n] = (start, end);
                    n += 1;
                }
            }
        }
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
        for &(start, end) in &ranges[..n] {
            // SAFETY: each range is either a whole mapping of this process,
            // backed by a file, not writable and holding no private page
            // (checked from smaps just now; nothing else runs in this
            // process to change that), so dropping its page-table entries
            // loses no data and the next access maps the same file page
            // again; or the part of this thread's stack STACK_MARGIN below
            // every live frame, where nothing is in use (one thread, no
            // signal handlers) and a page comes back zeroed if a deeper
            // call reaches it.
            unsafe { madvise_dontneed(start, end - start) };
        }
    }
}

/// What is kept below the frame of [`Footprint::release`] when the stack is
/// given back: room for the calls made from there on.
const STACK_MARGIN: usize = 16 * 1024;

/// `madvise(addr, len, MADV_DONTNEED)` without a call into libc (see the
/// module's notes); its result is not needed: a range that could not be
/// dropped stays as it was.
///
/// # Safety
/// As `madvise(2)` with `MADV_DONTNEED`: the range's contents must not be
/// needed.
#[inline(always)]
unsafe fn madvise_dontneed(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    core::arch::asm!(
        "syscall",
        inlateout("rax") libc::SYS_madvise as usize => _,
        in("rdi") addr,
        in("rsi") len,
        in("rdx") libc::MADV_DONTNEED as usize,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    #[cfg(target_arch = "aarch64")]
    core::arch::asm!(
        "svc 0",
        in("x8") libc::SYS_madvise as usize,
        inlateout("x0") addr => _,
        in("x1") len,
        in("x2") libc::MADV_DONTNEED as usize,
        options(nostack),
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED);
}

/// The range of the `[stack]` mapping in `/proc/self/smaps`.
fn stack_mapping(smaps: &str) -> Option<(usize, usize)> {
    let line = smaps.lines().find(|l| l.ends_with(" [stack]"))?;
    let (a, b) = line.split_whitespace().next()?.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

fn read_smaps(f: &mut File) -> Option<String> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    Some(s)
}

/// The address ranges of `/proc/self/smaps` entries that are file-backed,
/// not writable, resident in part, and hold no anonymous page.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // (range, candidate, rss seen, anonymous seen)
    let mut cur: Option<((usize, usize), bool, u64, u64)> = None;
    let mut flush = |cur: &mut Option<((usize, usize), bool, u64, u64)>| {
        if let Some((range, ok, rss, anon)) = cur.take() {
            if ok && rss > 0 && anon == 0 {
                out.push(range);
            }
        }
    };
    for line in smaps.lines() {
        if let Some((range, ok)) = header(line) {
            flush(&mut cur);
            cur = Some((range, ok, 0, u64::MAX));
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        if let Some(v) = field_kb(line, "Rss:") {
            c.2 = v;
        } else if let Some(v) = field_kb(line, "Anonymous:") {
            c.3 = v;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            // Locked or I/O mappings are never touched.
            if flags
                .split_whitespace()
                .any(|f| matches!(f, "lo" | "io" | "pf" | "dd"))
            {
                c.1 = false;
            }
        }
    }
    flush(&mut cur);
    out
}

/// A mapping's header line: its range, and whether it is a file mapping
/// that is not writable and not shared.
fn header(line: &str) -> Option<((usize, usize), bool)> {
    let mut f = line.split_whitespace();
    let range = f.next()?;
    let (a, b) = range.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    let perms = f.next()?.as_bytes();
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (f.next()?, f.next()?, f.next()?);
    let path = f.next().unwrap_or("");
    let ok = perms[1] == b'-' && perms[3] == b'p' && path.starts_with('/') && end > start;
    Some(((start, end), ok))
}

fn field_kb(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0a1e00000-55d0a1e26000 r--p 00000000 08:01 131 /usr/sbin/doorman
Size:                152 kB
Rss:                 152 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0a1e26000-55d0a1f00000 r-xp 00026000 08:01 131 /usr/sbin/doorman
Rss:                 600 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
55d0a1f00000-55d0a1f10000 r--p 00100000 08:01 131 /usr/sbin/doorman
Rss:                  64 kB
Anonymous:            64 kB
VmFlags: rd mr mw me ac sd
55d0a1f10000-55d0a1f12000 rw-p 00110000 08:01 131 /usr/sbin/doorman
Rss:                   8 kB
Anonymous:             8 kB
7f0000000000-7f0000010000 r-xp 00000000 08:01 200 /usr/lib/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
7f0000010000-7f0000020000 r--s 00000000 08:01 201 /dev/shm/x
Rss:                  64 kB
Anonymous:             0 kB
7f0000020000-7f0000030000 r-xp 00000000 08:01 202 /usr/lib/locked.so
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7f0000040000-7f0000050000 r--p 00000000 00:00 0
Rss:                  64 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings() {
        assert_eq!(
            clean_file_mappings(SAMPLE),
            vec![
                (0x55d0a1e00000, 0x55d0a1e26000),
                (0x55d0a1e26000, 0x55d0a1f00000)
            ]
        );
    }

    #[test]
    fn the_stack_mapping_is_found_by_its_name() {
        let s = "7f0000000000-7f0000010000 r-xp 00000000 08:01 200 /usr/lib/x.so\n\
                 Rss: 8 kB\n\
                 7ffd0a000000-7ffd0a021000 rw-p 00000000 00:00 0                  [stack]\n\
                 Rss: 44 kB\n";
        assert_eq!(stack_mapping(s), Some((0x7ffd0a000000, 0x7ffd0a021000)));
        assert_eq!(stack_mapping("7f00-7f10 rw-p 0 00:00 0 [heap]\n"), None);
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_left_alone() {
        let s = "7f0000000000-7f0000010000 r-xp 00000000 08:01 200 /usr/lib/x.so\nRss: 8 kB\n";
        assert!(clean_file_mappings(s).is_empty());
    }

    #[test]
    fn this_process_survives_it_and_shrinks() {
        fn rss_file() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            s.lines().find_map(|l| field_kb(l, "RssFile:")).unwrap()
        }
        let mut fp = Footprint::new();
        let before = rss_file();
        fp.release();
        let after = rss_file();
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Code and data still work: format, allocate, read a file, and
        // the same file again from its start.
        let s = format!("{:?}", (1..100).collect::<Vec<u32>>());
        assert!(s.len() > 100);
        let f = fp.smaps.as_mut().unwrap();
        let (a, b) = (read_smaps(f).unwrap(), read_smaps(f).unwrap());
        assert!(a.starts_with(&b[..20]) && a.contains("Rss:"));
    }
}
