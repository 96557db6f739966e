//! CRM: the contacts and accounts (companies) that agents call and that call in. The PBX looks
//! callers up by phone number to show who is calling; agents add notes during calls.
//!
//! Keys: `contact:<ULID>` and `account:<ULID>`. Applications make the ULID when they create the
//! record, so two nodes never pick the same key. The document's `kind` says which, and must match.
//!
//! Merge, per field:
//! - `phones`, `emails`, `tags`: add-wins sets. Two nodes adding different numbers both keep
//!   theirs; a number removed on one node and added again concurrently on another stays.
//! - `notes`: append-only. Notes written on any node are all kept, none is ever lost or edited.
//! - everything else: last writer wins, field by field.
//!
//! References: a contact's account and an account's parent must exist. Checked through the host
//! lookup, so enforced where one node takes the writes.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{FieldKind, RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

const COMPONENT: &str = "crm";

/// A record of this component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Contact(Contact),
    Account(Account),
}

/// A note on a contact or an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Note {
    /// When it was written (milliseconds since the Unix epoch), as the application saw it.
    pub at_ms: u64,
    /// The user who wrote it.
    pub author: String,
    pub text: String,
}

/// A person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The ULID of the contact's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default)]
    pub phones: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub notes: Vec<Note>,
    /// The user responsible for the contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The contact asked not to be called by campaigns.
    #[serde(default)]
    pub do_not_call: bool,
}

/// A company or organisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    /// The ULID of the parent account (a subsidiary's group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub phones: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub notes: Vec<Note>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Phones, e-mails, tags and notes: what contacts and accounts share.
fn check_common(phones: &[String], emails: &[String], tags: &[String], notes: &[Note], owner: Option<&str>) -> Vec<Violation> {
    let mut v = Vec::new();
    for (i, phone) in phones.iter().enumerate() {
        if !check::phone_number(phone) {
            v.push(Violation::new(&format!("phones/{i}"), "format", format!("{phone:?} is not a phone number (+ and 3 to 15 digits)")));
        }
    }
    for (i, email) in emails.iter().enumerate() {
        if !check::email(email) {
            v.push(Violation::new(&format!("emails/{i}"), "format", format!("{email:?} is not an e-mail address")));
        }
    }
    for (i, tag) in tags.iter().enumerate() {
        if !check::name(tag) {
            v.push(Violation::new(&format!("tags/{i}"), "format", format!("{tag:?} is not a tag (a-z, 0-9, - and _)")));
        }
    }
    for (i, note) in notes.iter().enumerate() {
        if note.text.trim().is_empty() || note.text.chars().count() > 4000 {
            v.push(Violation::new(&format!("notes/{i}/text"), "format", "a note is 1 to 4000 characters"));
        }
        if !check::name(&note.author) {
            v.push(Violation::new(&format!("notes/{i}/author"), "format", "a note's author is a user name"));
        }
    }
    if let Some(owner) = owner
        && !check::name(owner)
    {
        v.push(Violation::new("owner", "format", format!("{owner:?} is not a user name")));
    }
    v
}

impl Contact {
    fn validate(&self, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.first_name.trim().is_empty() && self.last_name.trim().is_empty() {
            v.push(Violation::new("last_name", "required", "a contact needs a first or a last name"));
        }
        if let Some(account) = &self.account {
            v.extend(check::exists(host, "account", COMPONENT, &format!("account:{account}"), "account"));
        }
        if let Some(language) = &self.language
            && !check::language(language)
        {
            v.push(Violation::new("language", "format", format!("{language:?} is not a language like en or pt_BR")));
        }
        v.extend(check_common(&self.phones, &self.emails, &self.tags, &self.notes, self.owner.as_deref()));
        v
    }
}

impl Account {
    fn validate(&self, id: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "an account needs a name"));
        }
        if let Some(site) = &self.website {
            let host_part = site.strip_prefix("https://").or_else(|| site.strip_prefix("http://")).and_then(|r| r.split(['/', ':']).next());
            if !host_part.is_some_and(check::host) {
                v.push(Violation::new("website", "format", format!("{site:?} is not an http:// or https:// address")));
            }
        }
        match &self.parent {
            Some(parent) if parent == id => v.push(Violation::new("parent", "loop", "an account cannot be its own parent")),
            Some(parent) => v.extend(check::exists(host, "parent", COMPONENT, &format!("account:{parent}"), "account")),
            None => {}
        }
        v.extend(check_common(&self.phones, &self.emails, &self.tags, &self.notes, self.owner.as_deref()));
        v
    }
}

