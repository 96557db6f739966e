//! Requirements management: the requirements a deployment must meet, each moving through a
//! workflow from draft to closed, with acceptance criteria, dependencies and a comment thread.
//!
//! Key: a short name (`[a-z0-9_-]{1,64}`), e.g. `failover-under-1s`.
//!
//! Merge, per field:
//! - `status`: only moves forward. The merge of two statuses is the later one in the workflow
//!   (draft, proposed, approved, implemented, verified, closed), whatever the stamps; a local
//!   write that moves it back is refused.
//! - `depends_on`, `tags`: add-wins sets.
//! - `comments`: append-only.
//! - everything else: last writer wins, field by field.
//!
//! References: `depends_on` names requirements that exist. Checked through the host lookup, so
//! enforced where one node takes the writes.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{FieldKind, RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// The workflow, in order.
const WORKFLOW: &[&str] = &["draft", "proposed", "approved", "implemented", "verified", "closed"];

/// MoSCoW priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Must,
    Should,
    Could,
    Wont,
}

/// A comment on a requirement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comment {
    /// When it was written (milliseconds since the Unix epoch), as the application saw it.
    pub at_ms: u64,
    pub author: String,
    pub text: String,
}

/// A requirement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// One of `WORKFLOW`.
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default = "default_priority")]
    pub priority: Priority,
    /// The user responsible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What must be shown for the requirement to be verified.
    #[serde(default)]
    pub acceptance_criteria: Vec<String>,
    /// How it was verified (a test run, a report); required from `verified` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub comments: Vec<Comment>,
}

fn default_status() -> String {
    "draft".to_owned()
}
fn default_priority() -> Priority {
    Priority::Should
}

impl RecordSchema for Requirement {
    fn info() -> Info {
        Info {
            component: "requirements".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Requirements with a forward-only status workflow".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "failover-under-1s",
                    json!({
                        "title": "Calls keep flowing when a PBX node fails", "priority": "must", "status": "approved", "owner": "alice",
                        "description": "A standby takes over call handling within one second of the primary failing.",
                        "acceptance_criteria": ["Kill the primary under load: the standby accepts writes within 1 s", "No acknowledged write is lost"],
                        "tags": ["redundancy", "sla"]
                    }),
                ),
                Example::new(
                    "hotel-wakeup-calls",
                    json!({
                        "title": "Wake-up calls from the PMS", "status": "verified", "owner": "tom", "verified_by": "acceptance-run-2025-11-20",
                        "acceptance_criteria": ["A wake-up set in Opera rings the room at the set minute"],
                        "comments": [{"at_ms": 1763640000000u64, "author": "tom", "text": "Verified on site with the front desk."}]
                    }),
                ),
                Example::new(
                    "gdpr-call-recording-notice",
                    json!({"title": "Announce call recording before connecting", "priority": "could", "tags": ["compliance"]}),
                ),
            ],
            retention: None,
        }
    }

    fn fields() -> &'static [(&'static str, FieldKind)] {
        &[("status", FieldKind::Rank(WORKFLOW)), ("depends_on", FieldKind::Set), ("tags", FieldKind::Set), ("comments", FieldKind::Append)]
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::name(key) {
            v.push(Violation::new("", "key", "a requirement's name is 1 to 64 of a-z, 0-9, - and _"));
        }
        if self.title.trim().is_empty() || self.title.chars().count() > 200 {
            v.push(Violation::new("title", "required", "a requirement needs a title of up to 200 characters"));
        }
        let rank = WORKFLOW.iter().position(|s| *s == self.status);
        let reached = |state: &str| match (rank, WORKFLOW.iter().position(|s| *s == state)) {
            (Some(rank), Some(needed)) => rank >= needed,
            _ => false,
        };
        if rank.is_none() {
            v.push(Violation::new("status", "format", format!("must be one of: {}", WORKFLOW.join(", "))));
        }
        if let Some(owner) = &self.owner {
            if !check::name(owner) {
                v.push(Violation::new("owner", "format", format!("{owner:?} is not a user name")));
            }
        } else if reached("approved") {
            v.push(Violation::new("owner", "required", "an approved requirement needs an owner"));
        }
        if self.acceptance_criteria.iter().any(|c| c.trim().is_empty()) {
            v.push(Violation::new("acceptance_criteria", "format", "an acceptance criterion cannot be empty"));
        }
        if self.acceptance_criteria.is_empty() && reached("approved") {
            v.push(Violation::new("acceptance_criteria", "required", "a requirement is approved with the criteria that will verify it"));
        }
        if self.verified_by.is_none() && reached("verified") {
            v.push(Violation::new("verified_by", "required", "say how the requirement was verified"));
        }
        for (i, dependency) in self.depends_on.iter().enumerate() {
            let field = format!("depends_on/{i}");
            if dependency == key {
                v.push(Violation::new(&field, "loop", "a requirement cannot depend on itself"));
            } else {
                v.extend(check::exists(host, &field, "requirements", dependency, "requirement"));
            }
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if !check::name(tag) {
                v.push(Violation::new(&format!("tags/{i}"), "format", format!("{tag:?} is not a tag (a-z, 0-9, - and _)")));
            }
        }
        for (i, comment) in self.comments.iter().enumerate() {
            if comment.text.trim().is_empty() || comment.text.chars().count() > 4000 {
                v.push(Violation::new(&format!("comments/{i}/text"), "format", "a comment is 1 to 4000 characters"));
            }
            if !check::name(&comment.author) {
                v.push(Violation::new(&format!("comments/{i}/author"), "format", "a comment's author is a user name"));
            }
        }
        v
    }
}

