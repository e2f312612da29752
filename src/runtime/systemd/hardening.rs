//! What a confined component's unit adds ([`directives`]) and the environment file that holds a
//! component's `env:` ([`environment_file`]). Pure: no I/O.
//!
//! The environment lives in its own file (mode 0600, beside the unit files, read by the manager
//! as root) because unit files are world-readable and `systemctl show -p Environment` shows
//! `Environment=` to every user; `EnvironmentFile=` shows only the file's path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::sandbox::Confinement;

use super::unit::quote;

/// The `[Service]` lines that confine `c`. `privileged`: the manager can switch users and set up
/// namespaces (the system manager, or a user manager running as root); otherwise only what an
/// unprivileged manager can apply is written (`NoNewPrivileges=`, `UMask=`), since the rest
/// would keep the unit from starting at all.
///
/// # Errors
/// A writable path that is not valid UTF-8.
pub fn directives(c: &Confinement, privileged: bool) -> Result<String, String> {
    let mut out = String::new();
    if privileged && let Some(user) = &c.user {
        let _ = writeln!(out, "User={user}");
        if c.audio {
            let _ = writeln!(out, "SupplementaryGroups={}", crate::sandbox::AUDIO_GROUP);
        }
    }
    out.push_str("UMask=0027\nNoNewPrivileges=yes\n");
    if !c.hardened || !privileged {
        return Ok(out);
    }
    out.push_str(concat!(
        "ProtectSystem=strict\n",
        // ProtectHome=yes, ProtectKernelTunables=yes and ProtectKernelLogs=yes (with a device
        // policy) fail the unit with 226/NAMESPACE on some kernels (seen on a 6.18 VM kernel);
        // the same intent, spelled so it starts everywhere: empty homes, /proc/sys and /sys
        // read-only, and the kernel log is root's alone anyway (/proc/kmsg 0400, /dev/kmsg
        // outside the device policy, no CAP_SYSLOG).
        "ProtectHome=tmpfs\n",
        "ReadOnlyPaths=/proc/sys /sys\n",
        "PrivateTmp=yes\n",
        "PrivateMounts=yes\n",
        "ProtectKernelModules=yes\n",
        "ProtectControlGroups=yes\n",
        "ProtectClock=yes\n",
        "ProtectHostname=yes\n",
        "RestrictNamespaces=yes\n",
        "RestrictRealtime=yes\n",
        "RestrictSUIDSGID=yes\n",
        "LockPersonality=yes\n",
        "RemoveIPC=yes\n",
        "KeyringMode=private\n",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "SystemCallArchitectures=native\n",
        "SystemCallFilter=@system-service\n",
        "SystemCallFilter=~@privileged\n",
        // A refused call fails with EPERM rather than killing the process: a library that
        // tries something optional (a priority) goes on without it.
        "SystemCallErrorNumber=EPERM\n",
    ));
    for path in c.writable.iter().chain(&c.shared) {
        let path = path
            .to_str()
            .ok_or_else(|| format!("writable path {path:?} is not valid UTF-8"))?;
        // `-`: a folder not there yet (a card not mounted) does not keep the unit from starting.
        let _ = writeln!(out, "ReadWritePaths={}", quote(&format!("-{path}")));
    }
    if c.audio {
        out.push_str("DevicePolicy=closed\nDeviceAllow=char-alsa rw\n");
    } else {
        out.push_str("PrivateDevices=yes\n");
    }
    if c.own_code_only {
        out.push_str("MemoryDenyWriteExecute=yes\n");
    }
    if c.network {
        // No ProtectProc=invisible: roost's own process (root), which it watches, must stay
        // visible; no ProcSubset=pid: it fails the unit with 226/NAMESPACE on the same kernels.
        out.push_str("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n");
    } else {
        out.push_str("RestrictAddressFamilies=AF_UNIX\nPrivateNetwork=yes\nIPAddressDeny=any\n");
        out.push_str("ProtectProc=invisible\n");
    }
    Ok(out)
}

