//! Unit names roost owns and the D-Bus object paths systemd gives them. Pure string work: no
//! I/O, and nothing here decides whether a unit is roost's (that is the file marker's job).

/// Every unit roost writes starts with this.
pub const UNIT_PREFIX: &str = "roost-";
/// Every unit roost writes ends with this: components run as services.
pub const UNIT_SUFFIX: &str = ".service";

/// `roost-<deployment>-<component>.service`. Both labels are `[a-z0-9-]`, already valid in a
/// unit name; the name alone is ambiguous (both may contain '-'), so the file marker records
/// the deployment and the component separately.
pub fn unit_name(deployment: &str, component: &str) -> String {
    format!("{UNIT_PREFIX}{deployment}-{component}{UNIT_SUFFIX}")
}

/// The prefix shared by all units of one deployment (and, by accident of '-', possibly of a
/// deployment whose name extends it: callers check the marker).
pub fn deployment_prefix(deployment: &str) -> String {
    format!("{UNIT_PREFIX}{deployment}-")
}

/// Object path of a unit, as `sd_bus_path_encode` builds it: every byte outside `[A-Za-z0-9]`
/// (and a leading digit) becomes `_xx` in lower-case hex.
pub fn unit_object_path(unit: &str) -> String {
    format!("/org/freedesktop/systemd1/unit/{}", escape_label(unit))
}

/// One label of an object path as `sd_bus_path_encode` escapes it: every byte outside
/// `[A-Za-z0-9]` (and a leading digit) becomes `_xx` in lower-case hex; an empty label is `_`.
pub fn escape_label(label: &str) -> String {
    if label.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(label.len() * 2);
    for (i, b) in label.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape_label`]; `None` for a malformed label.
pub fn unescape_label(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The unit name of a unit object path, if it is one.
pub fn unit_from_object_path(path: &str) -> Option<String> {
    unescape_label(path.strip_prefix("/org/freedesktop/systemd1/unit/")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(
            unit_name("field-1", "uploader"),
            "roost-field-1-uploader.service"
        );
        assert!(unit_name("a", "b").starts_with(&deployment_prefix("a")));
    }

    #[test]
    fn object_paths_match_systemd() {
        assert_eq!(escape_label("x.service"), "x_2eservice");
        assert_eq!(escape_label("my-app@1.service"), "my_2dapp_401_2eservice");
        assert_eq!(escape_label("1a"), "_31a");
        assert_eq!(escape_label(""), "_");
        assert_eq!(
            unit_object_path("roost-d-c.service"),
            "/org/freedesktop/systemd1/unit/roost_2dd_2dc_2eservice"
        );
    }

    #[test]
    fn object_paths_round_trip() {
        for name in ["roost-a-b.service", "1x", "", "ü-x_y.service", "a_2e"] {
            assert_eq!(
                unescape_label(&escape_label(name)).as_deref(),
                Some(name),
                "{name}"
            );
        }
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/unit/roost_2dd_2dc_2eservice")
                .as_deref(),
            Some("roost-d-c.service")
        );
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/job/1"),
            None
        );
        assert_eq!(unescape_label("_zz"), None);
        assert_eq!(unescape_label("ab_2"), None);
    }
}
