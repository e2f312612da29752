//! Arrows point one way: the library's top-level modules import each other without a circle,
//! and the planner never imports a runtime or a built-in (it decides from data alone). Read
//! from the sources (`crate::<module>` paths outside test code).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module of a file, from its path under `src/`.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs").to_string();
    (name != "main" && name != "lib").then_some(name)
}

/// The top-level modules `code` (test code and comments left out, see [`sources`]) names.
fn imports(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn graph() -> Graph {
    let mut graph = Graph::new();
    for (file, code) in sources() {
        let Some(module) = module_of(Path::new(&file)) else {
            continue;
        };
        let out = graph.entry(module.clone()).or_default();
        out.extend(imports(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A path from `from` back to itself, if there is one.
fn circle(graph: &Graph, from: &str) -> Option<Vec<String>> {
    let mut stack: Vec<Vec<String>> = graph
        .get(from)?
        .iter()
        .map(|n| vec![from.to_string(), n.clone()])
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap().clone();
        if last == from {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in graph.get(&last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_circle() {
    let graph = graph();
    assert!(graph.contains_key("reconcile") && graph.contains_key("plan"));
    for module in graph.keys() {
        assert_eq!(circle(&graph, module), None, "{graph:#?}");
    }
}

#[test]
fn the_planner_imports_data_only() {
    let graph = graph();
    let plan = &graph["plan"];
    for forbidden in [
        "runtime",
        "builtin",
        "apply",
        "reconcile",
        "recorder",
        "storage",
    ] {
        assert!(
            !plan.contains(forbidden),
            "plan imports {forbidden}: {plan:?}"
        );
    }
    assert!(!graph["spec"].contains("plan"), "spec imports plan");
}

/// Every source file's non-test code (test code may reach anywhere), comments left out (doc
/// links are not imports), with its path under `src/`.
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut todo = vec![src.clone()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            if path.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
            let code: Vec<&str> = (code.lines())
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            let rel = path.strip_prefix(&src).unwrap().display().to_string();
            out.push((rel, code.join("\n")));
        }
    }
    out
}

/// `keyword table` in `code` (a whole word after it), e.g. `FROM recording`.
fn names_table(code: &str, keyword: &str, table: &str) -> bool {
    let needle = format!("{keyword} {table}");
    code.match_indices(&needle).any(|(i, _)| {
        let next = code[i + needle.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || (c == '_' && !table.ends_with('_')))
    })
}

/// metadata.db has one room: its schema, migrations and every query live under
/// `src/storage`. `archive.rs` is exempt: it writes archives as an older roost left them, for
/// benchmarks and tests.
#[test]
fn metadata_db_is_read_and_written_in_the_storage_room_only() {
    let tables = [
        "recording",
        "deployment",
        "model_output",
        "detection",
        "predicted_tag",
        "roost_",
    ];
    for (file, code) in sources() {
        if file.starts_with("storage") || file == "archive.rs" {
            continue;
        }
        for keyword in ["FROM", "INTO", "UPDATE", "JOIN"] {
            for table in tables {
                assert!(
                    !names_table(&code, keyword, table),
                    "src/{file} queries metadata.db ({keyword} {table}): move the query into src/storage"
                );
            }
        }
        let opens = code.lines().any(|l| {
            l.contains("Connection::open") && (l.contains("DB_FILE") || l.contains("metadata.db"))
        });
        assert!(
            !code.contains("\"metadata.db\"") && !opens,
            "src/{file} opens metadata.db itself: use src/storage (read::open for tools)"
        );
    }
}

/// Components talk through each other's public words (reports, `connect::owed_messages`),
/// never through each other's private files: only the connector knows its outbox, only the
/// curator's and the recorder's own code their process internals.
#[test]
fn components_do_not_reach_into_each_others_private_files() {
    for (file, code) in sources() {
        let own = |dir: &str| file.starts_with(dir);
        if !own("connect") {
            for private in ["connect::outbox", "OUTBOX_FILE"] {
                assert!(
                    !code.contains(private),
                    "src/{file} reaches into the connector's outbox ({private})"
                );
            }
        }
        if own("recorder") {
            for other in ["crate::curate", "crate::connect"] {
                assert!(!code.contains(other), "src/{file} (recorder) uses {other}");
            }
        }
        if own("connect") {
            assert!(
                !code.contains("crate::curate"),
                "src/{file} (connector) uses the curator"
            );
        }
    }
}
