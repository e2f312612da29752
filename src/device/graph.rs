//! The device's deployments seen together (`roost run --dir`), pure: what clashes between
//! them (a second recorder, a storage or unit name taken, a cycle of `spec.dependsOn`), what
//! each deployment's dependencies mean for it ([`Links`]), and the device's status document.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plan::gate::{Hold, Links};
use crate::spec::Deployment;
use crate::status::{OverallStatus, Phase, StatusDoc};

/// One deployment in force on the device: its file and its valid desired state.
#[derive(Clone, Debug)]
pub struct InForce {
    /// The file it was read from.
    pub file: PathBuf,
    /// What it asks for.
    pub deployment: Deployment,
}

/// The built-ins a device has once: one microphone, one connection, one page.
const ONCE_PER_DEVICE: [&str; 4] = ["recorder", "curator", "connect", "page"];

fn builtins_of(d: &Deployment) -> Vec<&'static str> {
    let s = &d.spec;
    let has = [
        s.recorder.is_some(),
        s.curates(),
        s.connect.is_some(),
        s.page.is_some(),
    ];
    (ONCE_PER_DEVICE.iter().zip(has))
        .filter_map(|(n, h)| h.then_some(*n))
        .collect()
}

/// Why `d` (read from `file`, for the deployment `member` of the folder) cannot be in force
/// beside `others`: `Some((field, what to do))`. Checked on every valid read of the file.
pub fn veto(
    member: &str,
    d: &Deployment,
    others: &BTreeMap<String, InForce>,
) -> Option<(String, String)> {
    if d.name().as_str() != member {
        return Some((
            "metadata.name".into(),
            format!(
                "this file held deployment {member:?} and now names {:?}; a new name is a new deployment: roost removes {member:?} after the grace and starts {:?}",
                d.name().as_str(),
                d.name().as_str()
            ),
        ));
    }
    for (name, o) in others.iter().filter(|(n, _)| n.as_str() != member) {
        let theirs = builtins_of(&o.deployment);
        if let Some(b) = builtins_of(d).into_iter().find(|b| theirs.contains(b)) {
            let field = if b == "curator" { "spec.detectors" } else { b };
            return Some((
                format!("spec.{}", field.trim_start_matches("spec.")),
                format!(
                    "deployment {name:?} ({}) already has the device's {b}; a device has one (one microphone, one link, one page): remove it here and add {name:?} to spec.dependsOn to use it (its spec.exports can give its storage folder)",
                    o.file.display()
                ),
            ));
        }
        let storage = |x: &Deployment| x.spec.storage.as_ref().and_then(|s| s.path.clone());
        if storage(d).is_some() && storage(d) == storage(&o.deployment) {
            return Some((
                "spec.storage.path".into(),
                format!(
                    "deployment {name:?} ({}) records into the same folder; give each deployment its own storage",
                    o.file.display()
                ),
            ));
        }
        if let Some(unit) = unit_clash(d, &o.deployment) {
            return Some((
                "spec.components".into(),
                format!(
                    "its component would run as {unit:?}, as one of deployment {name:?} ({}) does; rename the component or the deployment",
                    o.file.display()
                ),
            ));
        }
    }
    cycle_through(member, d, others).map(|cycle| {
        (
            "spec.dependsOn".into(),
            format!(
                "dependsOn forms a cycle across deployments: {}; remove one of these dependencies",
                cycle.join(" -> ")
            ),
        )
    })
}

/// A runtime name (`<deployment>-<component>`, as systemd units are named) both would use.
fn unit_clash(a: &Deployment, b: &Deployment) -> Option<String> {
    let names = |d: &Deployment| -> Vec<String> {
        d.component_names()
            .map(|c| format!("roost-{}-{c}.service", d.name().as_str()))
            .collect()
    };
    let theirs = names(b);
    names(a).into_iter().find(|n| theirs.contains(n))
}

/// The cycle `d`'s dependencies close through the deployments in force, as names from `d`.
fn cycle_through(
    member: &str,
    d: &Deployment,
    others: &BTreeMap<String, InForce>,
) -> Option<Vec<String>> {
    let deps: BTreeMap<String, Vec<String>> = (others.iter())
        .filter(|(n, _)| n.as_str() != member)
        .map(|(n, o)| (n.clone(), dependencies(&o.deployment)))
        .chain([(d.name().to_string(), dependencies(d))])
        .collect();
    let start = d.name().to_string();
    let mut path = vec![start.clone()];
    find_cycle(&start, &deps, &mut path).then_some(path)
}

fn dependencies(d: &Deployment) -> Vec<String> {
    d.spec.depends_on.iter().map(|n| n.to_string()).collect()
}

fn find_cycle(start: &str, deps: &BTreeMap<String, Vec<String>>, path: &mut Vec<String>) -> bool {
    let last = path.last().cloned().unwrap_or_default();
    for next in deps.get(&last).into_iter().flatten() {
        if next == start {
            path.push(next.clone());
            return true;
        }
        if path.contains(next) || path.len() > deps.len() {
            continue;
        }
        path.push(next.clone());
        if find_cycle(start, deps, path) {
            return true;
        }
        path.pop();
    }
    false
}

/// What the device says to `d`: each dependency that is not Succeeded and Running holds it
/// back, and the exports of every dependency in force reach its components.
pub fn links_of(
    d: &Deployment,
    in_force: &BTreeMap<String, InForce>,
    docs: &BTreeMap<String, StatusDoc>,
) -> Links {
    let mut links = Links::default();
    for dep in &d.spec.depends_on {
        let Some(o) = in_force.get(dep.as_str()) else {
            links.holds.push(Hold::Missing {
                deployment: dep.to_string(),
            });
            continue;
        };
        links.env.extend(o.deployment.exported_env());
        if let Some(hold) = docs
            .get(dep.as_str())
            .and_then(|doc| hold_of(dep.as_str(), doc))
        {
            links.holds.push(hold);
        } else if !docs.contains_key(dep.as_str()) {
            links.holds.push(Hold::NotReady {
                deployment: dep.to_string(),
                state: "not started".into(),
            });
        }
    }
    links
}

/// Whether `doc` (of deployment `name`) holds its dependents back, and how.
fn hold_of(name: &str, doc: &StatusDoc) -> Option<Hold> {
    let in_error = doc.status == OverallStatus::Error
        || matches!(
            doc.phase,
            Phase::FailedToStart | Phase::PartiallyDeprovisioned
        );
    if in_error {
        let why = (doc.errors.first())
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_else(|| format!("status {:?}, phase {:?}", doc.status, doc.phase));
        return Some(Hold::InError {
            deployment: name.to_string(),
            why,
        });
    }
    let ready = doc.phase == Phase::Succeeded
        && doc.status == OverallStatus::Running
        && doc.observed_generation == doc.generation;
    (!ready).then(|| Hold::NotReady {
        deployment: name.to_string(),
        state: format!("{:?}/{:?}", doc.phase, doc.status),
    })
}
