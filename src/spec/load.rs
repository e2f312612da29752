//! Reading `deployment.yaml` from disk with limits, and turning every failure into an error that
//! names the file, the line and column (or the field path), and what is expected.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Deployment, FieldIssue, closest};

/// Files larger than this are refused before parsing: a desired state is a few KiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a desired-state file was not accepted. Every variant carries the file it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be opened or read (missing, not permitted, a folder).
    #[error("{file}: cannot read: {message}; check that the file exists and roost may read it")]
    Unreadable {
        /// The desired-state file.
        file: PathBuf,
        /// Why, in the system's words (or "it is a folder").
        message: String,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error(
        "{file}: file is larger than 1 MiB ({size} bytes); a deployment file is a few KiB, check that the right file is named"
    )]
    TooLarge {
        /// The desired-state file.
        file: PathBuf,
        /// Its size in bytes, as far as roost saw it.
        size: u64,
    },
    /// The file is not UTF-8 text.
    #[error("{file}:{line}:{column}: file is not valid UTF-8; save it as UTF-8 text")]
    NotUtf8 {
        /// The desired-state file.
        file: PathBuf,
        /// 1-based line of the first byte that is not UTF-8.
        line: u64,
        /// 1-based column of that byte, counted in bytes.
        column: u64,
    },
    /// The file holds nothing but blank lines, comments and document markers.
    #[error(
        "{file}: file is empty; write a Deployment (apiVersion: roost/v1, kind: Deployment, metadata, spec)"
    )]
    Empty {
        /// The desired-state file.
        file: PathBuf,
    },
    /// The file is not valid YAML, or does not have the shape of a Deployment (unknown field,
    /// wrong type, missing field).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The desired-state file.
        file: PathBuf,
        /// 1-based line of the problem, as the parser reports it.
        line: u64,
        /// 1-based column of the problem, as the parser reports it.
        column: u64,
        /// What is wrong, with a hint of what to write instead where roost has one.
        message: String,
        /// The parser's rendering of the offending lines, for humans.
        snippet: Option<String>,
    },
    /// The file parses but a value breaks a rule of [`Deployment::validate`] (a duplicate name, an
    /// unknown dependency, a cycle, ...).
    #[error("{file}: field {field}: {message}")]
    Invalid {
        /// The desired-state file.
        file: PathBuf,
        /// Field path of the offending value, e.g. `spec.components[1].dependsOn[0]`.
        field: String,
        /// What is wrong and what to do about it.
        message: String,
    },
}

impl LoadError {
    /// The desired-state file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            Self::Unreadable { file, .. }
            | Self::TooLarge { file, .. }
            | Self::NotUtf8 { file, .. }
            | Self::Empty { file }
            | Self::Syntax { file, .. }
            | Self::Invalid { file, .. } => file,
        }
    }

    /// Line and column, where the error has them.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            Self::NotUtf8 { line, column, .. } | Self::Syntax { line, column, .. } => {
                Some((*line, *column))
            }
            _ => None,
        }
    }

    /// The field path, for [`LoadError::Invalid`] only.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Reads and validates a desired-state file. Symlinks are followed, so ConfigMap-style
/// `..data` links and git-sync worktree links resolve to the current content.
pub fn load_file(path: &Path) -> Result<(Deployment, Vec<u8>), LoadError> {
    let bytes = read_limited(path)?;
    let deployment = parse_bytes(path, &bytes)?;
    Ok((deployment, bytes))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, LoadError> {
    let unreadable = |e: std::io::Error| LoadError::Unreadable {
        file: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(LoadError::Unreadable {
            file: path.to_path_buf(),
            message: "it is a folder".into(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE_BYTES) as usize);
    // Read one byte past the cap so a file that grew after stat is still caught.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            file: path.to_path_buf(),
            size: meta.len().max(bytes.len() as u64),
        });
    }
    Ok(bytes)
}

/// Parses already-read bytes as if they came from `path`.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Deployment, LoadError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(&bytes[..e.valid_up_to()]);
        LoadError::NotUtf8 {
            file: path.to_path_buf(),
            line,
            column,
        }
    })?;
    parse_str(path, text)
}

