//! Fax settings: how the PBX sends and receives faxes (Asterisk `res_fax.conf` and the FreePBX
//! fax module) and the fax-to-e-mail inboxes that incoming routes deliver faxes to.
//!
//! Keys: `options` for the one record of fax options, `inbox:<name>` for an inbox (names are
//! `[a-z0-9_-]{1,64}`; incoming routes name inboxes this way). The document's `kind` says which,
//! and must match.
//! Merge: per field, last writer wins; an inbox's recipient list is one value.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// Transmission rates a fax modem negotiates, in bit/s (V.27ter, V.29, V.17).
const RATES: &[u32] = &[2400, 4800, 7200, 9600, 12000, 14400];

/// A record of this component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Options(Options),
    Inbox(Inbox),
}

/// The fax modulations res_fax may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modem {
    V17,
    V27,
    V29,
    V34,
}

impl Modem {
    /// The fastest rate this modulation carries, within the rates above.
    fn top_rate(self) -> u32 {
        match self {
            Modem::V27 => 4800,
            Modem::V29 => 9600,
            Modem::V17 | Modem::V34 => 14400,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaperSize {
    A4,
    Letter,
}

/// How received faxes are attached to the e-mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachFormat {
    Pdf,
    Tiff,
    Both,
}

/// The PBX's fax options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Text printed at the top of every page sent.
    #[serde(default)]
    pub header: String,
    /// The station identifier (T.30 CSI/TSI): up to 20 of digits, `+` and spaces.
    #[serde(default)]
    pub station_id: String,
    /// Error correction mode.
    #[serde(default = "yes")]
    pub ecm: bool,
    #[serde(default = "default_min_rate")]
    pub min_rate: u32,
    #[serde(default = "default_max_rate")]
    pub max_rate: u32,
    #[serde(default = "default_modems")]
    pub modems: Vec<Modem>,
    /// Accept T.38 (fax over IP) re-invites.
    #[serde(default = "yes")]
    pub t38: bool,
    #[serde(default = "default_paper")]
    pub paper_size: PaperSize,
    /// The From: address of fax e-mails.
    pub sender_email: String,
}

fn yes() -> bool {
    true
}
fn default_min_rate() -> u32 {
    4800
}
fn default_max_rate() -> u32 {
    14400
}
fn default_modems() -> Vec<Modem> {
    vec![Modem::V17, Modem::V27, Modem::V29]
}
fn default_paper() -> PaperSize {
    PaperSize::A4
}

/// A fax-to-e-mail inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbox {
    #[serde(default)]
    pub description: String,
    /// Who receives the faxes.
    pub recipients: Vec<String>,
    #[serde(default = "default_attach")]
    pub attach_format: AttachFormat,
    /// Replaces the options' station identifier for faxes to this inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_id: Option<String>,
}

fn default_attach() -> AttachFormat {
    AttachFormat::Pdf
}

fn valid_station_id(s: &str) -> bool {
    s.len() <= 20 && s.chars().all(|c| c.is_ascii_digit() || c == '+' || c == ' ')
}

impl Options {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.header.chars().count() > 50 || self.header.chars().any(|c| !c.is_ascii() || c.is_ascii_control()) {
            v.push(Violation::new("header", "format", "a page header is up to 50 printable ASCII characters"));
        }
        if !valid_station_id(&self.station_id) {
            v.push(Violation::new("station_id", "format", "a station identifier is up to 20 of digits, + and spaces"));
        }
        for (field, rate) in [("min_rate", self.min_rate), ("max_rate", self.max_rate)] {
            if !RATES.contains(&rate) {
                v.push(Violation::new(field, "format", format!("{rate} is not a fax rate (2400, 4800, 7200, 9600, 12000, 14400)")));
            }
        }
        if self.min_rate > self.max_rate {
            v.push(Violation::new("min_rate", "range", "min_rate is above max_rate"));
        }
        if self.modems.is_empty() {
            v.push(Violation::new("modems", "required", "at least one modem type"));
        }
        let fastest = self.modems.iter().map(|m| m.top_rate()).max();
        if fastest.is_some_and(|fastest| fastest < self.min_rate) {
            v.push(Violation::new("modems", "range", "none of these modems reaches min_rate"));
        }
        if !check::email(&self.sender_email) {
            v.push(Violation::new("sender_email", "format", format!("{:?} is not an e-mail address", self.sender_email)));
        }
        v
    }
}

impl Inbox {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.recipients.is_empty() {
            v.push(Violation::new("recipients", "required", "an inbox delivers to at least one address"));
        }
        v.extend(check::range("recipients", self.recipients.len(), 0..=20));
        for (i, address) in self.recipients.iter().enumerate() {
            let field = format!("recipients/{i}");
            if !check::email(address) {
                v.push(Violation::new(&field, "format", format!("{address:?} is not an e-mail address")));
            } else if self.recipients[..i].iter().any(|a| a.eq_ignore_ascii_case(address)) {
                v.push(Violation::new(&field, "unique", format!("{address} is listed twice")));
            }
        }
        if let Some(id) = &self.station_id
            && !valid_station_id(id)
        {
            v.push(Violation::new("station_id", "format", "a station identifier is up to 20 of digits, + and spaces"));
        }
        v
    }
}

