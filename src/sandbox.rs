//! What a component may reach: the user it runs as and, for a confined component, the folders
//! it may write, whether it may use the network or the sound devices. Built-ins are always
//! confined ([`Confinement`] from [`builtin`](crate::builtin)); a component of the file opts in
//! with `user:` and `sandbox:`. Each runtime enforces it as far as it can: systemd with
//! `User=`, `ProtectSystem=strict`, `ReadWritePaths=` and the rest
//! ([`crate::runtime::systemd::unit`]); the process runtime by dropping to the user and setting
//! `PR_SET_NO_NEW_PRIVS` ([`Identity`]).
//!
//! The user: `ROOST_USER` when set (an empty value: roost's own), else the system user
//! `roost` the package creates, when it exists and roost runs as root; otherwise roost's own
//! user (a developer's machine, or a roost that is not root and so is already unprivileged).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The system user (and group) the package creates for the built-ins.
pub const SYSTEM_USER: &str = "roost";
/// Names another user for the built-ins (tests, an installation that names its own).
pub const USER_VAR: &str = "ROOST_USER";
/// The group that may open the sound devices (Debian's `audio`).
pub const AUDIO_GROUP: &str = "audio";

/// What a confined component may reach beyond reading the system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Confinement {
    /// The user it runs as; `None`: roost's own.
    pub user: Option<String>,
    /// The sandbox applies (read-only system, own `/tmp`, no new privileges, and the rest);
    /// `false`: only the user is changed.
    pub hardened: bool,
    /// Folders it may write and that are its own: roost hands them to its user before it
    /// starts ([`hand_over_writable`]); everything else is read-only to it, `/home` and
    /// `/root` empty, `/tmp` its own.
    pub writable: Vec<PathBuf>,
    /// Folders it may also write that belong to someone else (node_exporter's textfile
    /// folder): never handed over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<PathBuf>,
    /// It may open IPv4 and IPv6 sockets; otherwise it gets no network at all.
    pub network: bool,
    /// It may open the sound devices (`/dev/snd`, group `audio`).
    pub audio: bool,
    /// It runs roost's own code only, so memory that is both writable and executable can be
    /// refused (not for the curator, whose detectors may be interpreters with a JIT).
    pub own_code_only: bool,
}

/// The user the built-ins run as (see the module documentation); `None`: roost's own. Looked
/// up once per process.
pub fn builtin_user() -> Option<String> {
    static USER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    USER.get_or_init(look_up_builtin_user).clone()
}

fn look_up_builtin_user() -> Option<String> {
    match std::env::var(USER_VAR) {
        Ok(name) if name.is_empty() => None,
        // Written into units (`User=`): only a valid user name.
        Ok(name) => match crate::spec::UserName::try_from(name) {
            Ok(n) => Some(n.as_str().to_string()),
            Err(why) => {
                tracing::error!(%why, "{USER_VAR} ignored: the built-ins run as roost's own user");
                None
            }
        },
        Err(_) => (nix::unistd::geteuid().is_root()
            && nix::unistd::User::from_name(SYSTEM_USER)
                .ok()
                .flatten()
                .is_some())
        .then(|| SYSTEM_USER.to_string()),
    }
}

impl Confinement {
    /// A built-in's: the built-ins' user, hardened, writing only `writable` as configured
    /// (no link is resolved: a built-in may write the state folder and could point a link
    /// anywhere) plus the run-time folder `<state>/run` leads to, when it is the one roost
    /// made ([`crate::fsutil::run_target`]).
    pub fn builtin(
        state_dir: &Path,
        writable: &[&Path],
        network: bool,
        audio: bool,
        own_code_only: bool,
    ) -> Self {
        let mut paths: Vec<PathBuf> = writable.iter().map(|p| p.to_path_buf()).collect();
        paths.extend(crate::fsutil::run_target(state_dir));
        paths.dedup();
        Self {
            user: builtin_user(),
            hardened: true,
            writable: paths,
            // The run-time bases themselves (root's, 0711: the mount is what they open), so that
            // a folder roost makes there after the unit started (a boot that started the unit
            // before roost) is writable without a restart.
            shared: crate::fsutil::run_bases(),
            network,
            audio,
            own_code_only,
        }
    }
}

