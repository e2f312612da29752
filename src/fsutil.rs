//! Writing files other programs read: whole or not at all.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, fsyncs it, renames it
/// over `path` and fsyncs the folder, so a reader or a power cut sees the old or the new file,
/// never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true, 0o666)
}

/// [`replace_quietly`] for a file other users' programs read (node_exporter's text file): mode
/// 0644 whatever roost's umask.
pub fn replace_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false, 0o644).and_then(|()| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
    })
}

/// Makes `dir` and its missing parents; the parents made here are left traversable by every
/// user (0755: roost's umask would make them 0750, and the built-ins' user could not reach
/// `dir`), `dir` itself gets roost's umask.
pub fn create_dir_all_traversable(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for parent in missing.iter().skip(1) {
        std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    Ok(())
}

/// [`write_atomic`] for a file only its owner may read (mode 0600 from its creation on, never
/// wider for an instant): environment files holding a component's secrets.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true, 0o600)
}

/// Replaces `path` whole like [`write_atomic`], without fsync: for derived files that are
/// rewritten often (`recorder-report.json`, `status.json`). A reader never sees a torn file; a
/// power cut may lose the newest version (the file system keeps the old or the new one: ext4
/// forces the data of a file renamed over another out before the rename, `auto_da_alloc`),
/// which the next rewrite replaces. Saves two flushes of the card per write.
pub fn replace_quietly(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false, 0o666)
}

/// `mode` is before the umask (roost runs with 027: 0666 gives 0640).
fn replace(path: &Path, bytes: &[u8], durable: bool, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
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
        // A temp file left by a crash keeps its mode if opened again: start afresh.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
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

/// Name of the run-time folder in a state folder (`<state-dir>/run`): the components' reports,
/// rewritten on every recording, live there. It is a symbolic link to a folder on a RAM file
/// system (tmpfs) when one can be had, so these rewrites never reach the SD card; otherwise a
/// plain folder. A reboot empties it, like any run-time folder: the reports are rebuilt by the
/// components' next writes.
pub const RUN_DIR: &str = "run";

/// `<state-dir>/run`, where readers find the reports (see [`RUN_DIR`]).
pub fn run_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(RUN_DIR)
}

/// Makes `<state-dir>/run` usable and returns it: a link to a tmpfs folder that exists is kept
/// as it is (no write); a missing, dangling or disk-backed one is pointed at
/// `<base>/<escaped state path>` under the first of `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`), `/run/roost`, `$XDG_RUNTIME_DIR/roost` that is on tmpfs and writable;
/// with none, a plain folder in the state folder. Errors: the state folder cannot be written.
pub fn prepare_run_dir(state_dir: &Path) -> std::io::Result<std::path::PathBuf> {
    let link = run_dir(state_dir);
    let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link(&link) && is_ram_dir(&link) {
        return Ok(link);
    }
    std::fs::create_dir_all(state_dir)?;
    let made = match ram_target(state_dir) {
        Some(target) => point_link(state_dir, &link, &target),
        None => {
            if is_link(&link) {
                gone_is_fine(std::fs::remove_file(&link))?;
            }
            std::fs::create_dir_all(&link)
        }
    };
    // Another component may have made it at the same moment: what matters is that it works.
    match made {
        Err(_) if link.is_dir() => Ok(link),
        other => other.map(|()| link),
    }
}

/// Points `link` at `target` in one rename (a plain folder there is removed first: it holds
/// derived files only).
fn point_link(state_dir: &Path, link: &Path, target: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(link).is_ok_and(|m| m.is_dir()) {
        gone_is_fine(std::fs::remove_dir_all(link))?;
    }
    let tmp = state_dir.join(format!(".{RUN_DIR}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn gone_is_fine(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Replaces `<state-dir>/run/<name>` like [`replace_quietly`]; when the run-time folder is gone
/// (a reboot emptied /run, a service's `RuntimeDirectory=` removed) it is made again first.
pub fn replace_run_file(state_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = run_dir(state_dir).join(name);
    match replace_quietly(&path, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            prepare_run_dir(state_dir)?;
            replace_quietly(&path, bytes)
        }
        other => other,
    }
}

/// Reads `<state-dir>/run/<name>`, or `<state-dir>/<name>` where a component started by an
/// older roost (adopted across an upgrade, its spec unchanged) still writes it: the newer of
/// the two. `None` when neither can be read.
pub fn read_run_file(state_dir: &Path, name: &str) -> Option<Vec<u8>> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let current = run_dir(state_dir).join(name);
    let legacy = state_dir.join(name);
    let newest = match (modified(&current), modified(&legacy)) {
        (Some(c), Some(l)) if l > c => legacy,
        (None, Some(_)) => legacy,
        _ => current,
    };
    std::fs::read(newest).ok()
}

/// A folder on tmpfs or ramfs for this state folder, made if needed; `None` when none can be.
/// The run-time bases, in the order they are tried: `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`), `/run/roost`, `$XDG_RUNTIME_DIR/roost`.
pub fn run_bases() -> Vec<std::path::PathBuf> {
    let mut bases: Vec<std::path::PathBuf> = [
        std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|v| std::env::split_paths(&v).next())
            .filter(|p| p.is_absolute()),
        Some(std::path::PathBuf::from("/run/roost")),
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|p| p.join("roost")),
    ]
    .into_iter()
    .flatten()
    .collect();
    bases.dedup();
    bases
}