/// The plugin.
pub type RequirementsPlugin = RecordPlugin<Requirement>;
tandem_sdk::export_plugin!(RequirementsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, put_err, read, stamp, write_violations};
    use tandem_sdk::{Plugin, WriteError};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<RequirementsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn req(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"title": "Failover", "owner": "alice", "acceptance_criteria": ["standby takes over in 1 s"]});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = RequirementsPlugin::describe();
        assert_eq!(info.component, "requirements");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn status_never_moves_backwards_by_merging() {
        let base = put::<RequirementsPlugin>("r", req(json!({"status": "proposed"})), None, &stamp(1, "a"));
        // a marks it implemented; b, later by the clock but not having seen that, edits the title
        // and approves it: the merge keeps the furthest status and b's title.
        let a = put::<RequirementsPlugin>("r", req(json!({"status": "implemented"})), Some(&base), &stamp(2, "a"));
        let b = put::<RequirementsPlugin>("r", req(json!({"status": "approved", "title": "Fast failover"})), Some(&base), &stamp(9, "b"));
        let ab = merge::<RequirementsPlugin>("r", &a, &b);
        assert_eq!(ab, merge::<RequirementsPlugin>("r", &b, &a));
        let doc = read::<RequirementsPlugin>("r", &ab).expect("live");
        assert_eq!((&doc["status"], &doc["title"]), (&json!("implemented"), &json!("Fast failover")));
    }

    #[test]
    fn a_status_written_after_a_delete_survives_in_any_delivery_order() {
        // Found by the conformance kit: an early "approved", a delete, then a re-created draft.
        let approved = put::<RequirementsPlugin>("r", req(json!({"status": "approved"})), None, &stamp(22, "c"));
        let deleted = RequirementsPlugin::serialize("r", tandem_sdk::Op::Delete, None, &stamp(57, "b")).expect("delete");
        let draft = put::<RequirementsPlugin>("r", json!({"title": "Failover"}), None, &stamp(149, "a"));
        let left = merge::<RequirementsPlugin>("r", &merge::<RequirementsPlugin>("r", &draft, &deleted), &approved);
        let right = merge::<RequirementsPlugin>("r", &draft, &merge::<RequirementsPlugin>("r", &deleted, &approved));
        assert_eq!(left, right);
        assert_eq!(read::<RequirementsPlugin>("r", &left).expect("live")["status"], "draft");
    }

    #[test]
    fn a_local_write_cannot_move_the_status_back() {
        let s = put::<RequirementsPlugin>("r", req(json!({"status": "approved"})), None, &stamp(1, "a"));
        match put_err::<RequirementsPlugin>("r", req(json!({"status": "draft"})), Some(&s), &stamp(2, "a")) {
            WriteError::Invalid(v) => assert!(has(&codes(&v), "/status", "workflow")),
            other => panic!("{other:?}"),
        }
        match put_err::<RequirementsPlugin>("r", req(json!({"status": "done"})), Some(&s), &stamp(2, "a")) {
            WriteError::Invalid(v) => assert!(has(&codes(&v), "/status", "format")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn workflow_states_need_their_fields() {
        let bare = json!({"title": "Failover", "status": "approved"});
        let found = violations("r", bare);
        assert!(has(&found, "/owner", "required") && has(&found, "/acceptance_criteria", "required"));
        assert!(has(&violations("r", req(json!({"status": "verified"}))), "/verified_by", "required"));
        assert_eq!(violations("r", req(json!({"status": "verified", "verified_by": "run-42"}))), vec![]);
        assert_eq!(violations("r", json!({"title": "Idea"})), vec![], "a draft needs only a title");
    }

    #[test]
    fn dependencies_must_exist() {
        let doc = req(json!({"depends_on": ["witness-node", "r"]}));
        // A set reads back in canonical order: ["r", "witness-node"].
        let found = violations("r", doc.clone());
        assert!(has(&found, "/depends_on/0", "loop") && has(&found, "/depends_on/1", "reference"));
        let host = MapHost::default().with("requirements", "witness-node", json!({"title": "Witness"}));
        let found = codes(&write_violations::<RequirementsPlugin>("r", doc, &host));
        assert_eq!(found.iter().filter(|(_, c)| c == "reference").count(), 0);
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("Failover!", req(json!({}))), "", "key"));
        assert!(has(&violations("r", req(json!({"title": ""}))), "/title", "required"));
        assert!(has(&violations("r", req(json!({"owner": "Alice M"}))), "/owner", "format"));
        assert!(has(&violations("r", req(json!({"acceptance_criteria": [""]}))), "/acceptance_criteria", "format"));
        assert!(has(&violations("r", req(json!({"tags": ["SLA"]}))), "/tags/0", "format"));
        assert!(has(
            &violations("r", req(json!({"comments": [{"at_ms": 1, "author": "alice", "text": " "}]}))),
            "/comments/0/text",
            "format"
        ));
        assert!(has(
            &violations("r", req(json!({"comments": [{"at_ms": 1, "author": "", "text": "ok"}]}))),
            "/comments/0/author",
            "format"
        ));
        assert!(has(&violations("r", req(json!({"priority": "urgent"}))), "", "malformed"));
    }

    #[test]
    fn comments_and_tags_from_both_nodes_are_kept() {
        let c = |author: &str, text: &str| json!({"at_ms": 1_763_640_000_000u64, "author": author, "text": text});
        let base = put::<RequirementsPlugin>("r", req(json!({"tags": ["sla"]})), None, &stamp(1, "a"));
        let a = put::<RequirementsPlugin>(
            "r",
            req(json!({"tags": ["sla", "redundancy"], "comments": [c("alice", "measured 0.4 s")]})),
            Some(&base),
            &stamp(2, "a"),
        );
        let b = put::<RequirementsPlugin>(
            "r",
            req(json!({"tags": ["sla", "customer"], "comments": [c("tom", "customer asks for 0.5 s")]})),
            Some(&base),
            &stamp(2, "b"),
        );
        let ab = merge::<RequirementsPlugin>("r", &a, &b);
        assert_eq!(ab, merge::<RequirementsPlugin>("r", &b, &a));
        let doc = read::<RequirementsPlugin>("r", &ab).expect("live");
        assert_eq!(doc["tags"], json!(["customer", "redundancy", "sla"]));
        assert_eq!(doc["comments"].as_array().map(Vec::len), Some(2));
    }
}
