//! Security settings: the accounts that administer the system, their roles, and the IP access
//! lists that say where they may log in from.
//!
//! Keys: `user:<name>`, `role:<name>` and `acl:<name>` (names are `[a-z0-9_-]{1,64}`). The
//! document's `kind` says which, and must match.
//!
//! Merge: per field, last writer wins, except what grants access: a user's `role` and credentials
//! (`password_hash`) and a role's `permissions` are strict. Two nodes that change one of them
//! concurrently do not silently pick one: both values are kept and the record is listed as a
//! conflict until an operator writes the record again. An access list's `rules` are one value,
//! because their order decides.
//!
//! Credentials: applications write a plaintext `password`; it is replaced before storage by a
//! salted, iterated SHA-256 hash (`password_hash`). The salt derives from the key and the write's
//! stamp, so every node computes the same bytes without randomness. Readers never see the hash:
//! `deserialize` removes it. A write that carries no `password` keeps the stored hash.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tandem_sdk::record::{FieldKind, RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Stamp, Violation, check};

const COMPONENT: &str = "security-settings";

/// Roles every system has, that need no record.
const BUILT_IN_ROLES: &[&str] = &["administrator", "auditor"];

/// What a permission may name: every component, or `*` for all of them.
const AREAS: &[&str] = &[
    "*",
    "security-settings",
    "security-reports",
    "trunks",
    "pbx-settings",
    "pbx-reports",
    "pms-settings",
    "extensions",
    "conference-settings",
    "ivr-settings",
    "fax-settings",
    "incoming-call-settings",
    "dialout-settings",
    "contact-center-settings",
    "outbound-contact-center-settings",
    "contact-center-reports",
    "crm",
    "crm-reports",
    "requirements",
];

/// Hash iterations: enough to slow a dictionary attack on a leaked hash, cheap enough for the
/// plugin's fuel budget on the rare write that sets a password.
const HASH_ROUNDS: u32 = 1000;

const MIN_PASSWORD_CHARS: usize = 10;

/// A record of this component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    User(User),
    Role(Role),
    AccessList(AccessList),
}

/// An administrator account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A built-in role (`administrator`, `auditor`) or the name of a role record.
    pub role: String,
    /// Set by the plugin from a written `password`; never accepted from, or shown to, clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The access list the user may log in through; none for the default of the system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_list: Option<String>,
    #[serde(default)]
    pub mfa_required: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A named set of permissions, `<component>:read` or `<component>:write` (`*` for every component).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// One line of an access list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    /// A network in CIDR notation, or one address.
    pub network: String,
}

/// Where logins may come from: the first rule whose network holds the address decides; with none,
/// `default_action` does (like Asterisk's `acl.conf` permit/deny lists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessList {
    #[serde(default)]
    pub description: String,
    pub rules: Vec<Rule>,
    #[serde(default = "default_action")]
    pub default_action: Action,
}