fn ram_target(state_dir: &Path) -> Option<std::path::PathBuf> {
    let state = std::fs::canonicalize(state_dir).ok()?;
    run_bases().into_iter().find_map(|base| {
        // Judged before anything is made, so no folder is left on a disk-backed /run.
        let existing = base.ancestors().find(|a| a.exists())?;
        if !is_ram_dir(existing) {
            return None;
        }
        let target = base.join(escape_path(&state));
        if !target.is_dir() {
            create_dir_all_traversable(&target).ok()?;
        }
        Some(target)
    })
}

/// Where `<state-dir>/run` leads, when it is a link to a folder roost itself would have made
/// (`<base>/<escaped state path>` under one of the run-time bases) and that folder is a real
/// folder: a link pointed elsewhere (by a component that may not be trusted) is not followed.
pub fn run_target(state_dir: &Path) -> Option<std::path::PathBuf> {
    let link = run_dir(state_dir);
    let target = std::fs::read_link(&link).ok()?;
    let state = std::fs::canonicalize(state_dir).ok()?;
    let name = escape_path(&state);
    let expected = run_bases().into_iter().any(|b| target == b.join(&name));
    let real_dir = std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir());
    (expected && real_dir).then_some(target)
}

/// Whether `path` is a folder on tmpfs or ramfs.
pub fn is_ram_dir(path: &Path) -> bool {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // ramfs has no constant in nix; its magic number is in linux/magic.h.
    let ramfs = FsType(0x8584_58f6_u32 as _);
    path.is_dir() && statfs(path).is_ok_and(|s| [TMPFS_MAGIC, ramfs].contains(&s.filesystem_type()))
}

/// A state folder's path as one file name, much as `systemd-escape --path` does: `/` becomes
/// `-`, bytes other than ASCII letters, digits and `.` become `_NN` (hex; `_` itself too).
fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let mut out = String::new();
    for &b in trimmed {
        match b {
            b'/' => out.push('-'),
            b if b.is_ascii_alphanumeric() || b == b'.' => out.push(b as char),
            b => out.push_str(&format!("_{b:02x}")),
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    if out.len() > 200 {
        // A name must stay under 255 bytes; the tail tells folders apart best. A working link
        // is kept as it is, so the cut needs no stability across versions.
        out = out.split_off(out.len() - 200);
    }
    out
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
    fn state_paths_escape_to_one_file_name() {
        let e = |p: &str| super::escape_path(std::path::Path::new(p));
        assert_eq!(e("/var/lib/roost"), "var-lib-roost");
        assert_eq!(e("/tmp/my state-1"), "tmp-my_20state_2d1");
        assert_eq!(e("/"), "-");
        assert_eq!(e("/a/x_y.z"), "a-x_5fy.z");
        assert_eq!(e(&format!("/{}", "d/".repeat(300))).len(), 200);
    }

    #[test]
    fn the_run_folder_is_a_plain_folder_without_tmpfs_and_is_made_again_when_gone() {
        let state = tempfile::tempdir().unwrap();
        let run = super::prepare_run_dir(state.path()).unwrap();
        assert_eq!(run, state.path().join("run"));
        super::replace_run_file(state.path(), "r.json", b"1").unwrap();
        // Whatever it points at (a tmpfs folder as root, a plain folder otherwise), removing it
        // is mended by the next write.
        let target = std::fs::canonicalize(&run).unwrap();
        std::fs::remove_dir_all(&target).unwrap();
        super::replace_run_file(state.path(), "r.json", b"2").unwrap();
        assert_eq!(std::fs::read(run.join("r.json")).unwrap(), b"2");
        assert_eq!(
            super::prepare_run_dir(state.path()).unwrap(),
            run,
            "kept when it works"
        );
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
