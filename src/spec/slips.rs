//! The common slips of a person editing YAML on a device, said in words at the line where the
//! mistake is (the parser often notices it a line or a column later): a number with a unit or
//! a fraction where a whole number goes, a tab, a line indented too far or not far enough, a
//! missing comma in a `{key: value, ...}` mapping, a quote never closed.

/// A slip found: where it is (1-based line and column) and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slip {
    /// The line of the mistake.
    pub line: u64,
    /// Its column.
    pub column: u64,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// The slip behind the parser's `message` at `line`:`column` of `text`, when it is one of the
/// common ones; `None` leaves the parser's own words.
pub fn explain(message: &str, text: &str, line: u64, column: u64) -> Option<Slip> {
    let lines: Vec<&str> = text.lines().collect();
    let at = |n: u64| lines.get(usize::try_from(n).ok()?.checked_sub(1)?).copied();
    let here = at(line)?;
    // Each heuristic only for the parser's message it explains: an unrelated error (an
    // unknown field, say) keeps its own words.
    if message.contains("quoted scalar")
        && let Some(s) = unclosed_quote(&lines, line)
    {
        return Some(s);
    }
    if let Some(col) = here
        .find('\t')
        .filter(|c| message.contains("tab") && here[..*c].trim().is_empty())
    {
        return Some(Slip {
            line,
            column: col as u64 + 1,
            message: "a tab indents this line: YAML indents with spaces only; replace the tab with spaces (as many as the lines beside it use)".into(),
        });
    }
    let value = value_at(here, column);
    if message.starts_with("invalid ")
        && let Some(s) = missing_comma(here, line, column, &value)
    {
        return Some(s);
    }
    if let Some(kind) = message.strip_prefix("invalid ")
        && let Some(m) = number(kind.trim(), key_before(here, column), &value)
    {
        return Some(Slip {
            line,
            column,
            message: m,
        });
    }
    indentation(message, &lines, line)
}

/// The scalar that starts at `column` (to the end of the line, or of a flow item).
fn value_at(line: &str, column: u64) -> String {
    let start = line
        .char_indices()
        .nth(usize::try_from(column).unwrap_or(1).saturating_sub(1))
        .map_or(line.len(), |(i, _)| i);
    let rest = &line[start..];
    let flow = line[..start].contains('{') || line[..start].contains('[');
    let end = rest
        .find(|c| c == '#' || (flow && matches!(c, ',' | '}' | ']')))
        .unwrap_or(rest.len());
    rest[..end].trim().to_string()
}

/// The key whose value starts at `column` (`sampleRate` in `sampleRate: 48k`).
fn key_before(line: &str, column: u64) -> &str {
    let start = line
        .char_indices()
        .nth(usize::try_from(column).unwrap_or(1).saturating_sub(1))
        .map_or(line.len(), |(i, _)| i);
    line[..start]
        .trim_end()
        .trim_end_matches(':')
        .rsplit(|c: char| c.is_whitespace() || matches!(c, '{' | ',' | '-'))
        .next()
        .unwrap_or("")
}

/// `{latitude: 51.7 longitude: -1.2}`: the value runs into the next key.
fn missing_comma(here: &str, line: u64, column: u64, value: &str) -> Option<Slip> {
    let (before, after) = value.split_once(": ")?;
    let next_key = before.rsplit(' ').next().filter(|k| !k.is_empty())?;
    let written = before[..before.len() - next_key.len()].trim_end();
    if written.is_empty() || !here.contains('{') {
        return None;
    }
    let offset = here
        .find(value)
        .map_or(column, |i| i as u64 + written.len() as u64 + 1);
    Some(Slip {
        line,
        column: offset,
        message: format!(
            "a comma is missing before {next_key:?}: in {{...}} the entries are separated by commas: {{{}: {written}, {next_key}: {after}}}",
            key_before(here, column)
        ),
    })
}

/// What `key` takes, for the words of a number slip: (what it counts, an example).
fn unit_of(key: &str) -> (&'static str, &'static str) {
    match key {
        "sampleRate" => ("a number of hertz", "48000"),
        "lowHz" | "highHz" => ("a number of hertz", "2000"),
        "channels" => ("a number of channels", "1"),
        "latitude" | "longitude" => ("a number of degrees", "51.76"),
        "minScore" | "sendMinScore" => ("a score from 0 to 1", "0.8"),
        "thresholdDb" => ("a number of decibels", "12"),
        "port" => ("a port number", "1883"),
        _ => ("a number", "1"),
    }
}

