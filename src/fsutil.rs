//! Writing files other programs read: whole or not at all.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, fsyncs it, renames it
/// over `path` and fsyncs the folder, so a reader or a power cut sees the old or the new file,
/// never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Replaces `path` whole like [`write_atomic`], without fsync: for derived files that are
/// rewritten often (`recorder-report.json`, `status.json`). A reader never sees a torn file; a
/// power cut may lose the newest version (the file system keeps the old or the new one: ext4
/// forces the data of a file renamed over another out before the rename, `auto_da_alloc`),
/// which the next rewrite replaces. Saves two flushes of the card per write.
pub fn replace_quietly(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The commit interval of the journal under `path` when it lies on ext3/ext4 with ordered data
/// (the default `data=ordered`): there, data that the kernel wrote back is followed by the
/// file's new size in the journal's own next commit, at most this long later (`commit=` mount
/// option, 5 s when absent). `None` on any other file system or data mode, or when
/// `/proc/self/mounts` cannot be read: then only fsync makes data durable.
pub fn ordered_journal_commit(path: &Path) -> Option<std::time::Duration> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    commit_interval_in(&mounts, &path)
}

/// [`ordered_journal_commit`] for a `/proc/self/mounts` text and a canonical path: the last
/// mounted of the longest mount points holding `path` decides.
fn commit_interval_in(mounts: &str, path: &Path) -> Option<std::time::Duration> {
    let mut best: Option<(usize, &str, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (_, Some(point), Some(kind), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Spaces and the like are octal escapes (\040) in mount points.
        let point = unescape_mount_point(point);
        let depth = Path::new(&point).components().count();
        if path.starts_with(&point) && best.is_none_or(|(d, _, _)| depth >= d) {
            best = Some((depth, kind, options));
        }
    }
    let (_, kind, options) = best?;
    if kind != "ext4" && kind != "ext3" {
        return None;
    }
    let mut commit = 5;
    for option in options.split(',') {
        match option.split_once('=') {
            Some(("data", mode)) if mode != "ordered" => return None,
            Some(("commit", secs)) => commit = secs.parse::<u64>().ok().filter(|s| *s > 0)?,
            _ => {}
        }
    }
    Some(std::time::Duration::from_secs(commit))
}

fn unescape_mount_point(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = text
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        super::write_atomic(&p, b"one").unwrap();
        super::write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_journal_commit_is_read_from_the_mount_holding_the_path() {
        let mounts = "/dev/vda1 / ext4 rw,relatime 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n\
                      /dev/sda1 /media/sd\\040card ext4 rw,commit=30 0 0\n\
                      /dev/sdb1 /data ext4 rw,data=journal 0 0\n\
                      /dev/sdc1 /mnt/exfat exfat rw 0 0\n\
                      /dev/sdd1 /old ext3 rw,data=ordered,commit=7 0 0\n";
        let at = |p: &str| super::commit_interval_in(mounts, std::path::Path::new(p));
        let secs = std::time::Duration::from_secs;
        assert_eq!(at("/var/lib/roost"), Some(secs(5)));
        assert_eq!(at("/tmp/x"), None);
        assert_eq!(at("/media/sd card/rec"), Some(secs(30)));
        assert_eq!(at("/data/rec"), None, "data=journal: fsync only");
        assert_eq!(at("/mnt/exfat/rec"), None);
        assert_eq!(at("/old"), Some(secs(7)));
        assert_eq!(
            at("/datastore"),
            Some(secs(5)),
            "a prefix of a name is not its folder"
        );
    }
}
