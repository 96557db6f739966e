//! PBX reports: call detail records, one per call leg, as Asterisk's CDR engine writes them
//! (`src`, `dst`, `dcontext`, `channel`, `dstchannel`, `lastapp`, `disposition`, `uniqueid`,
//! `linkedid`, `sequence`, ...), with times in milliseconds.
//!
//! Key: `<node>:<unique id>:<sequence>`, e.g. `pbx-a:1764057600.1234:7`: the node that handled
//! the leg, Asterisk's unique id of the channel and the CDR sequence number. Unique across the
//! cluster without coordination.
//! Append-only: a record is written once and never changes; a different record under the same
//! key is a conflict for an operator, never an overwrite.
//! Retention: two years (call records back billing disputes), at most fifty million records.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::append::{AppendPlugin, ReportSchema};
use tandem_sdk::{Example, Host, Info, Retention, Violation, check};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// How the call leg ended (Asterisk `disposition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Answered,
    NoAnswer,
    Busy,
    Failed,
    Congestion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
    Internal,
}

/// A call detail record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRecord {
    pub node: String,
    /// Asterisk's unique id of the channel: `<epoch seconds>.<counter>`.
    pub unique_id: String,
    /// The CDR's sequence number on that node.
    pub sequence: u64,
    /// The unique id shared by every leg of one call.
    pub linked_id: String,
    pub start_ms: u64,
    /// When the leg was answered; none if it never was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_ms: Option<u64>,
    pub end_ms: u64,
    /// The caller's number (`anonymous` when withheld).
    pub src: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_name: Option<String>,
    /// The number dialled.
    pub dst: String,
    /// The dialplan context the call was in.
    pub dst_context: String,
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_channel: Option<String>,
    /// The last dialplan application, e.g. `Dial`, `Queue`, `VoiceMail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_app: Option<String>,
    pub disposition: Disposition,
    pub direction: Direction,
    /// The trunk the leg used, for calls in and out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_code: Option<String>,
    /// The recording's file name, if the leg was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
}

/// `<digits>.<digits>`, optionally after a system name and a dash, as Asterisk makes them.
fn valid_unique_id(s: &str) -> bool {
    let id = s.rsplit_once('-').map_or(s, |(_, id)| id);
    id.split_once('.').is_some_and(|(secs, n)| check::digits(secs, 1..=12) && check::digits(n, 1..=12))
}

/// Free text of a CDR column: 1 to `max` printable characters.
fn text(field: &str, value: &str, max: usize, v: &mut Vec<Violation>) {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        v.push(Violation::new(field, "format", format!("1 to {max} printable characters")));
    }
}