/// `48k`, `44100.5`, `-1` where a whole number goes; `twelve` where a number goes.
fn number(kind: &str, key: &str, value: &str) -> Option<String> {
    let whole = matches!(
        kind,
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64"
    );
    let real = matches!(kind, "f32" | "f64" | "floating point");
    if !whole && !real {
        return None;
    }
    let (what, example) = unit_of(key);
    let name = if key.is_empty() {
        "this field".to_string()
    } else {
        key.to_string()
    };
    let v = value.trim_matches(|c| c == '"' || c == '\'');
    // `48k`, `44.1k`, `48 kHz`, `384kHz`: a thousand times the number.
    let lower = v.to_ascii_lowercase();
    let kilo = lower
        .strip_suffix("khz")
        .or_else(|| lower.strip_suffix('k'))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map(|n| n * 1000.0);
    let hz = lower
        .strip_suffix("hz")
        .and_then(|n| n.trim().parse::<f64>().ok());
    let write = match (kilo.or(hz), v.parse::<f64>().ok()) {
        (Some(n), _) if n.fract() == 0.0 && n >= 0.0 => format!("; write {}", n as u64),
        (_, Some(n)) if whole && n < 0.0 => format!(": {name} cannot be negative; e.g. {example}"),
        (_, Some(n)) if whole && n.fract() != 0.0 => format!(
            ": {name} takes a whole number; write {} (or {})",
            n.trunc() as i64,
            n.trunc() as i64 + 1
        ),
        _ => format!(": {name} takes {what}, e.g. {example}"),
    };
    Some(format!("{value:?} is not {what}{write}"))
}

/// A line indented deeper than a line that already has its value, or to no level above.
fn indentation(message: &str, lines: &[&str], line: u64) -> Option<Slip> {
    let idx = usize::try_from(line).ok()?.checked_sub(1)?;
    let here = lines.get(idx)?;
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let above = lines[..idx]
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
    let key_of = |l: &str| l.trim().split(':').next().unwrap_or("").trim().to_string();
    if message.contains("mapping values are not allowed") && indent(here) > indent(above) {
        let has_value = above
            .trim_end()
            .split_once(':')
            .is_some_and(|(_, v)| !v.trim().is_empty());
        if has_value {
            return Some(Slip {
                line,
                column: indent(above) as u64 + 1,
                message: format!(
                    "{:?} is indented more than the line above ({:?}), which has its value already: indent it as far as that line ({} spaces)",
                    key_of(here),
                    above.trim(),
                    indent(above)
                ),
            });
        }
    }
    if message.contains("did not find expected key") {
        let levels: Vec<usize> = lines[..idx]
            .iter()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| indent(l))
            .filter(|i| *i < indent(above).max(1) + 1)
            .collect();
        let near: Vec<usize> = [indent(above)]
            .into_iter()
            .chain(levels.iter().rev().copied().filter(|l| *l < indent(above)))
            .take(2)
            .collect();
        if !near.contains(&indent(here)) {
            let spaces: Vec<String> = near.iter().map(|n| format!("{n} spaces")).collect();
            return Some(Slip {
                line,
                column: 1,
                message: format!(
                    "{:?} is indented {} spaces, which lines it up with no key above: indent it {}",
                    key_of(here),
                    indent(here),
                    spaces.join(" or ")
                ),
            });
        }
    }
    None
}

/// Where a `"` opens on `line` and is not closed by its end (byte offset), reading quotes
/// and comments as YAML does: `#` after a space starts a comment only outside quotes, `\"`
/// inside double quotes is no quote, `'...'` holds `"` as a character.
fn open_quote(line: &str) -> Option<usize> {
    let mut open: Option<(char, usize)> = None;
    let mut prev = ' ';
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (open, c) {
            (None, '#') if prev.is_whitespace() => return None,
            (None, '"' | '\'') => open = Some((c, i)),
            (Some(('"', _)), '\\') => {
                chars.next();
            }
            (Some((q, _)), c) if c == q => open = None,
            _ => {}
        }
        prev = c;
    }
    open.filter(|(q, _)| *q == '"').map(|(_, i)| i)
}

