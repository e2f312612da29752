//! Finding processes by an environment variable roost gave them: the one mark a descendant
//! keeps when it leaves its process group (`setsid`) or is re-parented. Reads `/proc` only;
//! other users' processes cannot be read, and cannot be roost's. Never signals anything.

/// Live (not zombie) processes other than this one whose environment holds the entry `needle`
/// (`NAME=value`) exactly, or, with `prefix`, an entry starting with it.
pub fn with_env(needle: &str, prefix: bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let matches = |var: &[u8]| {
        if prefix {
            var.starts_with(needle.as_bytes())
        } else {
            var == needle.as_bytes()
        }
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(matches))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name (state first).
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    Some(after_comm.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// Live children of `parent` (`/proc/*/stat`'s parent pid), zombies left out.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.first().map(String::as_str) != Some("Z")
                    && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
            })
        })
        .collect()
}