impl RecordSchema for Record {
    fn info() -> Info {
        Info {
            component: COMPONENT.to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "CRM contacts and accounts".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "account:01J8Z3K4M5N6P7Q8R9S0T1V2W3",
                    json!({
                        "kind": "account", "name": "Northwind Traders", "industry": "wholesale", "website": "https://northwind.example",
                        "phones": ["+442079460000"], "emails": ["accounts@northwind.example"], "tags": ["key-account"], "owner": "priya"
                    }),
                ),
                Example::new(
                    "contact:01J8Z3P2A7XG5H9QK4W6N8R1TB",
                    json!({
                        "kind": "contact", "first_name": "Maria", "last_name": "Anders", "title": "Purchasing manager",
                        "phones": ["+442079460012", "+447700900512"], "emails": ["maria.anders@northwind.example"],
                        "tags": ["renewal-due", "spanish"], "language": "es", "owner": "priya",
                        "notes": [{"at_ms": 1764057600000u64, "author": "priya", "text": "Asked for a quote on 40 more seats; call back Thursday."}]
                    }),
                ),
                Example::new(
                    "contact:01J8Z3Q9C2VD4E6F8G0H1J3K5M",
                    json!({"kind": "contact", "last_name": "Okafor", "phones": ["+2348031234567"], "do_not_call": true, "tags": ["churned-2025"]}),
                ),
            ],
            retention: None,
        }
    }

    fn fields() -> &'static [(&'static str, FieldKind)] {
        &[("phones", FieldKind::Set), ("emails", FieldKind::Set), ("tags", FieldKind::Set), ("notes", FieldKind::Append)]
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let (prefix, id) = key.split_once(':').unwrap_or(("", key));
        let mut v = match (self, prefix) {
            (Record::Contact(contact), "contact") => contact.validate(host),
            (Record::Account(account), "account") => account.validate(id, host),
            _ => return vec![Violation::new("kind", "key", "a contact's key is contact:<ULID>, an account's account:<ULID>")],
        };
        if !check::ulid(id) {
            v.push(Violation::new("", "key", format!("{id:?} is not a ULID (26 characters of Crockford base32)")));
        }
        v
    }
}