/// A `"` opened on a line before `line` (or on it) and never closed.
fn unclosed_quote(lines: &[&str], line: u64) -> Option<Slip> {
    let idx = usize::try_from(line).ok()?.checked_sub(1)?;
    for n in (idx.saturating_sub(3)..=idx.min(lines.len().saturating_sub(1))).rev() {
        let l = lines[n];
        if let Some(col) = open_quote(l) {
            return Some(Slip {
                line: n as u64 + 1,
                column: col as u64 + 1,
                message: format!(
                    "the quote opened here ({}) is never closed: add the closing \" on this line",
                    l.trim()
                ),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each common slip: the line and the words a person needs.
    #[test]
    fn the_common_slips_in_words() {
        let numbers = [
            (
                "    sampleRate: 48k",
                "\"48k\" is not a number of hertz; write 48000",
            ),
            (
                "    sampleRate: 44.1k",
                "\"44.1k\" is not a number of hertz; write 44100",
            ),
            (
                "    sampleRate: 48 kHz",
                "\"48 kHz\" is not a number of hertz; write 48000",
            ),
            (
                "    sampleRate: 44100.5",
                "\"44100.5\" is not a number of hertz: sampleRate takes a whole number; write 44100 (or 44101)",
            ),
            (
                "    channels: -1",
                "\"-1\" is not a number of channels: channels cannot be negative",
            ),
            (
                "    channels: two",
                "\"two\" is not a number of channels: channels takes a number of channels, e.g. 1",
            ),
        ];
        for (line, words) in numbers {
            let text = format!("spec:\n  recorder:\n{line}\n");
            let column = line.find(": ").unwrap() as u64 + 3;
            let s = explain("invalid u32", &text, 3, column).unwrap();
            assert!(s.message.starts_with(words), "{line}: {}", s.message);
            assert_eq!(s.line, 3);
        }
        let text = "spec:\n  location: {latitude: 51.7 longitude: -1.2}\n";
        let s = explain("invalid floating point", text, 2, 24).unwrap();
        assert!(
            s.message
                .starts_with("a comma is missing before \"longitude\""),
            "{}",
            s.message
        );
        let text = "spec:\n  recorder:\n\tdevice: default\n";
        let s = explain("tabs disallowed within this context", text, 3, 2).unwrap();
        assert_eq!((s.line, s.column), (3, 1));
        assert!(
            s.message.starts_with("a tab indents this line"),
            "{}",
            s.message
        );
        let text = "spec:\n  recorder:\n    device: default\n      sampleRate: 48000\n";
        let s = explain(
            "mapping values are not allowed in this context",
            text,
            4,
            17,
        )
        .unwrap();
        assert!(
            s.message.starts_with(
                "\"sampleRate\" is indented more than the line above (\"device: default\")"
            ),
            "{}",
            s.message
        );
        let text = "spec:\n  storage:\n    path: /x\n   minFreeSpace: 1GiB\n";
        let s = explain("did not find expected key", text, 4, 4).unwrap();
        assert!(
            s.message.contains("indented 3 spaces, which lines it up with no key above: indent it 4 spaces or 2 spaces"),
            "{}",
            s.message
        );
        let text = "metadata:\n  name: \"meadow\nspec:\n";
        let s = explain("invalid indentation in multiline quoted scalar", text, 3, 1).unwrap();
        assert_eq!((s.line, s.column), (2, 9));
        assert!(s.message.contains("never closed"), "{}", s.message);
    }

    /// What is not one of these slips keeps the parser's words: an unknown field on a line
    /// whose quoted text holds ` # ` (found: taken for a quote never closed).
    #[test]
    fn other_errors_are_left_alone() {
        let text = "spec:\n  name: meadow\n";
        assert_eq!(explain("something else", text, 2, 9), None);
        assert_eq!(explain("invalid u32", text, 9, 1), None);
        let text = "spec:\n  components:\n    - name: a\n      comand: [\"/bin/sh\", \"-c\", \"sleep 1 # tag\"]\n";
        assert_eq!(explain("unknown field `comand`", text, 4, 7), None);
        assert_eq!(open_quote("a: [\"x # y\", 'he said \"hi'] # \"not"), None);
        assert_eq!(open_quote("name: \"meadow"), Some(6));
        assert_eq!(open_quote("a: \"say \\\"hi\\\"\" # c"), None);
    }
}
