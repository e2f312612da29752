//! Start order from `dependsOn`: dependencies first, ties broken by file order.

use std::collections::BTreeMap;

use crate::spec::ComponentSpec;

/// Indices of `components` in an order where each comes after everything it depends on, or the
/// names along a dependency cycle. Unknown dependency names are ignored here (validation reports them).
pub fn start_order(components: &[ComponentSpec]) -> Result<Vec<usize>, Vec<String>> {
    let index: BTreeMap<&str, usize> = components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; components.len()];
    let mut order = Vec::with_capacity(components.len());
    for root in 0..components.len() {
        if mark[root] != 0 {
            continue;
        }
        // Iterative depth-first search so a long chain cannot overflow the stack.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&mut (node, ref mut next_dep)) = stack.last_mut() {
            let deps = &components[node].depends_on;
            if *next_dep < deps.len() {
                let dep = deps[*next_dep].as_str();
                *next_dep += 1;
                let Some(&d) = index.get(dep) else { continue };
                match mark[d] {
                    0 => {
                        mark[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|(n, _)| *n == d).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..]
                            .iter()
                            .map(|(n, _)| components[*n].name.to_string())
                            .collect();
                        cycle.push(components[d].name.to_string());
                        return Err(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                order.push(node);
                stack.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(spec: &[(&str, &[&str])]) -> Vec<ComponentSpec> {
        spec.iter()
            .map(|(name, deps)| ComponentSpec {
                name: (*name).try_into().unwrap(),
                command: vec!["/bin/true".to_string()].try_into().unwrap(),
                env: Default::default(),
                working_dir: None,
                restart_policy: None,
                depends_on: deps.iter().map(|d| (*d).try_into().unwrap()).collect(),
                stop_timeout: crate::spec::HumanDuration::from_secs(1),
                user: None,
                sandbox: None,
                shared: false,
            })
            .collect()
    }

    #[test]
    fn dependencies_come_first() {
        let c = comps(&[("up", &["rec", "db"]), ("rec", &["db"]), ("db", &[])]);
        let names: Vec<_> = start_order(&c)
            .unwrap()
            .into_iter()
            .map(|i| c[i].name.as_str())
            .collect();
        assert_eq!(names, ["db", "rec", "up"]);
    }

    #[test]
    fn cycles_are_named() {
        let c = comps(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(start_order(&c).unwrap_err(), ["a", "b", "c", "a"]);
    }
}
