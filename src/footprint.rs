//! Keeping an idle doorman small.
//!
//! After a configuration is loaded, most of what start-up touched is never
//! needed again: the parsers, the name-service modules, most of libc. Two
//! things are given back:
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
//! The same mappings are marked `MADV_RANDOM`, which turns off the
//! kernel's fault-around: a page the loop touches later maps that page,
//! not the 64 KiB around it, so the resident set that comes back under
//! traffic is the code the loop really runs.

use std::fs::File;
use std::io::{Read, Seek};

/// `/proc/self/smaps`, opened once (close-on-exec) and read again from
/// the start each time: giving memory back opens no file descriptor.
#[derive(Debug)]
pub struct Footprint {
    smaps: Option<File>,
}

impl Footprint {
    pub fn new() -> Footprint {
        Footprint {
            smaps: File::open("/proc/self/smaps").ok(),
        }
    }

    /// Gives back free heap and the pages of clean file mappings.
    pub fn release(&mut self) {
        // The ranges are copied to the stack and every allocation is freed
        // before the heap is trimmed and the first page goes: what runs
        // after that maps pages back in.
        let mut ranges = [(0usize, 0usize); 256];
        let mut n = 0;
        if let Some(maps) = self.smaps.as_mut().and_then(read_smaps) {
            for r in clean_file_mappings(&maps).into_iter().take(ranges.len()) {
                ranges[n] = r;
                n += 1;
            }
        }
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
        unmap(&ranges[..n]);
    }
}

fn unmap(ranges: &[(usize, usize)]) {
    for &(start, end) in ranges {
        // SAFETY: the range is a whole mapping of this process, backed by
        // a file, not writable and holding no private page (checked from
        // smaps just now; nothing else runs in this process to change
        // that): dropping its page-table entries loses no data, the next
        // access maps the same file page again.
        unsafe {
            let p = start as *mut libc::c_void;
            let len = end - start;
            libc::madvise(p, len, libc::MADV_RANDOM);
            libc::madvise(p, len, libc::MADV_DONTNEED);
        }
    }
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
