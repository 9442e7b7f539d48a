//! Binding a credential's plain columns to the key (docs/SECURITY.md,
//! "What a writer of the store can do").
//!
//! The sealed columns cannot be forged without the key, but the columns
//! that decide *where* a secret is sent (every endpoint URL, the client id
//! and authentication: the whole spec) and *who* may read it (the owner,
//! the allow list) are plain text. Each row therefore carries a tag made
//! under the key over those columns, its name, incarnation and
//! description. A row whose tag does not verify is never used: it is
//! loaded as `failing` with [`TAMPERED`], without its secrets, and nothing
//! is sent anywhere for it until `add --replace` writes it anew.

use super::StoreError;
use super::names::Named;
use super::seal::Sealer;
use super::{StoredCredential, rows::principal_parts};
use std::borrow::Cow;
use tokend_proto::{CredentialSpec, CredentialState, Grantee};

/// Why a row is not used, as shown by status, show, the log and notify.
pub const TAMPERED: &str = "its row in the store was changed without the sealing key";

/// What the tag covers; prefixed so that it can never equal the
/// associated data of a sealed value (`tokend/v1\0…`).
const DOMAIN: &str = "tokend/row/v1";

/// The columns of a row that the key vouches for: the settings as the
/// very text stored (so that a later version, whose settings have more
/// fields, still verifies what an earlier one wrote), the owner and the
/// allow list as written (ids where written, and names), not as resolved
/// here.
#[derive(Debug, Clone)]
pub struct Binding<'a> {
    pub name: &'a str,
    pub incarnation: i64,
    pub description: &'a str,
    pub settings: Cow<'a, str>,
    pub named: Cow<'a, Named>,
}

impl<'a> Binding<'a> {
    /// `c`'s bound columns, with `settings`, the text its row holds
    /// (none: its spec as this version writes it). A credential not read
    /// from a store has its ids without names.
    pub fn of(c: &'a StoredCredential, settings: Option<&'a str>) -> Result<Self, StoreError> {
        let named = match &c.names {
            Some(named) => Cow::Borrowed(&**named),
            None => Cow::Owned(Named {
                owner: nameless(tokend_proto::Principal::User(c.owner_uid)),
                allowed: c.allowed.iter().map(|p| nameless(*p)).collect(),
            }),
        };
        let settings = match settings {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(serde_json::to_string(&c.spec)?),
        };
        Ok(Binding {
            name: &c.name,
            incarnation: c.incarnation,
            description: &c.description,
            settings,
            named,
        })
    }
}

fn nameless(written: tokend_proto::Principal) -> Grantee {
    Grantee {
        written,
        name: None,
        here: None,
    }
}

/// An owner or allow-list entry as the tag covers it.
fn written(g: &Grantee) -> (&'static str, u32, Option<&str>) {
    let (kind, id) = principal_parts(&g.written);
    (kind, id, g.name.as_deref())
}

impl Binding<'_> {
    /// The bytes tagged: a JSON array, so no field can run into the next;
    /// the allow list in a fixed order (one backend keeps it as a table,
    /// the other as text).
    fn bytes(&self) -> Result<Vec<u8>, StoreError> {
        let mut allowed: Vec<_> = self.named.allowed.iter().map(written).collect();
        allowed.sort_unstable();
        allowed.dedup();
        Ok(serde_json::to_vec(&(
            DOMAIN,
            self.name,
            self.incarnation,
            self.description,
            &self.settings,
            written(&self.named.owner),
            allowed,
        ))?)
    }

    /// The tag to store with the row.
    pub fn tag(&self, sealer: &Sealer) -> Result<Vec<u8>, StoreError> {
        Ok(sealer.tag(&self.bytes()?)?)
    }

    /// Whether `tag` vouches for these columns; a missing tag does not.
    pub fn verifies(&self, sealer: &Sealer, tag: Option<&[u8]>) -> bool {
        match (tag, self.bytes()) {
            (Some(tag), Ok(bytes)) => sealer.verify_tag(&bytes, tag),
            _ => false,
        }
    }
}