/// Before a built-in starts: hands each of its writable folders that exists to its user
/// ([`hand_over`]), when it has a user other than roost's own. Folders that do not exist are
/// left for the component (or for the built-in's own preparation) to make.
///
/// # Errors
/// The user does not exist, or a folder cannot be handed over.
pub fn hand_over_writable(c: &Confinement) -> Result<(), String> {
    let Some(user) = &c.user else {
        return Ok(());
    };
    let identity = Identity::of(user, c.audio).map_err(|e| e.to_string())?;
    if identity.uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    // Every folder is tried: one that fails (a card without Unix owners) keeps none of the
    // others from being handed over.
    use std::os::unix::fs::MetadataExt;
    let problems: Vec<String> = c
        .writable
        .iter()
        // Folders that are not links and not the user's yet: the usual start costs one stat.
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() != identity.uid)
        })
        .filter_map(|path| {
            roosts_kind(path)
                .and_then(|()| hand_over(path, &identity).map_err(|e| e.to_string()))
                .err()
                .map(|why| format!("cannot give {} to user {user}: {why}", path.display()))
        })
        .collect();
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// Whether `folder` is of a kind roost may hand over whole: a state folder (it holds
/// `roost.lock`), a run-time folder on a RAM file system, or a storage (only metadata.db,
/// recordings/, .partial/, quarantine/, lost+found). Anything else (a home folder named as a
/// storage by mistake) is refused, naming what it holds.
fn roosts_kind(folder: &Path) -> Result<(), String> {
    const STORAGE: &[&str] = &["recordings", ".partial", "quarantine", "lost+found"];
    if folder.join("roost.lock").exists() || crate::fsutil::is_ram_dir(folder) {
        return Ok(());
    }
    let entries = std::fs::read_dir(folder).map_err(|e| e.to_string())?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(STORAGE.contains(&name.as_str()) || name.starts_with(crate::storage::DB_FILE)) {
            return Err(format!(
                "it holds {name:?}, which is not a storage's: make it the user's yourself (`chown -R {SYSTEM_USER}: {}`) or name an empty folder",
                folder.display()
            ));
        }
    }
    Ok(())
}

impl Confinement {
    /// A built-in that works on `storage` (recorder, curator): it writes its storage, the state
    /// folder and the run-time folder, and runs as roost's own user on a storage without Unix
    /// owners ([`Confinement::on_storage`]).
    pub fn storage_builtin(
        state_dir: &Path,
        storage: &Path,
        network: bool,
        audio: bool,
        own_code_only: bool,
    ) -> Self {
        let run_dir = crate::fsutil::run_dir(state_dir);
        Self::builtin(
            state_dir,
            &[storage, state_dir, &run_dir],
            network,
            audio,
            own_code_only,
        )
        .on_storage(storage)
    }

    /// The same, run as roost's own user when `storage` lies on a file system without Unix
    /// owners (FAT, exFAT, NTFS, FUSE: a card formatted on a PC and mounted without
    /// `uid=roost`): the built-ins' user could not write there, and a recorder that cannot
    /// write records nothing. The rest of the sandbox stays.
    pub fn on_storage(mut self, storage: &Path) -> Self {
        if foreign_fs(storage) {
            self.user = None;
        }
        self
    }
}

/// Whether the file system holding `path` (or its nearest existing folder) has no Unix owners.
fn foreign_fs(path: &Path) -> bool {
    use nix::sys::statfs::{FsType, MSDOS_SUPER_MAGIC, statfs};
    let Some(existing) = path.ancestors().find(|a| a.exists()) else {
        return false;
    };
    let foreign = [
        MSDOS_SUPER_MAGIC,
        FsType(0x2011_bab0_u32 as _), // exFAT
        FsType(0x5346_544e_u32 as _), // NTFS (ntfs3)
        FsType(0x6573_5546_u32 as _), // FUSE (ntfs-3g, exfat-fuse)
    ];
    statfs(existing).is_ok_and(|s| foreign.contains(&s.filesystem_type()))
}

