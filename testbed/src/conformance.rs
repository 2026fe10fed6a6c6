//! The conformance runner: named checks gated on the target's advertised capabilities, each
//! Passed / Skipped(reason) / Failed(error), with a readable summary and JUnit XML.
//!
//! A [`Ctx`] records what a check created (sandboxes, claims, namespaces) and cleans it up
//! after the check, whether it passed or not.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use netlet_sdk::{
    client::Clients,
    proto::{Capability, DetachPodRequest, GetInfoResponse, ReleaseDeviceRequest},
};

/// What a check found.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The behaviour matched the contract.
    Passed,
    /// Not applicable, with why.
    Skipped(String),
    /// Did not match, with what was seen.
    Failed(String),
}

/// Result of a check body: `Err` is a failure.
pub type CheckResult = Result<Outcome, String>;

/// What the target is: the host (which routes to drivers) or a driver. Some rules differ
/// (the proto's "On the host" and "On a driver" paragraphs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The netlet host.
    Host,
    /// A network driver.
    Driver,
}

impl Mode {
    /// The mode a target's GetInfo declares (`role`; unspecified is a driver).
    pub fn of(info: &GetInfoResponse) -> Self {
        if info.role() == netlet_sdk::proto::EndpointRole::Host {
            Mode::Host
        } else {
            Mode::Driver
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Driver => "driver",
        }
    }
}

/// One conformance check.
pub struct Check {
    /// Name, `area/what`.
    pub name: &'static str,
    /// Capability it needs; skipped when the target does not declare it.
    pub needs: Option<Capability>,
    /// Only for a host or only for a driver; `None`: both.
    pub only: Option<Mode>,
    /// Body.
    pub run: for<'a> fn(&'a Ctx) -> BoxFuture<'a, CheckResult>,
}

enum Created {
    Sandbox(String),
    Claim(String),
    Netns(std::path::PathBuf),
}

/// What a check gets: clients, the target's GetInfo, and a cleanup recorder.
pub struct Ctx {
    /// Clients to the target.
    pub clients: Clients,
    /// The target's GetInfo.
    pub info: GetInfoResponse,
    /// How many times idempotency checks replay a call.
    pub replays: usize,
    /// A second network for multi-network checks.
    pub secondary_network: Option<String>,
    /// Whether the target is the host or a driver.
    pub mode: Mode,
    created: Mutex<Vec<Created>>,
    seq: std::sync::atomic::AtomicU32,
}

impl Ctx {
    /// A unique name for this run.
    pub fn unique(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{}-{n}", std::process::id())
    }

    /// Records a sandbox to detach at cleanup.
    pub fn created_sandbox(&self, id: &str) {
        if let Ok(mut c) = self.created.lock() {
            c.push(Created::Sandbox(id.to_string()));
        }
    }

    /// Records a device claim to release at cleanup.
    pub fn created_claim(&self, uid: &str) {
        if let Ok(mut c) = self.created.lock() {
            c.push(Created::Claim(uid.to_string()));
        }
    }

    /// A fresh pod network namespace (removed at cleanup). Needs root.
    pub fn pod_netns(&self) -> Result<String, Outcome> {
        if !netlet_sdk::netns::can_create() {
            return Err(Outcome::Skipped(
                "needs root to create a pod network namespace".into(),
            ));
        }
        let path = netlet_sdk::netns::create_named(&self.unique("netlet-conf"))
            .map_err(|e| Outcome::Failed(format!("create netns: {e}")))?;
        if let Ok(mut c) = self.created.lock() {
            c.push(Created::Netns(path.clone()));
        }
        Ok(path.display().to_string())
    }

    /// Whether the target has an optional feature (every one when its GetInfo lists none:
    /// written before features existed).
    pub fn has_feature(&self, f: netlet_sdk::proto::Feature) -> bool {
        self.info
            .features
            .as_ref()
            .is_none_or(|fs| fs.supported.contains(&(f as i32)))
    }

    /// The network pod checks attach to: the first the target serves.
    pub fn network(&self) -> Option<String> {
        self.info.networks.first().cloned()
    }

    async fn cleanup(&self) {
        let created: Vec<Created> = self
            .created
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for c in created.into_iter().rev() {
            match c {
                Created::Sandbox(id) => {
                    let _ = self
                        .clients
                        .pods
                        .clone()
                        .detach_pod(DetachPodRequest {
                            sandbox_id: id,
                            ..Default::default()
                        })
                        .await;
                }
                Created::Claim(uid) => {
                    let _ = self
                        .clients
                        .devices
                        .clone()
                        .release_device(ReleaseDeviceRequest { claim_uid: uid })
                        .await;
                }
                Created::Netns(p) => {
                    let _ = netlet_sdk::netns::delete(&p);
                }
            }
        }
    }
}

/// One check's record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Check name.
    pub name: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Duration.
    pub took: Duration,
}