/// A row's bound columns as read, and its tag: what `allow` and `deny`
/// check and write again with a new tag, and what the migration that
/// binds rows tags.
#[derive(Debug, Clone)]
pub struct Bound {
    pub name: String,
    pub incarnation: i64,
    pub description: String,
    /// The settings as the text stored.
    pub settings: String,
    pub named: Named,
    pub tag: Option<Vec<u8>>,
}

impl Bound {
    pub fn binding(&self) -> Binding<'_> {
        Binding {
            name: &self.name,
            incarnation: self.incarnation,
            description: &self.description,
            settings: Cow::Borrowed(&self.settings),
            named: Cow::Borrowed(&self.named),
        }
    }

    /// Whether the row's tag vouches for its columns.
    pub fn verified(&self, sealer: &Sealer) -> bool {
        self.binding().verifies(sealer, self.tag.as_deref())
    }
}

/// Why a row read from the store must not be used, if it must not: its
/// tag does not verify over its columns (`settings`: the text it holds),
/// or (whatever the tag says: a store written before the rule, or by a
/// buggy writer) an endpoint URL it holds would send a secret in clear or
/// is no URL at all.
pub fn distrust(
    sealer: &Sealer,
    c: &StoredCredential,
    settings: Option<&str>,
    tag: Option<&[u8]>,
) -> Option<String> {
    if !Binding::of(c, settings).is_ok_and(|b| b.verifies(sealer, tag)) {
        return Some(TAMPERED.to_string());
    }
    bad_url(&c.spec).map(|e| format!("its stored settings are not usable: {e}"))
}

/// The first endpoint URL of `spec` that fails the rules `add` applies
/// (https unless loopback; see `provider/http.rs`).
fn bad_url(spec: &CredentialSpec) -> Option<String> {
    use crate::provider::http::{validate_endpoint_url, validate_url};
    let endpoints = match spec {
        CredentialSpec::Bearer { check_url, .. } => {
            return check_url
                .as_deref()
                .and_then(|u| validate_endpoint_url(u, "the check URL").err())
                .map(|e| e.to_string());
        }
        CredentialSpec::OAuth2(s) => {
            if let Err(e) = validate_endpoint_url(&s.auth_url, "the authorize URL") {
                return Some(e.to_string());
            }
            if let Some(Err(e)) = s
                .redirect_uri
                .as_deref()
                .map(|u| validate_url(u, "the redirect URI"))
            {
                return Some(e.to_string());
            }
            [(&s.token_url, "the token URL")]
                .into_iter()
                .map(|(u, what)| (u.as_str(), what))
                .chain(more(&s.endpoints))
                .collect::<Vec<_>>()
        }
        CredentialSpec::ClientCredentials(s) => [(s.token_url.as_str(), "the token URL")]
            .into_iter()
            .chain(more(&s.endpoints))
            .collect(),
    };
    endpoints
        .into_iter()
        .find_map(|(url, what)| validate_endpoint_url(url, what).err())
        .map(|e| e.to_string())
}

/// The optional endpoints every OAuth2 kind may have.
fn more(e: &tokend_proto::Endpoints) -> impl Iterator<Item = (&str, &'static str)> {
    [
        (e.issuer.as_deref(), "the issuer"),
        (e.introspection_url.as_deref(), "the introspection URL"),
        (e.revocation_url.as_deref(), "the revocation URL"),
        (
            e.device_authorization_url.as_deref(),
            "the device authorization URL",
        ),
    ]
    .into_iter()
    .filter_map(|(url, what)| Some((url?, what)))
}

/// Makes a row that must not be used inert: `failing` with `why`, its
/// secrets dropped (never opened), nothing scheduled, and neither its
/// owner nor its allow list (which may be the writer's) used: only admins
/// may see or remove it.
pub fn quarantine(c: &mut StoredCredential, why: String) {
    c.untrusted = true;
    c.owner_uid = super::names::NOBODY;
    c.allowed.clear();
    c.state = CredentialState::Failing;
    c.last_error = Some(why.clone());
    c.reason = Some(why);
    c.client_secret = None;
    c.access_token = None;
    c.refresh_token = None;
    c.next_refresh_at = None;
}