impl ReportSchema for CallRecord {
    fn info() -> Info {
        Info {
            component: "pbx-reports".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Call detail records".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "pbx-a:1764057600.1234:7",
                    json!({
                        "node": "pbx-a", "unique_id": "1764057600.1234", "sequence": 7, "linked_id": "1764057600.1234",
                        "start_ms": 1764057600120u64, "answer_ms": 1764057604310u64, "end_ms": 1764057791002u64,
                        "src": "+447700900123", "src_name": "MARTIN A", "dst": "+442071234567", "dst_context": "from-trunk",
                        "channel": "PJSIP/carrier-main-00000012", "dst_channel": "PJSIP/1001-00000013", "last_app": "Dial",
                        "disposition": "answered", "direction": "inbound", "trunk": "carrier-main", "recording": "20251125-090000-1764057600.1234.wav"
                    }),
                ),
                Example::new(
                    "pbx-a:1764057900.1240:8",
                    json!({
                        "node": "pbx-a", "unique_id": "1764057900.1240", "sequence": 8, "linked_id": "1764057900.1240",
                        "start_ms": 1764057900000u64, "end_ms": 1764057925000u64, "src": "1002", "dst": "01632960123", "dst_context": "from-internal",
                        "channel": "PJSIP/1002-00000020", "dst_channel": "PJSIP/carrier-main-00000021", "last_app": "Dial",
                        "disposition": "no_answer", "direction": "outbound", "trunk": "carrier-main", "account_code": "sales"
                    }),
                ),
                Example::new(
                    "pbx-b:1764058000.88:3",
                    json!({
                        "node": "pbx-b", "unique_id": "1764058000.88", "sequence": 3, "linked_id": "1764058000.88",
                        "start_ms": 1764058000000u64, "answer_ms": 1764058000900u64, "end_ms": 1764058031000u64,
                        "src": "1001", "src_name": "Alice Martin", "dst": "2000", "dst_context": "from-internal",
                        "channel": "PJSIP/1001-00000003", "dst_channel": "PJSIP/2000-00000004", "last_app": "Dial",
                        "disposition": "answered", "direction": "internal"
                    }),
                ),
            ],
            retention: Some(Retention { max_age_ms: Some(730 * DAY_MS), max_count: Some(50_000_000) }),
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        let expected = format!("{}:{}:{}", self.node, self.unique_id, self.sequence);
        if key != expected {
            v.push(Violation::new("", "key", format!("a call record's key is <node>:<unique id>:<sequence>, here {expected}")));
        }
        if !check::name(&self.node) {
            v.push(Violation::new("node", "format", format!("{:?} is not a node name", self.node)));
        }
        for (field, id) in [("unique_id", &self.unique_id), ("linked_id", &self.linked_id)] {
            if !valid_unique_id(id) {
                v.push(Violation::new(field, "format", format!("{id:?} is not an Asterisk unique id like 1764057600.1234")));
            }
        }
        if self.start_ms == 0 {
            v.push(Violation::new("start_ms", "required", "when the leg started"));
        }
        if self.end_ms < self.start_ms {
            v.push(Violation::new("end_ms", "range", "a leg cannot end before it starts"));
        }
        let answered = self.disposition == Disposition::Answered;
        match self.answer_ms {
            Some(answer) if answer < self.start_ms || answer > self.end_ms => {
                v.push(Violation::new("answer_ms", "range", "a leg is answered between its start and its end"));
            }
            Some(_) if !answered => v.push(Violation::new("disposition", "format", "a leg with an answer time was answered")),
            None if answered => v.push(Violation::new("answer_ms", "required", "an answered leg has an answer time")),
            _ => {}
        }
        text("src", &self.src, 80, &mut v);
        text("dst", &self.dst, 80, &mut v);
        text("channel", &self.channel, 128, &mut v);
        if let Some(dst_channel) = &self.dst_channel {
            text("dst_channel", dst_channel, 128, &mut v);
        }
        if !check::name(&self.dst_context) {
            v.push(Violation::new("dst_context", "format", "a dialplan context is 1 to 64 of a-z, 0-9, - and _"));
        }
        match (&self.trunk, self.direction) {
            (Some(trunk), _) if !check::name(trunk) => v.push(Violation::new("trunk", "format", format!("{trunk:?} is not a trunk name"))),
            (Some(_), Direction::Internal) => v.push(Violation::new("trunk", "format", "an internal call uses no trunk")),
            _ => {}
        }
        if let Some(file) = &self.recording
            && (file.is_empty() || file.contains('/') || file.contains(".."))
        {
            v.push(Violation::new("recording", "format", "a recording is a file name, without directories"));
        }
        v
    }
}

