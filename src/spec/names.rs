//! Validated names and values that end up in file names, unit names and commands.
//! Each is built only through `TryFrom`, so holding one means it is valid.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rule shared by deployment and component names: they become unit names and file names.
fn check_label(kind: &str, s: &str) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() || s.len() > 63 || !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "invalid {kind} {s:?}: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

macro_rules! label_type {
    ($name:ident, $kind:literal) => {
        /// A deployment or component name: 1-63 lower-case letters, digits and '-', not starting
        /// or ending with '-'. It becomes part of unit names and file names, so it is checked when
        /// built.
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                check_label($kind, &s)?;
                Ok(Self(s))
            }
        }
        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_string())
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl $name {
            /// The name as written in the file.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 63,
                    "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
                })
            }
        }
    };
}

label_type!(DeploymentName, "deployment name");
label_type!(ComponentName, "component name");
label_type!(DetectorName, "detector name");

/// The argv of a component: at least one element, the first one the program.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
#[schemars(with = "CommandSchema")]
pub struct Command(Vec<String>);

#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct CommandSchema(#[schemars(length(min = 1))] Vec<String>);

impl TryFrom<Vec<String>> for Command {
    type Error = String;
    fn try_from(argv: Vec<String>) -> Result<Self, String> {
        match argv.first() {
            None => Err("command is empty: give the program and its arguments, e.g. [\"/usr/bin/env\", \"sh\", \"-c\", \"...\"]".into()),
            Some(p) if p.is_empty() => Err("the program (first element of command) is an empty string".into()),
            _ if argv.iter().any(|a| a.contains('\0')) => Err("command contains a NUL character".into()),
            _ => Ok(Self(argv)),
        }
    }
}
impl From<Command> for Vec<String> {
    fn from(c: Command) -> Self {
        c.0
    }
}
impl Command {
    /// The program: the first element of the argv (a bare name is looked up on PATH).
    pub fn program(&self) -> &str {
        &self.0[0]
    }
    /// The arguments after the program (possibly none).
    pub fn args(&self) -> &[String] {
        &self.0[1..]
    }
    /// The whole argv, program first.
    pub fn argv(&self) -> &[String] {
        &self.0
    }
}

/// An environment variable name as POSIX shells accept it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct EnvName(String);

impl TryFrom<String> for EnvName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "invalid environment variable name {s:?}: use letters, digits and '_', not starting with a digit"
            ));
        }
        Ok(Self(s))
    }
}
impl From<EnvName> for String {
    fn from(n: EnvName) -> String {
        n.0
    }
}
impl EnvName {
    /// The name as written in the file.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user name of this device (`user:`): what `useradd` accepts (letters, digits, `_`, `-`,
/// `.`, not starting with `-`, at most 32 bytes); whether it exists is checked when the
/// component starts.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct UserName(String);

impl TryFrom<String> for UserName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !s.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(format!(
                "invalid user name {s:?}: use letters, digits, '_', '-' and '.', at most 32, not starting with '-' and not only digits"
            ));
        }
        Ok(Self(s))
    }
}
impl From<UserName> for String {
    fn from(n: UserName) -> String {
        n.0
    }
}
impl UserName {
    /// The name as written in the file.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute folder path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct AbsolutePath(PathBuf);

impl TryFrom<String> for AbsolutePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must be absolute (start with '/')"));
        }
        if s.contains('\0') {
            return Err("path contains a NUL character".into());
        }
        Ok(Self(PathBuf::from(s)))
    }
}
impl From<AbsolutePath> for String {
    fn from(p: AbsolutePath) -> String {
        p.0.to_string_lossy().into_owned()
    }
}
impl AbsolutePath {
    /// The path as a [`std::path::Path`].
    pub fn as_path(&self) -> &std::path::Path {
        &self.0
    }
}

macro_rules! bounded_f64 {
    ($name:ident, $what:literal, $min:expr, $max:expr) => {
        /// A coordinate in decimal degrees, checked against its range when built (latitude -90 to 90,
        /// longitude -180 to 180).
        #[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
        #[serde(try_from = "f64", into = "f64")]
        pub struct $name(f64);

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "number", "minimum": $min, "maximum": $max})
            }
        }

        impl TryFrom<f64> for $name {
            type Error = String;
            fn try_from(v: f64) -> Result<Self, String> {
                if !(v.is_finite() && ($min..=$max).contains(&v)) {
                    return Err(format!("{} {} is out of range: expected a number from {} to {}", $what, v, $min, $max));
                }
                Ok(Self(v))
            }
        }
        impl From<$name> for f64 {
            fn from(v: $name) -> f64 {
                v.0
            }
        }
        impl $name {
            /// The coordinate in decimal degrees.
            pub fn value(self) -> f64 {
                self.0
            }
        }
    };
}

bounded_f64!(Latitude, "latitude", -90.0, 90.0);
bounded_f64!(Longitude, "longitude", -180.0, 180.0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns_rules() {
        for ok in ["a", "meadow-north", "r2", &"x".repeat(63)] {
            assert!(ComponentName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Meadow",
            "a_b",
            "a.b",
            "a b",
            &"x".repeat(64),
        ] {
            let err = DeploymentName::try_from(bad).unwrap_err();
            assert!(err.contains("1-63 lower-case"), "{bad}: {err}");
        }
    }

    #[test]
    fn commands_need_a_program() {
        assert!(Command::try_from(vec![]).is_err());
        assert!(Command::try_from(vec![String::new()]).is_err());
        assert_eq!(
            Command::try_from(vec!["/bin/true".into()])
                .unwrap()
                .program(),
            "/bin/true"
        );
    }

    #[test]
    fn env_names_and_ranges() {
        assert!(EnvName::try_from("PATH_2".to_string()).is_ok());
        assert!(EnvName::try_from("2X".to_string()).is_err());
        assert!(EnvName::try_from("A=B".to_string()).is_err());
        assert!(
            Latitude::try_from(91.0)
                .unwrap_err()
                .contains("from -90 to 90")
        );
        assert!(Longitude::try_from(f64::NAN).is_err());
    }
}