/// How a run is shaped.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Only checks whose name matches.
    pub focus: Option<regex::Regex>,
    /// Leave out checks whose name matches.
    pub skip: Option<regex::Regex>,
    /// How many times idempotency checks replay a call.
    pub replays: usize,
    /// A second network the target serves, for multi-network checks.
    pub secondary_network: Option<String>,
    /// Host or driver; `None`: as the target's GetInfo says.
    pub mode: Option<Mode>,
}

/// Runs `checks` (filtered by `opts`) against the target.
pub async fn run(
    clients: Clients,
    info: GetInfoResponse,
    checks: Vec<Check>,
    opts: &RunOptions,
) -> Vec<Record> {
    let mode = opts.mode.unwrap_or_else(|| Mode::of(&info));
    let ctx = Ctx {
        clients,
        info,
        replays: opts.replays,
        secondary_network: opts.secondary_network.clone(),
        mode,
        created: Mutex::new(Vec::new()),
        seq: 0.into(),
    };
    let mut out = Vec::new();
    for c in checks {
        if opts.focus.as_ref().is_some_and(|f| !f.is_match(c.name))
            || opts.skip.as_ref().is_some_and(|s| s.is_match(c.name))
        {
            continue;
        }
        let start = Instant::now();
        let outcome = match c.needs {
            Some(cap) if !ctx.info.capabilities.contains(&(cap as i32)) => {
                Outcome::Skipped(format!("target does not declare {}", cap.as_str_name()))
            }
            _ if c.only.is_some_and(|m| m != mode) => Outcome::Skipped(format!(
                "meant for a {}; the target is a {} (--mode)",
                c.only.map(Mode::as_str).unwrap_or_default(),
                mode.as_str()
            )),
            _ => {
                let r = tokio::time::timeout(Duration::from_secs(60), (c.run)(&ctx)).await;
                ctx.cleanup().await;
                match r {
                    Ok(Ok(o)) => o,
                    Ok(Err(e)) => Outcome::Failed(one_line(c.name, &e)),
                    Err(_) => Outcome::Failed(one_line(c.name, "timed out after 60s")),
                }
            }
        };
        out.push(Record {
            name: c.name.to_string(),
            outcome,
            took: start.elapsed(),
        });
    }
    out
}

/// A failure as one line that names the contract: a check's own rule when it gives one, else
/// the proto file of its area.
fn one_line(check: &str, e: &str) -> String {
    let e = e.split_whitespace().collect::<Vec<_>>().join(" ");
    if e.contains("(contract:") {
        return e;
    }
    let file = match check.split('/').next().unwrap_or_default() {
        "dataplane" => "pods",
        area => area,
    };
    format!("{e} (contract: {file}.proto)")
}

/// Human-readable summary; the last line is `N passed, N failed, N skipped`.
pub fn summary(records: &[Record]) -> String {
    let mut s = String::new();
    let (mut p, mut f, mut k) = (0, 0, 0);
    for r in records {
        match &r.outcome {
            Outcome::Passed => {
                p += 1;
                s += &format!("PASS  {} ({:.1} ms)\n", r.name, r.took.as_secs_f64() * 1e3);
            }
            Outcome::Skipped(why) => {
                k += 1;
                s += &format!("SKIP  {}: {why}\n", r.name);
            }
            Outcome::Failed(e) => {
                f += 1;
                s += &format!("FAIL  {}: {e}\n", r.name);
            }
        }
    }
    s += &format!("conformance: {p} passed, {f} failed, {k} skipped\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML of the run.
pub fn junit(target: &str, records: &[Record]) -> String {
    let failures = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    let skipped = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skipped(_)))
        .count();
    let total: f64 = records.iter().map(|r| r.took.as_secs_f64()).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"netlet-conformance\" hostname=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total:.3}\">\n",
        xml_escape(target),
        records.len()
    );
    for r in records {
        let (class, name) = r.name.split_once('/').unwrap_or(("netlet", &r.name));
        x += &format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(class),
            xml_escape(name),
            r.took.as_secs_f64()
        );
        match &r.outcome {
            Outcome::Passed => x += "/>\n",
            Outcome::Skipped(why) => {
                x += &format!("><skipped message=\"{}\"/></testcase>\n", xml_escape(why))
            }
            Outcome::Failed(e) => {
                x += &format!(
                    "><failure message=\"{}\">{}</failure></testcase>\n",
                    xml_escape(e),
                    xml_escape(e)
                )
            }
        }
    }
    x += "</testsuite>\n</testsuites>\n";
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_one_line_naming_the_contract() {
        assert_eq!(
            one_line("dataplane/pod-to-node", "node saw\n  nothing"),
            "node saw nothing (contract: pods.proto)"
        );
        let own = "sent X: expected Y, got Z (contract: AttachPod is idempotent)";
        assert_eq!(one_line("pods/attach-idempotent", own), own);
    }
}
