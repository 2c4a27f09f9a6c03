//! The plan: the calls that turn what the cloud holds into what the fleet
//! file asks for, and nothing else. Creations and changes in dependency
//! order, removals in reverse; a resource equal in every property is left
//! alone, so a second `up` plans nothing.

use std::fmt;

use super::model::Resource;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    /// The properties that differ, each with what the cloud holds now.
    Update(Vec<(String, String)>),
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub change: Change,
    /// What is wanted (for a removal: what is there).
    pub resource: Resource,
}

/// The actions from `actual` to `desired`.
pub fn plan(desired: &[Resource], actual: &[Resource]) -> Vec<Action> {
    let mut out = Vec::new();
    for d in desired {
        match actual.iter().find(|a| a.key() == d.key()) {
            None => out.push(Action {
                change: Change::Create,
                resource: d.clone(),
            }),
            Some(a) => {
                let changed: Vec<(String, String)> = d
                    .props
                    .iter()
                    .filter(|(k, v)| a.props.get(*k) != Some(*v))
                    .map(|(k, _)| (k.clone(), a.prop(k).to_string()))
                    .collect();
                if !changed.is_empty() {
                    out.push(Action {
                        change: Change::Update(changed),
                        resource: d.clone(),
                    });
                }
            }
        }
    }
    out.sort_by_key(|a| a.resource.kind);
    let mut removals: Vec<Action> = actual
        .iter()
        .filter(|a| !desired.iter().any(|d| d.key() == a.key()))
        .map(|a| Action {
            change: Change::Delete,
            resource: a.clone(),
        })
        .collect();
    removals.sort_by_key(|a| std::cmp::Reverse(a.resource.kind));
    out.extend(removals);
    out
}

/// `down`: everything the fleet holds, removed in reverse order.
pub fn teardown(actual: &[Resource]) -> Vec<Action> {
    plan(&[], actual)
}

/// A property's value as a line of the plan: long values (documents,
/// scripts) by their size and digest.
fn shown(value: &str) -> String {
    if value.len() <= 80 && !value.contains('\n') {
        return format!("{value:?}");
    }
    let digest = short_digest(value.as_bytes());
    format!("<{} bytes, sha256 {digest}>", value.len())
}

fn short_digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.resource;
        let (sign, verb) = match self.change {
            Change::Create => ('+', "create"),
            Change::Update(_) => ('~', "change"),
            Change::Delete => ('-', "remove"),
        };
        write!(
            f,
            "{sign} {verb} {} {} ({})",
            r.kind.name(),
            r.name,
            r.scope
        )?;
        match &self.change {
            Change::Create => {
                for (k, v) in &r.props {
                    write!(f, "\n      {k} = {}", shown(v))?;
                }
            }
            Change::Update(changed) => {
                for (k, was) in changed {
                    write!(f, "\n      {k}: {} -> {}", shown(was), shown(r.prop(k)))?;
                }
            }
            Change::Delete => {}
        }
        Ok(())
    }
}

/// The plan as `meshgate plan` prints it, with a count per change.
pub fn render(actions: &[Action]) -> String {
    let mut out = String::new();
    for a in actions {
        out.push_str(&a.to_string());
        out.push('\n');
    }
    let count = |c: fn(&Change) -> bool| actions.iter().filter(|a| c(&a.change)).count();
    let (create, update, delete) = (
        count(|c| *c == Change::Create),
        count(|c| matches!(c, Change::Update(_))),
        count(|c| *c == Change::Delete),
    );
    if actions.is_empty() {
        out.push_str("nothing to do: the cloud holds what the fleet file describes\n");
    } else {
        out.push_str(&format!(
            "{create} to create, {update} to change, {delete} to remove\n"
        ));
    }
    out
}