/// The spec a row whose settings cannot even be read is loaded with: it
/// names no endpoint, and the row is quarantined.
pub fn unreadable_spec() -> CredentialSpec {
    CredentialSpec::Bearer {
        check_url: None,
        git_hosts: Vec::new(),
        upstream: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::tests::bearer;
    use tokend_proto::Principal;

    fn sealer() -> Sealer {
        Sealer::from_key(&[3u8; 32])
    }

    #[test]
    fn every_bound_column_is_covered() {
        let s = sealer();
        let c = bearer("up", "t");
        let tag = Binding::of(&c, None).unwrap().tag(&s).unwrap();
        assert_eq!(distrust(&s, &c, None, Some(&tag)), None);
        assert_eq!(distrust(&s, &c, None, None).as_deref(), Some(TAMPERED));
        let changes: Vec<fn(&mut StoredCredential)> = vec![
            |c| c.name = "other".into(),
            |c| c.incarnation += 1,
            |c| c.description = "call me".into(),
            |c| {
                c.spec = CredentialSpec::Bearer {
                    check_url: Some("https://attacker.example/".into()),
                    git_hosts: Vec::new(),
                    upstream: None,
                }
            },
            |c| c.owner_uid = 1001,
            |c| c.allowed.push(Principal::User(1001)),
            |c| c.allowed.clear(),
        ];
        for change in changes {
            let mut changed = c.clone();
            change(&mut changed);
            assert_eq!(
                distrust(&s, &changed, None, Some(&tag)).as_deref(),
                Some(TAMPERED)
            );
        }
        let other_key = Binding::of(&c, None)
            .unwrap()
            .tag(&Sealer::from_key(&[4u8; 32]))
            .unwrap();
        assert_eq!(
            distrust(&s, &c, None, Some(&other_key)).as_deref(),
            Some(TAMPERED)
        );
    }

    #[test]
    fn the_settings_are_bound_as_the_text_stored() {
        let s = sealer();
        let c = bearer("up", "t");
        let text = r#"{"bearer":{"check_url":null,"added_by_a_later_version":1}}"#;
        let tag = Binding::of(&c, Some(text)).unwrap().tag(&s).unwrap();
        assert_eq!(distrust(&s, &c, Some(text), Some(&tag)), None);
        let respaced = r#"{"bearer": {"check_url":null,"added_by_a_later_version":1}}"#;
        assert_eq!(
            distrust(&s, &c, Some(respaced), Some(&tag)).as_deref(),
            Some(TAMPERED)
        );
    }

    #[test]
    fn the_allow_list_is_bound_whatever_its_order() {
        let s = sealer();
        let mut c = bearer("up", "t");
        c.allowed = vec![Principal::User(3), Principal::Group(5)];
        let tag = Binding::of(&c, None).unwrap().tag(&s).unwrap();
        c.allowed.reverse();
        assert_eq!(distrust(&s, &c, None, Some(&tag)), None);
    }

    #[test]
    fn a_cleartext_url_is_refused_even_when_the_tag_verifies() {
        let s = sealer();
        let mut c = bearer("up", "t");
        c.spec = CredentialSpec::Bearer {
            check_url: Some("http://api.example/me".into()),
            git_hosts: Vec::new(),
            upstream: None,
        };
        let tag = Binding::of(&c, None).unwrap().tag(&s).unwrap();
        let why = distrust(&s, &c, None, Some(&tag)).unwrap();
        assert!(why.contains("the check URL"), "{why}");
    }

    #[test]
    fn a_quarantined_row_holds_no_secret() {
        let mut c = bearer("up", "t");
        quarantine(&mut c, TAMPERED.into());
        assert!(c.untrusted && c.access_token.is_none() && c.client_secret.is_none());
        assert_eq!(c.state, CredentialState::Failing);
        assert_eq!(c.reason.as_deref(), Some(TAMPERED));
    }
}