/// The plugin.
pub type CrmPlugin = RecordPlugin<Record>;
tandem_sdk::export_plugin!(CrmPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    const MARIA: &str = "contact:01J8Z3P2A7XG5H9QK4W6N8R1TB";
    const NORTHWIND: &str = "01J8Z3K4M5N6P7Q8R9S0T1V2W3";

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<CrmPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn contact(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"kind": "contact", "first_name": "Maria", "last_name": "Anders", "phones": ["+442079460012"]});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = CrmPlugin::describe();
        assert_eq!(info.component, "crm");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn keys_are_kind_and_ulid() {
        assert!(has(&violations("contact:42", contact(json!({}))), "", "key"));
        assert!(has(&violations("account:01J8Z3P2A7XG5H9QK4W6N8R1TB", contact(json!({}))), "/kind", "key"));
        assert!(has(&violations("01J8Z3P2A7XG5H9QK4W6N8R1TB", contact(json!({}))), "/kind", "key"));
    }

    #[test]
    fn references_must_exist() {
        let doc = contact(json!({ "account": NORTHWIND }));
        assert!(has(&violations(MARIA, doc.clone()), "/account", "reference"));
        let host = MapHost::default().with(COMPONENT, &format!("account:{NORTHWIND}"), json!({"kind": "account", "name": "Northwind"}));
        assert_eq!(write_violations::<CrmPlugin>(MARIA, doc, &host), vec![]);
        let sub = json!({"kind": "account", "name": "Northwind Iberia", "parent": NORTHWIND});
        assert!(has(&violations("account:01J8Z3R5D6E7F8G9H0J1K2M3N4", sub.clone()), "/parent", "reference"));
        assert_eq!(write_violations::<CrmPlugin>("account:01J8Z3R5D6E7F8G9H0J1K2M3N4", sub, &host), vec![]);
        let own = json!({"kind": "account", "name": "Loop", "parent": NORTHWIND});
        assert!(has(&codes(&write_violations::<CrmPlugin>(&format!("account:{NORTHWIND}"), own, &host)), "/parent", "loop"));
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations(MARIA, contact(json!({"first_name": "", "last_name": " "}))), "/last_name", "required"));
        assert!(has(&violations(MARIA, contact(json!({"phones": ["020 7946 0012"]}))), "/phones/0", "format"));
        assert!(has(&violations(MARIA, contact(json!({"emails": ["maria@"]}))), "/emails/0", "format"));
        assert!(has(&violations(MARIA, contact(json!({"tags": ["VIP Customer"]}))), "/tags/0", "format"));
        assert!(has(
            &violations(MARIA, contact(json!({"notes": [{"at_ms": 1, "author": "priya", "text": ""}]}))),
            "/notes/0/text",
            "format"
        ));
        assert!(has(
            &violations(MARIA, contact(json!({"notes": [{"at_ms": 1, "author": "Priya S", "text": "hi"}]}))),
            "/notes/0/author",
            "format"
        ));
        assert!(has(&violations(MARIA, contact(json!({"owner": "Priya Shah"}))), "/owner", "format"));
        assert!(has(&violations(MARIA, contact(json!({"language": "Spanish"}))), "/language", "format"));
        assert!(has(&violations(MARIA, contact(json!({"phones": "+442079460012"}))), "", "malformed"));
        let account = |extra: serde_json::Value| {
            let mut doc = json!({"kind": "account", "name": "Northwind"});
            if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
                doc.extend(extra.clone());
            }
            violations(&format!("account:{NORTHWIND}"), doc)
        };
        assert!(has(&account(json!({"name": ""})), "/name", "required"));
        assert!(has(&account(json!({"website": "northwind.example"})), "/website", "format"));
    }

    #[test]
    fn phones_added_on_two_nodes_are_both_kept() {
        let base = put::<CrmPlugin>(MARIA, contact(json!({})), None, &stamp(1, "a"));
        let a = put::<CrmPlugin>(MARIA, contact(json!({"phones": ["+442079460012", "+447700900512"]})), Some(&base), &stamp(2, "a"));
        let b = put::<CrmPlugin>(MARIA, contact(json!({"phones": ["+442079460012", "+34911234567"]})), Some(&base), &stamp(2, "b"));
        let ab = merge::<CrmPlugin>(MARIA, &a, &b);
        assert_eq!(ab, merge::<CrmPlugin>(MARIA, &b, &a));
        let doc = read::<CrmPlugin>(MARIA, &ab).expect("live");
        assert_eq!(doc["phones"], json!(["+34911234567", "+442079460012", "+447700900512"]));
    }

    #[test]
    fn a_concurrent_re_add_wins_over_a_removal() {
        let base = put::<CrmPlugin>(MARIA, contact(json!({"tags": ["renewal-due", "spanish"]})), None, &stamp(1, "a"));
        // a drops the renewal tag. Concurrently b drops it too, then a new renewal comes up and b
        // tags the contact again: that add was never seen by a's removal, so it stays.
        let a = put::<CrmPlugin>(MARIA, contact(json!({"tags": ["spanish"]})), Some(&base), &stamp(2, "a"));
        let b_mid = put::<CrmPlugin>(MARIA, contact(json!({"tags": ["spanish"]})), Some(&base), &stamp(2, "b"));
        let b = put::<CrmPlugin>(MARIA, contact(json!({"tags": ["renewal-due", "spanish"]})), Some(&b_mid), &stamp(3, "b"));
        let ab = merge::<CrmPlugin>(MARIA, &a, &b);
        assert_eq!(ab, merge::<CrmPlugin>(MARIA, &b, &a));
        assert_eq!(read::<CrmPlugin>(MARIA, &ab).expect("live")["tags"], json!(["renewal-due", "spanish"]));
        // A removal that saw every add removes for good.
        let c = put::<CrmPlugin>(MARIA, contact(json!({"tags": ["spanish"]})), Some(&ab), &stamp(4, "a"));
        assert_eq!(read::<CrmPlugin>(MARIA, &merge::<CrmPlugin>(MARIA, &c, &b)).expect("live")["tags"], json!(["spanish"]));
    }

    #[test]
    fn notes_from_both_nodes_are_all_kept() {
        let note = |author: &str, text: &str| json!({"at_ms": 1_764_057_600_000u64, "author": author, "text": text});
        let base = put::<CrmPlugin>(MARIA, contact(json!({"notes": [note("priya", "first call")]})), None, &stamp(1, "a"));
        let seen = read::<CrmPlugin>(MARIA, &base).expect("live");
        let mut a_doc = seen.clone();
        if let Some(notes) = a_doc["notes"].as_array_mut() {
            notes.push(note("priya", "sent quote"));
        }
        let a = put::<CrmPlugin>(MARIA, a_doc, Some(&base), &stamp(2, "a"));
        // b writes only its new note: earlier notes are never removed by leaving them out.
        let b = put::<CrmPlugin>(MARIA, contact(json!({"notes": [note("tom", "asked about delivery")]})), Some(&base), &stamp(3, "b"));
        let ab = merge::<CrmPlugin>(MARIA, &a, &b);
        assert_eq!(ab, merge::<CrmPlugin>(MARIA, &b, &a));
        let texts: Vec<serde_json::Value> = read::<CrmPlugin>(MARIA, &ab).expect("live")["notes"]
            .as_array()
            .map(|n| n.iter().map(|x| x["text"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(texts, vec![json!("first call"), json!("sent quote"), json!("asked about delivery")]);
    }

    #[test]
    fn concurrent_edits_of_one_field_resolve_the_same_everywhere() {
        let base = put::<CrmPlugin>(MARIA, contact(json!({})), None, &stamp(1, "a"));
        let a = put::<CrmPlugin>(MARIA, contact(json!({"title": "Head of purchasing"})), Some(&base), &stamp(5, "a"));
        let b = put::<CrmPlugin>(MARIA, contact(json!({"title": "Buyer"})), Some(&base), &stamp(5, "b"));
        let ab = merge::<CrmPlugin>(MARIA, &a, &b);
        assert_eq!(ab, merge::<CrmPlugin>(MARIA, &b, &a));
        assert_eq!(read::<CrmPlugin>(MARIA, &ab).expect("live")["title"], "Buyer");
    }
}