/// Parses YAML text as if it came from `path`.
pub fn parse_str(path: &Path, text: &str) -> Result<Deployment, LoadError> {
    if is_blank(text) {
        return Err(LoadError::Empty {
            file: path.to_path_buf(),
        });
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_depth: 64,
        },
    };
    let deployment: Deployment = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| syntax_error(path, &e, text))?;
    if let Some(issue) = deployment.validate().into_iter().next() {
        let FieldIssue { field, message } = issue;
        return Err(LoadError::Invalid {
            file: path.to_path_buf(),
            field,
            message,
        });
    }
    Ok(deployment)
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

fn syntax_error(path: &Path, e: &serde_saphyr::Error, text: &str) -> LoadError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    // The parser prefixes its own position; we print ours in the file:line:column form.
    let message = match first.strip_prefix("error: ") {
        Some(rest) => rest.split_once(": ").map(|(_, m)| m).unwrap_or(rest),
        None => first,
    };
    if let Some(slip) = super::slips::explain(message, text, line, column) {
        let snippet = snippet_at(path, text, slip.line, slip.column, &slip.message);
        return LoadError::Syntax {
            file: path.to_path_buf(),
            line: slip.line,
            column: slip.column,
            message: slip.message,
            snippet: Some(snippet),
        };
    }
    let message = improve_message(message);
    let snippet = rendered
        .split_once('\n')
        .map(|(_, s)| s.replace("<input>", &path.display().to_string()));
    LoadError::Syntax {
        file: path.to_path_buf(),
        line,
        column,
        message,
        snippet,
    }
}

/// The lines around `line` with a caret under `column` and `message`, in the parser's form.
fn snippet_at(path: &Path, text: &str, line: u64, column: u64, message: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = line.saturating_sub(2).max(1);
    let last = (line + 1).min(lines.len() as u64);
    let width = last.to_string().len();
    let mut out = format!(
        "{:width$}--> {}:{line}:{column}\n{:width$} |\n",
        "",
        path.display(),
        ""
    );
    for n in first..=last {
        let text = lines.get(n as usize - 1).copied().unwrap_or("");
        out += &format!("{n:>width$} | {text}\n");
        if n == line {
            let pad = " ".repeat(column.saturating_sub(1) as usize);
            out += &format!("{:width$} | {pad}^ {message}\n", "");
        }
    }
    out += &format!("{:width$} |", "");
    out
}

/// Adds what to do to the parser's terse messages.
fn improve_message(message: &str) -> String {
    let message = message.trim().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once("`, expected one of ")
    {
        let candidates: Vec<&str> = expected.split(", ").map(|s| s.trim_matches('`')).collect();
        return match closest(field, candidates.iter().copied()) {
            Some(best) => format!(
                "unknown field {field:?}: did you mean {best:?}? (known fields: {})",
                candidates.join(", ")
            ),
            None => format!(
                "unknown field {field:?}; known fields here: {}",
                candidates.join(", ")
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return format!("unknown field {field:?}; this mapping takes no fields");
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!(
            "duplicate key {key:?}: each key may appear once in a mapping; remove one of them"
        );
    }
    if message == "expected sequence start" {
        return "expected a list here, e.g. [\"/usr/bin/prog\", \"arg\"] or one \"- item\" per line".into();
    }
    if message == "expected mapping start" {
        return "expected a mapping here (key: value lines or {key: value})".into();
    }
    if message.contains("alias") || message.contains("budget") {
        return format!(
            "{message}; the file uses too many anchors/aliases or is nested too deeply (limits guard against alias bombs)"
        );
    }
    message
}

fn line_column(prefix: &[u8]) -> (u64, u64) {
    let line = prefix.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let column = prefix.iter().rev().take_while(|b| **b != b'\n').count() as u64 + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Deployment, LoadError> {
        parse_str(Path::new("d.yaml"), text)
    }

    const GOOD: &str = "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: meadow\nspec:\n  components:\n    - name: a\n      command: [/bin/true]\n";

    #[test]
    fn accepts_a_minimal_file() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.metadata.name.as_str(), "meadow");
        assert_eq!(d.spec.components[0].stop_timeout.as_std().as_secs(), 10);
    }

    #[test]
    fn unknown_field_suggests_the_nearest() {
        let text = GOOD.replace("command:", "comand:");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.position(), Some((8, 7)), "{err}");
        assert!(
            err.to_string().contains("did you mean \"command\""),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_points_at_the_byte() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(b"# caf\xe9\n");
        let err = parse_bytes(Path::new("d.yaml"), &bytes).unwrap_err();
        assert_eq!(err.position(), Some((9, 6)));
    }
}