/// Gives `folder` (one folder roost made as root: the run-time folder) to the built-ins' user,
/// mode 2750; nothing when it is theirs already, there is no such user or roost is not root.
pub fn give_to_builtins(folder: &Path) {
    let Some(user) = builtin_user() else { return };
    let Ok(id) = Identity::of(&user, false) else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::symlink_metadata(folder).is_ok_and(|m| m.uid() == id.uid);
    if nix::unistd::geteuid().is_root() && !theirs {
        let _ = std::os::unix::fs::lchown(folder, Some(id.uid), Some(id.gid));
        let _ = std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o2750));
    }
}

/// A user resolved to the ids a process takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user's id.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its supplementary groups (from the group database) plus `audio` when asked (ready for
    /// `setgroups`: nothing is allocated after the fork).
    pub groups: Vec<nix::unistd::Gid>,
}

/// Why a user cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No such user.
    #[error("user {0:?} does not exist on this device (create it, or remove `user:`)")]
    NoSuchUser(String),
    /// The user database cannot be read.
    #[error("cannot look up user {name:?}: {source}")]
    Lookup {
        /// The user's name.
        name: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

impl Identity {
    /// Looks `user` up (before a fork: the lookup is not async-signal-safe), adding the
    /// `audio` group when `audio` is asked and the group exists.
    pub fn of(user: &str, audio: bool) -> Result<Self, IdentityError> {
        let lookup = |source| IdentityError::Lookup {
            name: user.to_string(),
            source,
        };
        let entry = nix::unistd::User::from_name(user)
            .map_err(lookup)?
            .ok_or_else(|| IdentityError::NoSuchUser(user.to_string()))?;
        let name = std::ffi::CString::new(user).map_err(|_| lookup(nix::Error::EINVAL))?;
        let mut groups = nix::unistd::getgrouplist(&name, entry.gid).map_err(lookup)?;
        if audio
            && let Ok(Some(group)) = nix::unistd::Group::from_name(AUDIO_GROUP)
            && !groups.contains(&group.gid)
        {
            groups.push(group.gid);
        }
        Ok(Self {
            uid: entry.uid.as_raw(),
            gid: entry.gid.as_raw(),
            groups,
        })
    }

    /// Takes this identity in a forked child before exec: supplementary groups, group, user
    /// (in that order: each needs the privilege the next one drops).
    ///
    /// # Errors
    /// A call the kernel refuses (roost not root).
    pub fn take(&self) -> std::io::Result<()> {
        use nix::unistd::{Gid, Uid};
        nix::unistd::setgroups(&self.groups)?;
        nix::unistd::setgid(Gid::from_raw(self.gid))?;
        nix::unistd::setuid(Uid::from_raw(self.uid))?;
        Ok(())
    }
}

/// `PR_SET_NO_NEW_PRIVS` in a forked child: nothing it executes gains privileges (set-user-id
/// programs, file capabilities).
///
/// # Errors
/// The kernel refuses it (older than 3.5).
pub fn no_new_privileges() -> std::io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(std::io::Error::from)
}

/// The mode mask of roost and everything it starts: files 0640, folders 0750.
pub const UMASK: u32 = 0o027;

/// Sets [`UMASK`] for this process (and so for its children).
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK));
}