fn default_action() -> Action {
    Action::Deny
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256$<rounds>$<salt>$<hash>`: `HASH_ROUNDS` iterations of SHA-256 over the previous digest
/// and the password, starting from the salt. The salt is unique per user and per write and the
/// same on every node.
fn hash_password(key: &str, stamp: &Stamp, password: &str) -> String {
    let salt = Sha256::new()
        .chain_update(b"tandem password salt\0")
        .chain_update(key.as_bytes())
        .chain_update(b"\0")
        .chain_update(stamp.node.as_bytes())
        .chain_update(stamp.physical.to_be_bytes())
        .chain_update(stamp.logical.to_be_bytes())
        .finalize();
    let salt = &salt[..16];
    let mut digest = Sha256::new().chain_update(salt).chain_update(password.as_bytes()).finalize();
    for _ in 1..HASH_ROUNDS {
        digest = Sha256::new().chain_update(digest).chain_update(password.as_bytes()).finalize();
    }
    format!("sha256${HASH_ROUNDS}${}${}", hex(salt), hex(&digest))
}

fn valid_hash(s: &str) -> bool {
    let parts: Vec<&str> = s.split('$').collect();
    let is_hex = |p: &str, len: usize| p.len() == len && p.chars().all(|c| c.is_ascii_hexdigit());
    matches!(parts.as_slice(), ["sha256", rounds, salt, hash] if rounds.parse::<u32>().is_ok_and(|r| r > 0) && is_hex(salt, 32) && is_hex(hash, 64))
}

impl User {
    fn validate(&self, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.display_name.trim().is_empty() {
            v.push(Violation::new("display_name", "required", "a user needs a display name"));
        }
        if let Some(email) = &self.email
            && !check::email(email)
        {
            v.push(Violation::new("email", "format", format!("{email:?} is not an e-mail address")));
        }
        if !check::name(&self.role) {
            v.push(Violation::new("role", "format", format!("{:?} is not a role name", self.role)));
        } else if !BUILT_IN_ROLES.contains(&self.role.as_str()) {
            v.extend(check::exists(host, "role", COMPONENT, &format!("role:{}", self.role), "role"));
        }
        match &self.password_hash {
            None => v.push(Violation::new("password", "required", "a user needs a password")),
            Some(hash) if !valid_hash(hash) => {
                v.push(Violation::new("password_hash", "format", "the stored credentials are not a hash of this plugin"))
            }
            Some(_) => {}
        }
        if let Some(acl) = &self.access_list {
            v.extend(check::exists(host, "access_list", COMPONENT, &format!("acl:{acl}"), "access list"));
        }
        v
    }
}

impl Role {
    fn validate(&self, name: &str) -> Vec<Violation> {
        let mut v = Vec::new();
        if BUILT_IN_ROLES.contains(&name) {
            v.push(Violation::new("", "key", format!("{name} is a built-in role and cannot be redefined")));
        }
        if self.permissions.is_empty() {
            v.push(Violation::new("permissions", "required", "a role grants at least one permission"));
        }
        for (i, permission) in self.permissions.iter().enumerate() {
            let field = format!("permissions/{i}");
            let valid =
                permission.split_once(':').is_some_and(|(area, access)| AREAS.contains(&area) && (access == "read" || access == "write"));
            if !valid {
                v.push(Violation::new(&field, "format", format!("{permission:?} is not <component>:read or <component>:write")));
            } else if self.permissions[..i].contains(permission) {
                v.push(Violation::new(&field, "unique", format!("{permission} is listed twice")));
            }
        }
        v
    }
}

impl AccessList {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.rules.is_empty() {
            v.push(Violation::new("rules", "required", "an access list needs at least one rule"));
        }
        let mut catch_all = [false, false]; // IPv4, IPv6
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("rules/{i}/network");
            if let Err(e) = check::cidr(&rule.network) {
                v.push(Violation::new(&field, "format", e));
                continue;
            }
            let family = usize::from(rule.network.contains(':'));
            if catch_all[family] {
                v.push(Violation::new(&field, "unreachable", "an earlier rule already matches every address of this family"));
            } else if self.rules[..i].iter().any(|r| r.network == rule.network) {
                v.push(Violation::new(&field, "unreachable", format!("{} is already matched by an earlier rule", rule.network)));
            }
            catch_all[family] |= rule.network.ends_with("/0");
        }
        v
    }
}

impl RecordSchema for Record {
    fn info() -> Info {
        Info {
            component: COMPONENT.to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Administrator accounts, roles and IP access lists".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "user:alice",
                    json!({"kind": "user", "display_name": "Alice Martin", "email": "alice.martin@acme.example", "role": "administrator", "password": "correct horse battery", "mfa_required": true}),
                ),
                Example::new(
                    "user:audit-bot",
                    json!({"kind": "user", "display_name": "Quarterly audit", "role": "auditor", "password": "Vq7-Ls2!pR9#xT4w"}),
                ),
                Example::new(
                    "role:cc-supervisor",
                    json!({"kind": "role", "description": "Contact-center supervisors", "permissions": ["contact-center-settings:write", "outbound-contact-center-settings:write", "contact-center-reports:read", "crm:read"]}),
                ),
                Example::new(
                    "acl:office-and-vpn",
                    json!({"kind": "access_list", "description": "Office LAN and VPN, not the guest Wi-Fi", "rules": [
                        {"action": "deny", "network": "10.20.99.0/24"},
                        {"action": "allow", "network": "10.20.0.0/16"},
                        {"action": "allow", "network": "172.16.8.0/22"},
                        {"action": "allow", "network": "2001:db8:4::/48"}
                    ]}),
                ),
            ],
            retention: None,
        }
    }

    fn fields() -> &'static [(&'static str, FieldKind)] {
        &[("role", FieldKind::Strict), ("password_hash", FieldKind::Strict), ("permissions", FieldKind::Strict)]
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let (prefix, name) = key.split_once(':').unwrap_or(("", key));
        let mut v: Vec<Violation> = match (self, prefix) {
            (Record::User(user), "user") => user.validate(host),
            (Record::Role(role), "role") => role.validate(name),
            (Record::AccessList(acl), "acl") => acl.validate(),
            _ => return vec![Violation::new("kind", "key", "keys are user:<name>, role:<name> and acl:<name>, each with its kind")],
        };
        if !check::name(name) {
            v.push(Violation::new("", "key", "a name is 1 to 64 of a-z, 0-9, - and _"));
        }
        v
    }

    /// Replaces a plaintext `password` by its hash, or keeps the stored hash when none is written.
    fn before_store(mut input: Value, key: &str, stamp: &Stamp, prior: Option<&Value>) -> Result<Value, Vec<Violation>> {
        let Some(doc) = input.as_object_mut() else { return Ok(input) };
        if doc.contains_key("password_hash") {
            return Err(vec![Violation::new("password_hash", "readonly", "credentials are set with password; hashes are never accepted")]);
        }
        match doc.remove("password") {
            Some(Value::String(password)) if password.trim().is_empty() => {
                return Err(vec![Violation::new("password", "required", "a password cannot be empty")]);
            }
            Some(Value::String(password)) if password.chars().count() < MIN_PASSWORD_CHARS => {
                return Err(vec![Violation::new("password", "weak", format!("a password has at least {MIN_PASSWORD_CHARS} characters"))]);
            }
            Some(Value::String(password)) => {
                doc.insert("password_hash".to_owned(), Value::String(hash_password(key, stamp, &password)));
            }
            Some(_) => return Err(vec![Violation::new("password", "format", "a password is a string")]),
            None => {
                if let Some(hash) = prior.and_then(|p| p.get("password_hash")) {
                    doc.insert("password_hash".to_owned(), hash.clone());
                }
            }
        }
        Ok(input)
    }

    fn redact(doc: &mut Map<String, Value>) {
        doc.remove("password_hash");
    }
}

/// The plugin.
pub type SecurityPlugin = RecordPlugin<Record>;
tandem_sdk::export_plugin!(SecurityPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, put_err, read, stamp, write_violations};
    use tandem_sdk::{Plugin, WriteError};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<SecurityPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn user(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"kind": "user", "display_name": "Alice", "role": "administrator", "password": "correct horse battery"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    fn stored_hash(stored: &tandem_sdk::Stored) -> Value {
        let raw: Value = serde_json::from_slice(&stored.data).expect("stored JSON");
        raw["f"]["password_hash"]["e"].clone()
    }

    #[test]
    fn examples_are_valid() {
        let info = SecurityPlugin::describe();
        assert_eq!(info.component, "security-settings");
        assert_eq!(info.shape, "strict");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn passwords_are_stored_only_as_hashes_and_never_read_back() {
        let s = put::<SecurityPlugin>("user:alice", user(json!({})), None, &stamp(1, "a"));
        let text = String::from_utf8_lossy(&s.data);
        assert!(!text.contains("correct horse battery"), "plaintext stored: {text}");
        assert!(text.contains("sha256$1000$"));
        let doc = read::<SecurityPlugin>("user:alice", &s).expect("live");
        assert!(doc.get("password").is_none() && doc.get("password_hash").is_none(), "{doc}");
        assert_eq!(SecurityPlugin::validate("user:alice", &s.data, &NoHost), Ok(()));
    }

    #[test]
    fn hashing_is_deterministic_and_salted_per_user_and_write() {
        let at = |key: &str, t: u64| stored_hash(&put::<SecurityPlugin>(key, user(json!({})), None, &stamp(t, "a")));
        assert_eq!(at("user:alice", 1), at("user:alice", 1), "two nodes computing one write agree");
        assert_ne!(at("user:alice", 1), at("user:bob", 1), "same password, other user");
        assert_ne!(at("user:alice", 1), at("user:alice", 2), "same password, later write");
    }

    #[test]
    fn a_write_without_password_keeps_the_credentials() {
        let s1 = put::<SecurityPlugin>("user:alice", user(json!({})), None, &stamp(1, "a"));
        // What a reader sees, written back with a new display name.
        let mut doc = read::<SecurityPlugin>("user:alice", &s1).expect("live");
        doc["display_name"] = json!("Alice Martin");
        let s2 = put::<SecurityPlugin>("user:alice", doc, Some(&s1), &stamp(2, "a"));
        assert_eq!(stored_hash(&s1), stored_hash(&s2));
        assert_eq!(SecurityPlugin::validate("user:alice", &s2.data, &NoHost), Ok(()));
    }

    #[test]
    fn refuses_bad_credentials() {
        let err = |doc: serde_json::Value| match put_err::<SecurityPlugin>("user:alice", doc, None, &stamp(1, "a")) {
            WriteError::Invalid(v) => codes(&v),
            WriteError::Malformed(m) => panic!("malformed: {m}"),
        };
        assert!(has(&err(user(json!({"password": ""}))), "/password", "required"));
        assert!(has(&err(user(json!({"password": "   "}))), "/password", "required"));
        assert!(has(&err(user(json!({"password": "short"}))), "/password", "weak"));
        assert!(has(&err(user(json!({"password": 12345678901u64}))), "/password", "format"));
        assert!(has(&err(user(json!({"password_hash": "sha256$1$00$00"}))), "/password_hash", "readonly"));
        let mut no_password = user(json!({}));
        no_password.as_object_mut().map(|d| d.remove("password"));
        assert!(has(&violations("user:alice", no_password), "/password", "required"));
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("alice", user(json!({}))), "/kind", "key"));
        assert!(has(&violations("role:alice", user(json!({}))), "/kind", "key"));
        assert!(has(&violations("user:Alice", user(json!({}))), "", "key"));
        assert!(has(&violations("user:alice", user(json!({"display_name": ""}))), "/display_name", "required"));
        assert!(has(&violations("user:alice", user(json!({"email": "alice"}))), "/email", "format"));
        assert!(has(&violations("user:alice", user(json!({"role": "Super User"}))), "/role", "format"));
        assert!(has(&violations("user:alice", user(json!({"role": "cc-supervisor"}))), "/role", "reference"));
        assert!(has(&violations("user:alice", user(json!({"access_list": "office"}))), "/access_list", "reference"));
        let host = MapHost::default().with(COMPONENT, "role:cc-supervisor", json!({"kind": "role"})).with(
            COMPONENT,
            "acl:office",
            json!({"kind": "access_list"}),
        );
        let found =
            write_violations::<SecurityPlugin>("user:alice", user(json!({"role": "cc-supervisor", "access_list": "office"})), &host);
        assert_eq!(found, vec![]);

        let role = |permissions: serde_json::Value| violations("role:ops", json!({"kind": "role", "permissions": permissions}));
        assert!(has(&role(json!([])), "/permissions", "required"));
        assert!(has(&role(json!(["trunks"])), "/permissions/0", "format"));
        assert!(has(&role(json!(["voicemail:write"])), "/permissions/0", "format"));
        assert!(has(&role(json!(["trunks:read", "trunks:read"])), "/permissions/1", "unique"));
        assert!(has(&violations("role:administrator", json!({"kind": "role", "permissions": ["*:read"]})), "", "key"));

        let acl = |rules: serde_json::Value| violations("acl:office", json!({"kind": "access_list", "rules": rules}));
        assert!(has(&acl(json!([])), "/rules", "required"));
        assert!(has(&acl(json!([{"action": "allow", "network": "10.0.0.0/33"}])), "/rules/0/network", "format"));
        assert!(has(&acl(json!([{"action": "allow", "network": "10.0.0.1/8"}])), "/rules/0/network", "format"));
        assert!(has(&acl(json!([{"action": "allow", "network": "office"}])), "/rules/0/network", "format"));
        let shadowed = json!([{"action": "allow", "network": "0.0.0.0/0"}, {"action": "deny", "network": "10.9.0.0/16"}, {"action": "allow", "network": "::1"}]);
        let found = acl(shadowed);
        assert!(has(&found, "/rules/1/network", "unreachable") && !has(&found, "/rules/2/network", "unreachable"));
        let twice = json!([{"action": "deny", "network": "10.9.0.0/16"}, {"action": "allow", "network": "10.9.0.0/16"}]);
        assert!(has(&acl(twice), "/rules/1/network", "unreachable"));
        assert!(has(&acl(json!([{"action": "permit", "network": "10.0.0.0/8"}])), "", "malformed"));
    }

    #[test]
    fn concurrent_role_changes_are_a_conflict_not_a_silent_winner() {
        let base = put::<SecurityPlugin>("user:alice", user(json!({"role": "auditor"})), None, &stamp(1, "a"));
        let mut seen = read::<SecurityPlugin>("user:alice", &base).expect("live");
        seen["role"] = json!("administrator");
        let a = put::<SecurityPlugin>("user:alice", seen.clone(), Some(&base), &stamp(2, "a"));
        seen["role"] = json!("cc-supervisor");
        let b = put::<SecurityPlugin>("user:alice", seen, Some(&base), &stamp(3, "b"));
        let ab = merge::<SecurityPlugin>("user:alice", &a, &b);
        assert_eq!(ab, merge::<SecurityPlugin>("user:alice", &b, &a));
        let host = MapHost::default().with(COMPONENT, "role:cc-supervisor", json!({"kind": "role"}));
        let found = SecurityPlugin::validate("user:alice", &ab.data, &host).expect_err("a conflict");
        assert_eq!(codes(&found), vec![("/role".to_owned(), "conflict".to_owned())]);
        let doc = read::<SecurityPlugin>("user:alice", &ab).expect("live");
        assert_eq!(doc["_conflicts"]["role"], json!(["administrator", "cc-supervisor"]));

        // An operator's write resolves it.
        let mut resolved = doc;
        resolved.as_object_mut().map(|d| d.remove("_conflicts"));
        resolved["role"] = json!("administrator");
        let fixed = put::<SecurityPlugin>("user:alice", resolved, Some(&ab), &stamp(4, "a"));
        assert_eq!(SecurityPlugin::validate("user:alice", &fixed.data, &host), Ok(()));
    }

    #[test]
    fn concurrent_password_changes_are_a_conflict_that_never_shows_the_hashes() {
        let base = put::<SecurityPlugin>("user:alice", user(json!({})), None, &stamp(1, "a"));
        let a = put::<SecurityPlugin>("user:alice", user(json!({"password": "first new password"})), Some(&base), &stamp(2, "a"));
        let b = put::<SecurityPlugin>("user:alice", user(json!({"password": "second new password"})), Some(&base), &stamp(2, "b"));
        let ab = merge::<SecurityPlugin>("user:alice", &a, &b);
        assert_eq!(ab, merge::<SecurityPlugin>("user:alice", &b, &a));
        let found = SecurityPlugin::validate("user:alice", &ab.data, &NoHost).expect_err("a conflict");
        assert_eq!(codes(&found), vec![("/password_hash".to_owned(), "conflict".to_owned())]);
        assert!(found.iter().all(|v| !v.message.contains("sha256$")), "hashes in a violation: {found:?}");
        let text = SecurityPlugin::deserialize("user:alice", &ab.data).expect("readable").expect("live");
        assert!(!text.contains("sha256$"), "hashes in a read: {text}");
    }

    #[test]
    fn concurrent_edits_of_other_fields_merge_per_field() {
        let base = put::<SecurityPlugin>("user:alice", user(json!({})), None, &stamp(1, "a"));
        let mut seen = read::<SecurityPlugin>("user:alice", &base).expect("live");
        seen["mfa_required"] = json!(true);
        let a = put::<SecurityPlugin>("user:alice", seen.clone(), Some(&base), &stamp(2, "a"));
        seen["mfa_required"] = json!(false);
        seen["email"] = json!("alice@acme.example");
        let b = put::<SecurityPlugin>("user:alice", seen, Some(&base), &stamp(2, "b"));
        let ab = merge::<SecurityPlugin>("user:alice", &a, &b);
        assert_eq!(ab, merge::<SecurityPlugin>("user:alice", &b, &a));
        let doc = read::<SecurityPlugin>("user:alice", &ab).expect("live");
        assert_eq!((&doc["mfa_required"], &doc["email"]), (&json!(true), &json!("alice@acme.example")));
        assert_eq!(SecurityPlugin::validate("user:alice", &ab.data, &NoHost), Ok(()));
    }
}
