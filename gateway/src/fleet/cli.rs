//! What `meshgate plan`, `up`, `down` and `bootstrap` print: the plan (or
//! what was done) as text, or as one JSON document for scripts, with the
//! calls made and the time taken.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::plan::{render, Action, Change};

/// Which of the three commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Plan,
    Up,
    Down,
}

/// One action as JSON: `{change, kind, name, scope, properties|changed}`.
pub fn action_json(a: &Action) -> Value {
    let r = &a.resource;
    let mut v = json!({
        "change": match a.change { Change::Create => "create", Change::Update(_) => "change", Change::Delete => "remove" },
        "kind": r.kind.name(),
        "name": r.name,
        "scope": r.scope.to_string(),
    });
    match &a.change {
        Change::Create => v["properties"] = json!(r.props),
        Change::Update(changed) => {
            v["changed"] = changed
                .iter()
                .map(|(k, was)| json!({"property": k, "was": was, "now": r.prop(k)}))
                .collect();
        }
        Change::Delete => {}
    }
    v
}

/// Runs `verb` on the fleet file and prints the outcome. `reads` and
/// `writes` count the fleet code's calls (a listing once, however many
/// pages or per-item reads it takes); every write is counted.
#[cfg(feature = "aws")]
pub fn run(verb: Verb, fleet: &Path, as_json: bool) -> Result<()> {
    let outcome = match verb {
        Verb::Plan => super::run::plan_fleet(fleet)?,
        Verb::Up => super::run::up(fleet)?,
        Verb::Down => super::run::down(fleet)?,
    };
    let secs = outcome.elapsed.as_secs_f64();
    if as_json {
        let doc = json!({
            "command": match verb { Verb::Plan => "plan", Verb::Up => "up", Verb::Down => "down" },
            "fleet": fleet.display().to_string(),
            "actions": outcome.actions.iter().map(action_json).collect::<Vec<_>>(),
            "reads": outcome.reads,
            "writes": outcome.writes,
            "seconds": (secs * 1000.0).round() / 1000.0,
        });
        println!("{doc:#}");
        return Ok(());
    }
    match verb {
        Verb::Plan => print!("{}", render(&outcome.actions)),
        Verb::Up | Verb::Down => {
            for a in &outcome.actions {
                println!("{a}");
            }
            let done = if verb == Verb::Up { "up" } else { "down" };
            println!("{done}: {} changes made", outcome.actions.len());
        }
    }
    println!(
        "{} read and {} write calls to AWS in {secs:.1} s",
        outcome.reads, outcome.writes
    );
    Ok(())
}

#[cfg(not(feature = "aws"))]
pub fn run(_: Verb, _: &Path, _: bool) -> Result<()> {
    anyhow::bail!("this build has no AWS SDK (built without the aws feature)")
}

/// `plan --output cloudformation`: writes the templates into `dir`.
#[cfg(feature = "aws")]
pub fn cloudformation(fleet: &Path, dir: &Path) -> Result<()> {
    let files = super::run::cloudformation(fleet, dir)?;
    for f in &files {
        println!("{}", f.display());
    }
    println!(
        "{} CloudFormation templates written (deploy each account's first region first: it holds the account's IAM); \
         then meshgate up makes the secrets and route-table tags, which no template carries",
        files.len()
    );
    Ok(())
}

#[cfg(not(feature = "aws"))]
pub fn cloudformation(_: &Path, _: &Path) -> Result<()> {
    anyhow::bail!("this build has no AWS SDK (built without the aws feature)")
}

/// On an appliance: fetches its secret into `dir`.
#[cfg(feature = "aws")]
pub fn bootstrap(
    secret: &str,
    region: &str,
    dir: &Path,
    endpoint_url: Option<String>,
) -> Result<()> {
    super::run::bootstrap(secret, region, dir, endpoint_url)?;
    println!(
        "{secret}: certificate, key, CA and epoch key written to {}",
        dir.display()
    );
    Ok(())
}

#[cfg(not(feature = "aws"))]
pub fn bootstrap(_: &str, _: &str, _: &Path, _: Option<String>) -> Result<()> {
    anyhow::bail!("this build has no AWS SDK (built without the aws feature)")
}
