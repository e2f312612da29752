//! The device's status document under `roost run --dir`: one entry per deployment (its own
//! document and file) and, in the fields a single deployment uses, the device's summary: the
//! worst deployment's phase and status, every component and error tagged with its deployment,
//! generations summed, the first refusal as `specError`. Pure.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::status::{
    ErrorEntry, OverallStatus, Phase, ReconcilerInfo, SharedComponent, SpecError, StatusDoc,
};

/// How bad a status is, for "the worst deployment".
fn badness(s: OverallStatus) -> u8 {
    match s {
        OverallStatus::Running => 0,
        OverallStatus::Stopped => 1,
        OverallStatus::Pending => 2,
        OverallStatus::Unknown => 3,
        OverallStatus::Error => 4,
    }
}

/// The device's document from each deployment's last one (`docs`, by name), their files, the
/// folder's files no deployment takes (`refusals`) and who declares each shared component
/// (`shared`, first declarer first). A user of a shared component lists it among its own
/// (with `deployment: shared`).
pub fn device_doc(
    docs: &BTreeMap<String, StatusDoc>,
    files: &BTreeMap<String, String>,
    refusals: &[SpecError],
    shared: &BTreeMap<String, Vec<String>>,
    now: Timestamp,
) -> StatusDoc {
    let shared_doc = docs.get(super::graph::SHARED);
    let entries: Vec<StatusDoc> = (docs.iter())
        .map(|(name, d)| {
            let mut d = d.clone();
            d.file = files.get(name).cloned();
            let borrowed = (shared.iter()).filter(|(_, users)| users.contains(name));
            for (comp, _) in borrowed {
                let run = shared_doc.and_then(|s| s.component(comp)).cloned();
                d.components.extend(run.map(|mut c| {
                    c.deployment = Some(super::graph::SHARED.to_string());
                    c
                }));
            }
            d
        })
        .collect();
    let worst = entries.iter().max_by_key(|d| badness(d.status));
    let mut errors: Vec<ErrorEntry> = (refusals.iter())
        .map(|r| {
            ErrorEntry::new(
                &crate::errors::INVALID_SPEC,
                None,
                crate::redact::text(&r.message),
            )
        })
        .collect();
    let mut components = Vec::new();
    for d in &entries {
        let name = d.deployment.clone();
        errors.extend(d.errors.iter().cloned().map(|mut e| {
            e.deployment = name.clone();
            e
        }));
        // A shared component is listed once, under `shared`.
        components.extend(
            d.components
                .iter()
                .filter(|c| c.deployment.is_none())
                .cloned()
                .map(|mut c| {
                    c.deployment = name.clone();
                    c
                }),
        );
    }
    let (phase, mut status) = match worst {
        Some(w) => (w.phase, w.status),
        None => (Phase::Stopped, OverallStatus::Stopped),
    };
    let spec_error =
        (refusals.first().cloned()).or_else(|| entries.iter().find_map(|d| d.spec_error.clone()));
    if spec_error.is_some() && status == OverallStatus::Running {
        // A refused file is news the pusher must get, whatever runs.
        status = OverallStatus::Error;
    }
    StatusDoc {
        api_version: crate::spec::API_VERSION.to_string(),
        kind: "DeploymentStatus".to_string(),
        deployment: (!entries.is_empty())
            .then(|| docs.keys().cloned().collect::<Vec<_>>().join(", ")),
        generation: entries.iter().map(|d| d.generation).sum(),
        observed_generation: entries.iter().map(|d| d.observed_generation).sum(),
        phase,
        status,
        spec_error,
        components,
        errors,
        last_apply: None,
        reconciler: ReconcilerInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            runtime: entries
                .first()
                .map(|d| d.reconciler.runtime.clone())
                .unwrap_or_default(),
        },
        updated_at: now,
        file: None,
        deployments: entries,
        shared: (shared.iter())
            .filter_map(|(name, users)| {
                Some(SharedComponent {
                    name: name.clone(),
                    owner: users.first()?.clone(),
                    users: users.clone(),
                })
            })
            .collect(),
    }
}