/// Makes `folder` (and nothing above it) the component user's own: created when missing, then
/// owned by `identity` with mode 2750 (setgid, so what roost writes there belongs to the
/// user's group and the component can read it; others get nothing). An existing folder owned by
/// someone else is handed over whole, files 0640 and folders 2750 (an installation from before
/// the built-ins had their own user); a folder already the user's is left as it is.
///
/// # Errors
/// The folder cannot be made or handed over (roost not root, a read-only file system).
pub fn hand_over(folder: &Path, identity: &Identity) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    crate::fsutil::create_dir_all_traversable(folder)?;
    let top = std::fs::symlink_metadata(folder)?;
    if top.file_type().is_symlink() {
        return Err(std::io::Error::other("it is a symbolic link: not followed"));
    }
    if top.uid() == identity.uid {
        return Ok(());
    }
    let give = |path: &Path, meta: &std::fs::Metadata| -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(identity.uid), Some(identity.gid))?;
        let mode = match meta.file_type() {
            t if t.is_dir() => 0o2750,
            t if t.is_file() => 0o640,
            _ => return Ok(()),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    // Everything below first, the folder itself last: an interrupted walk (a crash, a file
    // deleted meanwhile) leaves the folder root's, so the next start walks it again.
    walk(folder, &mut |path, meta| match path == folder {
        true => Ok(()),
        false => gone_is_fine(give(path, meta)),
    })?;
    give(folder, &top)
}

fn gone_is_fine(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Calls `each` on `root` and everything under it (symbolic links are not followed), deepest
/// last; files that vanish meanwhile are skipped.
fn walk(
    root: &Path,
    each: &mut dyn FnMut(&Path, &std::fs::Metadata) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        each(&path, &meta)?;
        if meta.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other?,
            };
            for entry in entries {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_folder_is_handed_over_whole_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: handing a folder over needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(storage.join("recordings/2026")).unwrap();
        std::fs::write(storage.join("recordings/2026/a.wav"), "x").unwrap();
        std::fs::write(storage.join("metadata.db"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", storage.join("link")).unwrap();
        let who = Identity {
            uid: 4242,
            gid: 4243,
            groups: vec![],
        };
        hand_over(&storage, &who).unwrap();
        for (p, mode) in [
            ("", 0o2750),
            ("recordings", 0o2750),
            ("recordings/2026/a.wav", 0o640),
            ("metadata.db", 0o640),
        ] {
            let m = std::fs::metadata(storage.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4243), "{p}");
            assert_eq!(m.mode() & 0o7777, mode, "{p}");
        }
        // The link's target is not touched.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
        // Once the user's, nothing is walked again (a file made by root later stays).
        std::fs::write(storage.join("later"), "x").unwrap();
        hand_over(&storage, &who).unwrap();
        assert_eq!(std::fs::metadata(storage.join("later")).unwrap().uid(), 0);
        // A missing folder is made; the parents made with it stay passable for the user.
        hand_over(&dir.path().join("new/storage"), &who).unwrap();
        let m = std::fs::metadata(dir.path().join("new/storage")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (4242, 0o2750));
        let parent = std::fs::metadata(dir.path().join("new")).unwrap();
        assert_eq!((parent.uid(), parent.mode() & 0o777), (0, 0o755));
    }

    #[test]
    fn links_and_folders_that_are_not_roosts_are_never_handed_over() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let who = Identity {
            uid: 4244,
            gid: 4244,
            groups: vec![],
        };
        // A built-in that may write the state folder points a storage at a folder of root's.
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("passwd"), "x").unwrap();
        let link = dir.path().join("storages");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(hand_over(&link, &who).is_err());
        // A home folder named as a storage by mistake.
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(".bashrc"), "x").unwrap();
        let c = Confinement {
            user: Some("root".into()),
            writable: vec![link.clone(), home.clone()],
            ..Confinement::default()
        };
        // root is roost's own user here: nothing to do at all.
        assert!(hand_over_writable(&c).is_ok());
        assert!(roosts_kind(&home).unwrap_err().contains(".bashrc"));
        for p in [&victim, &victim.join("passwd"), &home] {
            assert_eq!(std::fs::metadata(p).unwrap().uid(), 0, "{}", p.display());
        }
        // A storage and a state folder are roost's kind.
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(storage.join("recordings")).unwrap();
        std::fs::write(storage.join("metadata.db-wal"), "x").unwrap();
        assert!(roosts_kind(&storage).is_ok());
        std::fs::write(home.join("roost.lock"), "").unwrap();
        assert!(roosts_kind(&home).is_ok());
    }
}