/// `EnvironmentFile=` for the environment file at `path`.
pub fn environment_file_line(path: &Path) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("environment file path {path:?} is not valid UTF-8"))?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "environment file path {text:?} holds a blank or a control character"
        ));
    }
    Ok(format!("EnvironmentFile={}\n", text.replace('%', "%%")))
}

/// The environment file of `env`: one `NAME="value"` per variable, the value double-quoted as
/// systemd reads environment files (a backslash before `"`, `\`, `` ` `` and `$`; newlines
/// and other characters as they are).
///
/// # Errors
/// A name that is not a variable name, or a value systemd cannot read back (NUL, a Unicode
/// noncharacter, a byte-order mark).
pub fn environment_file(env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out =
        String::from("# Managed by roost: this component's env, readable by root only.\n");
    for (key, value) in env {
        let mut chars = key.chars();
        let key_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(format!(
                "environment variable name {key:?} is not a valid name"
            ));
        }
        if let Some(c) = value.chars().find(|c| unreadable(*c)) {
            return Err(format!(
                "the value of {key} holds {c:?}, which systemd cannot read from an environment file"
            ));
        }
        let _ = write!(out, "{key}=\"");
        for c in value.chars() {
            if matches!(c, '"' | '\\' | '`' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    Ok(out)
}

fn unreadable(c: char) -> bool {
    let n = c as u32;
    c == '\0' || c == '\u{feff}' || (0xfdd0..=0xfdef).contains(&n) || n & 0xfffe == 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined(network: bool, audio: bool) -> Confinement {
        Confinement {
            user: Some("roost".into()),
            hardened: true,
            writable: vec!["/var/lib/roost".into(), "/srv/card 1/storage".into()],
            shared: vec![],
            network,
            audio,
            own_code_only: true,
        }
    }

    #[test]
    fn a_recorder_gets_its_sound_devices_and_no_network() {
        let text = directives(&confined(false, true), true).unwrap();
        for line in [
            "User=roost\n",
            "SupplementaryGroups=audio\n",
            "ProtectSystem=strict\n",
            "ReadWritePaths=\"-/var/lib/roost\"\n",
            "ReadWritePaths=\"-/srv/card 1/storage\"\n",
            "DeviceAllow=char-alsa rw\n",
            "PrivateNetwork=yes\n",
            "RestrictAddressFamilies=AF_UNIX\n",
            "NoNewPrivileges=yes\n",
            "CapabilityBoundingSet=\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(!text.contains("PrivateDevices"));
    }

    #[test]
    fn a_networked_component_keeps_the_network_and_an_unprivileged_manager_gets_little() {
        let text = directives(&confined(true, false), true).unwrap();
        assert!(text.contains("AF_INET6"));
        assert!(text.contains("PrivateDevices=yes\n"));
        assert!(!text.contains("PrivateNetwork"));
        let text = directives(&confined(true, false), false).unwrap();
        assert_eq!(text, "UMask=0027\nNoNewPrivileges=yes\n");
        let mut user_only = confined(true, false);
        user_only.hardened = false;
        let text = directives(&user_only, true).unwrap();
        assert_eq!(text, "User=roost\nUMask=0027\nNoNewPrivileges=yes\n");
    }

    #[test]
    fn environment_files_escape_what_systemd_unescapes() {
        let env: BTreeMap<String, String> = [
            ("A", "plain"),
            ("B", "quo\"te $HOME `x` back\\slash"),
            ("C", "two\nlines"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let text = environment_file(&env).unwrap();
        assert!(text.contains("A=\"plain\"\n"));
        assert!(text.contains("B=\"quo\\\"te \\$HOME \\`x\\` back\\\\slash\"\n"));
        assert!(text.contains("C=\"two\nlines\"\n"));
        for bad in ["nul\0", "bom\u{feff}", "non\u{fffe}"] {
            let env = BTreeMap::from([("X".to_string(), bad.to_string())]);
            assert!(environment_file(&env).is_err(), "{bad:?}");
        }
        let env = BTreeMap::from([("1X".to_string(), String::new())]);
        assert!(environment_file(&env).is_err());
    }
}