/// The plugin.
pub type PbxReportsPlugin = AppendPlugin<CallRecord>;
tandem_sdk::export_plugin!(PbxReportsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::testing::{NoHost, codes, merge, put, put_err, stamp, write_violations};
    use tandem_sdk::{Plugin, WriteError};

    const KEY: &str = "pbx-b:1764058000.88:3";

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<PbxReportsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn cdr(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({
            "node": "pbx-b", "unique_id": "1764058000.88", "sequence": 3, "linked_id": "1764058000.88",
            "start_ms": 1764058000000u64, "answer_ms": 1764058000900u64, "end_ms": 1764058031000u64,
            "src": "1001", "dst": "2000", "dst_context": "from-internal", "channel": "PJSIP/1001-00000003",
            "disposition": "answered", "direction": "internal"
        });
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid_and_retention_is_set() {
        let info = PbxReportsPlugin::describe();
        assert_eq!((info.component.as_str(), info.shape.as_str()), ("pbx-reports", "append-only"));
        assert_eq!(info.retention, Some(Retention { max_age_ms: Some(730 * DAY_MS), max_count: Some(50_000_000) }));
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn key_is_node_unique_id_and_sequence() {
        assert!(has(&violations("pbx-b:1764058000.88:4", cdr(json!({}))), "", "key"));
        assert!(has(&violations("1764058000.88", cdr(json!({}))), "", "key"));
        assert_eq!(violations("pbx-b:asterisk-1764058000.88:3", cdr(json!({"unique_id": "asterisk-1764058000.88"}))), vec![]);
    }

    #[test]
    fn refuses_inconsistent_records() {
        assert!(has(&violations(KEY, cdr(json!({"linked_id": "call-88"}))), "/linked_id", "format"));
        assert!(has(&violations("pbx-b:88:3", cdr(json!({"unique_id": "88"}))), "/unique_id", "format"));
        assert!(has(&violations("PBX B:1764058000.88:3", cdr(json!({"node": "PBX B"}))), "/node", "format"));
        assert!(has(&violations(KEY, cdr(json!({"start_ms": 0}))), "/start_ms", "required"));
        assert!(has(&violations(KEY, cdr(json!({"end_ms": 1764057999999u64}))), "/end_ms", "range"));
        assert!(has(&violations(KEY, cdr(json!({"answer_ms": 1764058099999u64}))), "/answer_ms", "range"));
        let mut unanswered = cdr(json!({}));
        unanswered.as_object_mut().map(|d| d.remove("answer_ms"));
        assert!(has(&violations(KEY, unanswered), "/answer_ms", "required"));
        assert!(has(&violations(KEY, cdr(json!({"disposition": "busy"}))), "/disposition", "format"));
        assert!(has(&violations(KEY, cdr(json!({"src": ""}))), "/src", "format"));
        assert!(has(&violations(KEY, cdr(json!({"dst": "20\n00"}))), "/dst", "format"));
        assert!(has(&violations(KEY, cdr(json!({"dst_context": "From Internal"}))), "/dst_context", "format"));
        assert!(has(&violations(KEY, cdr(json!({"trunk": "carrier-main"}))), "/trunk", "format"));
        assert!(has(&violations(KEY, cdr(json!({"recording": "../../etc/passwd"}))), "/recording", "format"));
        assert!(has(&violations(KEY, cdr(json!({"disposition": "ANSWERED"}))), "", "malformed"));
    }

    #[test]
    fn a_record_is_written_once_and_a_clash_is_a_conflict() {
        let first = put::<PbxReportsPlugin>(KEY, cdr(json!({})), None, &stamp(1, "pbx-b"));
        assert!(matches!(
            put_err::<PbxReportsPlugin>(KEY, cdr(json!({"dst": "2001"})), Some(&first), &stamp(2, "pbx-b")),
            WriteError::Invalid(_)
        ));
        let other = put::<PbxReportsPlugin>(KEY, cdr(json!({"dst": "2001"})), None, &stamp(1, "pbx-a"));
        let merged = merge::<PbxReportsPlugin>(KEY, &first, &other);
        assert_eq!(merged, merge::<PbxReportsPlugin>(KEY, &other, &first));
        assert!(has(&codes(&PbxReportsPlugin::validate(KEY, &merged.data, &NoHost).expect_err("conflict")), "", "conflict"));
    }
}