impl RecordSchema for Record {
    fn info() -> Info {
        Info {
            component: "fax-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Fax options and fax-to-e-mail inboxes".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "options",
                    json!({"kind": "options", "header": "Acme Ltd", "station_id": "+44 20 7123 4590", "min_rate": 4800, "max_rate": 14400, "sender_email": "fax@acme.example"}),
                ),
                Example::new(
                    "inbox:accounts",
                    json!({"kind": "inbox", "description": "Accounts payable", "recipients": ["ap@acme.example", "finance.lead@acme.example"], "attach_format": "both"}),
                ),
                Example::new(
                    "inbox:reception",
                    json!({"kind": "inbox", "recipients": ["reception@acme.example"], "station_id": "+44 20 7123 4500"}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        match (self, key.split_once(':')) {
            (Record::Options(options), None) if key == "options" => options.validate(),
            (Record::Inbox(inbox), Some(("inbox", name))) => {
                let key_violation =
                    (!check::name(name)).then(|| Violation::new("", "key", "an inbox name is 1 to 64 of a-z, 0-9, - and _"));
                key_violation.into_iter().chain(inbox.validate()).collect()
            }
            _ => vec![Violation::new("kind", "key", "the options' key is options, an inbox's inbox:<name>")],
        }
    }
}

/// The plugin.
pub type FaxPlugin = RecordPlugin<Record>;
tandem_sdk::export_plugin!(FaxPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<FaxPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn options(extra: serde_json::Value) -> Vec<(String, String)> {
        let mut doc = json!({"kind": "options", "sender_email": "fax@acme.example"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        violations("options", doc)
    }

    #[test]
    fn examples_are_valid() {
        let info = FaxPlugin::describe();
        assert_eq!(info.component, "fax-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn kind_matches_the_key() {
        assert!(has(&violations("inbox:accounts", json!({"kind": "options", "sender_email": "fax@acme.example"})), "/kind", "key"));
        assert!(has(&violations("inbox:Accounts", json!({"kind": "inbox", "recipients": ["ap@acme.example"]})), "", "key"));
    }

    #[test]
    fn refuses_option_mistakes() {
        assert!(has(&options(json!({"header": "Ä".repeat(10)})), "/header", "format"));
        assert!(has(&options(json!({"station_id": "ACME-FAX"})), "/station_id", "format"));
        assert!(has(&options(json!({"max_rate": 33600})), "/max_rate", "format"));
        assert!(has(&options(json!({"min_rate": 9600, "max_rate": 4800})), "/min_rate", "range"));
        assert!(has(&options(json!({"modems": []})), "/modems", "required"));
        assert!(has(&options(json!({"modems": ["v27"], "min_rate": 9600})), "/modems", "range"));
        assert!(has(&options(json!({"sender_email": "fax"})), "/sender_email", "format"));
        assert!(has(&options(json!({"paper_size": "a3"})), "", "malformed"));
    }

    #[test]
    fn refuses_inbox_mistakes() {
        let inbox = |recipients: serde_json::Value| violations("inbox:accounts", json!({"kind": "inbox", "recipients": recipients}));
        assert!(has(&inbox(json!([])), "/recipients", "required"));
        assert!(has(&inbox(json!(["accounts"])), "/recipients/0", "format"));
        assert!(has(&inbox(json!(["ap@acme.example", "AP@acme.example"])), "/recipients/1", "unique"));
        let many: Vec<String> = (0..21).map(|i| format!("user{i}@acme.example")).collect();
        assert!(has(&inbox(json!(many)), "/recipients", "range"));
        let bad_id = json!({"kind": "inbox", "recipients": ["ap@acme.example"], "station_id": "Accounts"});
        assert!(has(&violations("inbox:accounts", bad_id), "/station_id", "format"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let doc = |extra: serde_json::Value| {
            let mut d = json!({"kind": "inbox", "recipients": ["ap@acme.example"]});
            if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
                d.extend(extra.clone());
            }
            d
        };
        let base = put::<FaxPlugin>("inbox:accounts", doc(json!({})), None, &stamp(1, "a"));
        let a = put::<FaxPlugin>(
            "inbox:accounts",
            doc(json!({"recipients": ["ap@acme.example", "cfo@acme.example"]})),
            Some(&base),
            &stamp(2, "a"),
        );
        let b = put::<FaxPlugin>("inbox:accounts", doc(json!({"attach_format": "tiff"})), Some(&base), &stamp(2, "b"));
        let ab = merge::<FaxPlugin>("inbox:accounts", &a, &b);
        assert_eq!(ab, merge::<FaxPlugin>("inbox:accounts", &b, &a));
        let merged = read::<FaxPlugin>("inbox:accounts", &ab).expect("live");
        assert_eq!((&merged["recipients"][1], &merged["attach_format"]), (&json!("cfo@acme.example"), &json!("tiff")));
    }
}
