//! The planner's judgment of built-in components from their health (read from their output by
//! the loop): a running built-in that does not report, or whose output shows a fault, is in
//! error whatever its process does. Pure: time comes in as `now`.

use std::time::Duration;

use jiff::Timestamp;

use super::Plan;
use crate::observe::{BuiltinHealth, BuiltinReport};
use crate::status::{ComponentState, ComponentStatus, ErrorEntry, Phase, Reason};

/// A look taken this much after a deadline, so that the deadline has surely passed.
const AFTER_DEADLINE: Duration = Duration::from_millis(50);

/// Applies each running built-in's health to `plan` (status, reason, output, errors, phase)
/// and returns when to look again for them.
pub(super) fn judge(
    plan: &mut Plan,
    health_of: impl Fn(&str) -> Option<BuiltinHealth>,
    now: Timestamp,
) -> Option<Timestamp> {
    let mut wake: Option<Timestamp> = None;
    for i in 0..plan.components.len() {
        let c = &plan.components[i];
        if c.status != ComponentState::Running {
            continue;
        }
        let Some(health) = health_of(&c.name) else {
            continue;
        };
        let next = match health {
            BuiltinHealth::Silent {
                within,
                code,
                reason,
            } => silent(plan, i, within, code, reason, now),
            BuiltinHealth::Reported(report) => reported(plan, i, report),
        };
        wake = wake.into_iter().chain(next).min();
    }
    wake.map(|t| t + AFTER_DEADLINE)
}

/// Not reported yet: Starting until its first report is due, then in error.
fn silent(
    plan: &mut Plan,
    i: usize,
    within: Duration,
    code: &'static crate::errors::ErrorCode,
    reason: Reason,
    now: Timestamp,
) -> Option<Timestamp> {
    let c = &mut plan.components[i];
    let first_due = c.since.unwrap_or(now) + within;
    if now < first_due {
        c.reason = Some(Reason::Starting);
        return Some(first_due);
    }
    c.status = ComponentState::Error;
    c.reason = Some(reason);
    let message = format!(
        "the {} has run since {first_due} without reporting anything",
        c.name
    );
    plan.errors
        .push(ErrorEntry::new(code, Some(&c.name), message));
    if plan.phase == Phase::Succeeded {
        plan.phase = Phase::FailedToStart;
    }
    None
}

fn reported(plan: &mut Plan, i: usize, report: BuiltinReport) -> Option<Timestamp> {
    let c: &mut ComponentStatus = &mut plan.components[i];
    if !report.output.is_null() {
        c.output = Some(report.output);
    }
    if let Some(trouble) = report.trouble {
        c.status = ComponentState::Error;
        c.reason = Some(trouble.reason);
        plan.errors.push(ErrorEntry::new(
            trouble.code,
            Some(&c.name),
            trouble.message,
        ));
        // Provisioning failed only if it never produced anything; later faults keep the phase
        // and make the status Error (the status is never greener than the output).
        if plan.phase == Phase::Succeeded && !report.produced {
            plan.phase = Phase::FailedToStart;
        }
    }
    report.look_again_at
}
